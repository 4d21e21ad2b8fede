"""Philox4x32-10 and zotune's noise streams: the plain pure-torch reference.

Why: zotune's noise must be the same on every device and independent of chunking, so it is a pure
function of (key, element index). This module defines that function in the simplest code that can be
checked against published test vectors; the fast paths (``zotune.noise_cpu``, the Triton kernels) are
tested against it. It is slow (a few hundred ns per element) and meant for tests, not training.

Generator: Philox4x32-10 (J. K. Salmon, M. A. Moraes, R. O. Dror, D. E. Shaw, "Parallel random
numbers: as easy as 1, 2, 3", SC'11; the Random123 library). 128-bit counter (c0, c1, c2, c3), 64-bit
key (k0, k1), 10 rounds of::

    hi0, lo0 = mulhilo32(0xD2511F53, c0);  hi1, lo1 = mulhilo32(0xCD9E8D57, c2)
    (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
    k0 += 0x9E3779B9;  k1 += 0xBB67AE85          (mod 2**32)

Layout (docs: notes/philox-spec.md, generator id "philox4x32-10-v1"):

* key64 = ``zotune.rng.mix(seed, param_key, stream)``; k0 = low 32 bits, k1 = high 32 bits.
* counter for 64-bit block index o: (o & 0xFFFFFFFF, o >> 32, 0, 0), the layout of Triton's
  ``tl.randint4x(key64, o)``; one block gives four 32-bit words r0..r3.
* uniform:    element i = float32(r_{i%4}(o=i//4) >> 8) * 2**-24, in [0, 1).
* rademacher: element i = +1 if bit (i%32) of r_{(i//32)%4}(o=i//128) is 0, else -1.
* gaussian:   block o = i//4 gives two Box-Muller pairs; pair p = (i%4)//2 uses (a, b) = (r_2p, r_2p+1):
  u1 = float32((a >> 8) + 1) * 2**-24 in (0, 1], u2 = float32(b >> 8) * 2**-24,
  rad = sqrt(-2 log u1), t = 6.2831855f * u2, z = rad*cos(t) for even i, rad*sin(t) for odd i;
  all in float32.

32-bit unsigned arithmetic is emulated on int64 tensors with masks. A 32x32-bit product does not fit
a signed int64, so ``mulhilo32`` splits one operand into 16-bit halves (each partial product < 2**48).
"""

from __future__ import annotations

import torch

M32 = 0xFFFFFFFF
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
ROUNDS = 10
TWO_PI_F32 = 6.2831855  # float32(2*pi), as the spec writes it
KINDS = ("uniform", "rademacher", "gaussian")


def mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of the 64-bit product a*b, for a constant a and uint32-valued int64 b."""
    p_lo = a * (b & 0xFFFF)  # < 2**48
    p_hi = a * (b >> 16)  # < 2**48; the product is p_hi * 2**16 + p_lo
    t = ((p_hi & 0xFFFF) << 16) + p_lo  # < 2**49: low 32 bits of the product plus a carry
    return (p_hi >> 16) + (t >> 32), t & M32


def philox4x32_words(c0, c1, c2, c3, k0: int, k1: int, rounds: int = ROUNDS):
    """Philox4x32-R on a general 128-bit counter (uint32-valued int64 tensors) and key (k0, k1)."""
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) & M32 for c in (c0, c1, c2, c3))
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)
    k0, k1 = k0 & M32, k1 & M32
    for r in range(rounds):
        if r:  # the key is bumped between rounds
            k0 = (k0 + PHILOX_W0) & M32
            k1 = (k1 + PHILOX_W1) & M32
        hi0, lo0 = mulhilo32(PHILOX_M0, c0)
        hi1, lo1 = mulhilo32(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def philox4x32(counters: torch.Tensor, key64: int):
    """Words (r0, r1, r2, r3) (uint32-valued int64 tensors) of the blocks ``counters`` (int64 block
    indices o >= 0, counter (o low, o high, 0, 0)) under the 64-bit key ``key64``."""
    o = torch.as_tensor(counters, dtype=torch.int64)
    if (o < 0).any():
        raise ValueError("Philox block indices must be >= 0")
    zero = torch.zeros_like(o)
    return philox4x32_words(o & M32, o >> 32, zero, zero, key64 & M32, (key64 >> 32) & M32)


def _range(n_or_range) -> tuple[int, int]:
    if isinstance(n_or_range, int):
        return 0, n_or_range
    a, b = n_or_range
    if a < 0 or b < a:
        raise ValueError(f"element range [{a}, {b}) is not a valid range of indices")
    return int(a), int(b)


def reference_fill(n_or_range, key64: int, kind: str) -> torch.Tensor:
    """Elements [a, b) (or [0, n) for an int) of the ``kind`` stream under ``key64``, as float32."""
    a, b = _range(n_or_range)
    i = torch.arange(a, b, dtype=torch.int64)
    if kind == "uniform":
        words = torch.stack(philox4x32(i // 4, key64))  # (4, n)
        r = words.gather(0, (i % 4).unsqueeze(0)).squeeze(0)
        return (r >> 8).to(torch.float32) * 2.0**-24
    if kind == "rademacher":
        words = torch.stack(philox4x32(i // 128, key64))
        r = words.gather(0, ((i // 32) % 4).unsqueeze(0)).squeeze(0)
        bit = (r >> (i % 32)) & 1
        return 1.0 - 2.0 * bit.to(torch.float32)
    if kind == "gaussian":
        words = torch.stack(philox4x32(i // 4, key64))
        p = (i % 4) // 2
        wa = words.gather(0, (2 * p).unsqueeze(0)).squeeze(0)
        wb = words.gather(0, (2 * p + 1).unsqueeze(0)).squeeze(0)
        u1 = ((wa >> 8) + 1).to(torch.float32) * 2.0**-24
        u2 = (wb >> 8).to(torch.float32) * 2.0**-24
        rad = torch.sqrt(-2.0 * torch.log(u1))  # float32 throughout (Python scalars keep the dtype)
        t = torch.tensor(TWO_PI_F32, dtype=torch.float32) * u2
        return torch.where(i % 2 == 0, rad * torch.cos(t), rad * torch.sin(t))
    raise ValueError(f"unknown noise kind {kind!r}; choose one of {KINDS}")
