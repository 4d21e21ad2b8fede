"""Counter-based noise: z(seed, key, i) as a pure function of its arguments, the same on every device.

Why: a ZO step regenerates the same direction z several times (perturb, update), and a run must
be replayable and resumable — on another machine, and on another device type — independent of
how the parameters are chunked or ordered. The global torch RNG gives none of that (seeding it also
perturbs the user's own randomness), so zotune never touches it.

Words: the *noise kind* is the distribution ("gaussian", "rademacher", "uniform"); the
*generator* is :class:`CounterRNG`, which draws any kind; a *stream* is one independent family of
numbers from the same seed (``DIRECTION``, ``ROUNDING``).

The generator is Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
SC'11), keyed per (step seed, parameter key, stream) by ``mix`` and counted by element index; the
exact layout of each kind is in ``zotune/philox.py``, its plain reference. Element i depends only
on (seed, key, stream, i): not on the tensor's size, the chunking, the order of parameters, the
device or the number of threads. Uniform and Rademacher streams are bit-identical everywhere;
Gaussian ones (Box–Muller) agree to about 1 ulp, the precision of log, sin and cos. On a CPU the
numba kernels of ``zotune/noise_cpu.py`` draw them (1.1–1.4 ns per Gaussian and ~0.2 ns per
Rademacher element on one core); on CUDA the Triton kernels of ``zotune/kernels_triton.py``.
"""

from __future__ import annotations

import zlib

import torch

MASK64 = (1 << 64) - 1

# Streams: independent noise families drawn from the same step seed.
DIRECTION = 0
ROUNDING = 1

NOISE_KINDS = ("gaussian", "rademacher")
KINDS = NOISE_KINDS + ("uniform",)

# The identity of the noise this module draws, stored in every trajectory: a replay with another
# generator would draw other directions. Change it whenever a draw of any kind changes.
GENERATOR = "philox4x32-10-v1"


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
    """Draws the counter-based streams into fp32 buffers, on whatever device the buffer is."""

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
        """Write elements ``[offset, offset + out.numel())`` of the stream into the 1-D fp32 ``out``.

        ``numel`` is the size of the whole tensor the stream belongs to (a range check only: the
        stream does not depend on it). ``kind``: "gaussian" (N(0, 1)), "rademacher" (±1) or
        "uniform" ([0, 1)).
        """
        n = out.numel()
        if offset < 0 or offset + n > numel:
            raise ValueError(f"noise range [{offset}, {offset + n}) outside a tensor of {numel} elements")
        if kind not in KINDS:
            raise ValueError(f"unknown noise kind {kind!r}; choose one of {KINDS}")
        key64 = stream_key(seed, key, stream)
        if out.device.type == "cpu":
            from zotune.noise_cpu import fill_cpu

            return fill_cpu(out, key64, offset, kind)
        if out.device.type == "cuda":
            from zotune.kernels_triton import fill as fill_triton

            return fill_triton(out, key64, offset, kind)
        from zotune.philox import reference_fill  # another device: the plain reference, then a copy

        return out.copy_(reference_fill(range(offset, offset + n), key64, kind))

    def draw(self, seed, key, offset, n, numel, kind="gaussian", stream=DIRECTION, device="cpu"):
        """A new float32 tensor with ``n`` elements of the stream from ``offset``."""
        out = torch.empty(n, dtype=torch.float32, device=device)
        return self.fill(out, seed, key, offset, numel, kind, stream)


def stream_key(seed: int, key: int, stream: int) -> int:
    """The 64-bit Philox key of one stream of one parameter at one step seed."""
    return mix(seed, key, stream)


