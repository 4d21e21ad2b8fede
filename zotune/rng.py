"""Counter-based noise: z(seed, key, offset) as a pure function of its arguments.

Why: a ZO step regenerates the same direction z several times (perturb, update), and a run must
be replayable and independent of how the parameters are chunked or ordered. The global torch RNG
gives none of that (seeding it also perturbs the user's own randomness), so zotune never touches it.

Words: the *noise kind* is the distribution ("gaussian", "rademacher", "uniform"); the
*generator* is :class:`CounterRNG`, which draws any kind; a *stream* is one independent family of
numbers from the same seed (``DIRECTION``, ``ROUNDING``).

The stream of one parameter is cut into fixed segments of ``SEGMENT`` elements. Segment ``b`` of
the tensor with key ``key`` at seed ``seed`` is drawn by a private ``torch.Generator`` seeded with
``mix(seed, key, stream, b)`` (a SplitMix64 hash), so element ``i`` depends only on
(seed, key, stream, i) and on the tensor's size (the last segment is shorter). Any chunking, any
order of parameters and any subset of elements gives the same numbers. Generators are per device
type: the CPU stream (Mersenne Twister per segment) is the reference; a CUDA tensor uses the same
segment seeds on a CUDA generator, so its stream is fixed per GPU model but differs from the CPU one.
Rademacher signs are the bits of random 32-bit words (32 per word), several times cheaper than
Gaussians on a CPU, where drawing the noise is a large part of a ZO step.
"""

from __future__ import annotations

import zlib

import torch

SEGMENT = 1 << 16
MASK64 = (1 << 64) - 1

# Streams: independent noise families drawn from the same step seed.
DIRECTION = 0
ROUNDING = 1

NOISE_KINDS = ("gaussian", "rademacher")

# The identity of the noise this module draws, stored in every trajectory: a replay with another
# generator would draw other directions. Change it whenever a draw of any kind changes.
GENERATOR = "segmented-torch-mt-v1"


def splitmix64(x: int) -> int:
    """One SplitMix64 output for state ``x`` (Steele et al. 2014): a cheap, well-mixed 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def mix(*parts: int) -> int:
    """Hash a tuple of integers into one 64-bit seed (order matters)."""
    h = 0x5A0C0FFEE
    for p in parts:
        h = splitmix64(h ^ (p & MASK64))
    return h


def name_key(name: str) -> int:
    """Stable 64-bit key of a parameter name (same in every process and Python version)."""
    data = name.encode()
    return (zlib.crc32(data) << 32) | zlib.adler32(data)


class CounterRNG:
    """Draws the counter-based streams into buffers; keeps one private generator per device."""

    def __init__(self) -> None:
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device)
        return gen

    def fill(
        self,
        out: torch.Tensor,
        seed: int,
        key: int,
        offset: int,
        numel: int,
        kind: str = "gaussian",
        stream: int = DIRECTION,
    ) -> torch.Tensor:
        """Write elements ``[offset, offset + out.numel())`` of the stream into the 1-D float ``out``.

        ``numel`` is the size of the whole tensor the stream belongs to (it fixes the last segment).
        ``kind``: "gaussian" (N(0, 1)), "rademacher" (±1) or "uniform" ([0, 1)).
        """
        n = out.numel()
        if offset < 0 or offset + n > numel:
            raise ValueError(f"noise range [{offset}, {offset + n}) outside a tensor of {numel} elements")
        gen = self._generator(out.device)
        pos = 0
        segment = offset // SEGMENT
        while pos < n:
            start = segment * SEGMENT
            length = min(SEGMENT, numel - start)
            lo = offset + pos - start  # first wanted element inside this segment
            take = min(length - lo, n - pos)
            gen.manual_seed(mix(seed, key, stream, segment))
            if lo == 0 and take == length:
                _sample(out[pos : pos + take], gen, kind)
            else:  # partial segment: draw it whole (the stream is defined per segment), keep a slice
                tmp = torch.empty(length, dtype=out.dtype, device=out.device)
                _sample(tmp, gen, kind)
                out[pos : pos + take].copy_(tmp[lo : lo + take])
            pos += take
            segment += 1
        return out

    def draw(self, seed, key, offset, n, numel, kind="gaussian", stream=DIRECTION, device="cpu"):
        """A new float32 tensor with ``n`` elements of the stream from ``offset``."""
        out = torch.empty(n, dtype=torch.float32, device=device)
        return self.fill(out, seed, key, offset, numel, kind, stream)


def _sample(buf: torch.Tensor, gen: torch.Generator, kind: str) -> None:
    if kind == "gaussian":
        buf.normal_(generator=gen)
    elif kind == "rademacher":
        _rademacher(buf, gen)
    elif kind == "uniform":
        buf.uniform_(generator=gen)
    else:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {NOISE_KINDS + ('uniform',)}")


_SHIFTS: dict[torch.device, torch.Tensor] = {}


def _rademacher(buf: torch.Tensor, gen: torch.Generator) -> None:
    """±1 from the bits of random 32-bit words, 32 signs per word: ~7× cheaper than a Gaussian
    on CPU, where drawing the noise dominates a ZO step."""
    n = buf.numel()
    words = torch.empty((n + 31) // 32, dtype=torch.int32, device=buf.device)
    words.random_(-(2**31), 2**31 - 1, generator=gen)
    shifts = _SHIFTS.get(buf.device)
    if shifts is None:
        shifts = _SHIFTS[buf.device] = torch.arange(32, dtype=torch.int32, device=buf.device)
    bits = torch.bitwise_right_shift(words.unsqueeze(1), shifts).bitwise_and_(1).view(-1)[:n]
    buf.copy_(bits).mul_(2).sub_(1)
