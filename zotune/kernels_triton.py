"""Fused Triton kernels for the two parameter passes of a ZO step, with the noise made in registers.

Why: drawing z into a buffer and then combining it costs several reads and writes per element and,
per block of noise, one or more kernel launches. Here each call is one launch per tensor that reads
every element once and writes it once; z is generated inside the kernel from the Philox4x32-10
stream of ``/work/notes/philox-spec.md`` (the counter-based generator of issue 9), so it is the
same stream the CPU reference draws: bit for bit for "uniform" and "rademacher", within a few ulp
for "gaussian" (log/sin/cos differ between libraries).

Conventions shared by every function:
- a *key* is the 64-bit ``key64 = rng.mix(seed, param_key, stream)`` of one (step seed, parameter,
  stream), a Python int in [0, 2**64);
- ``terms`` is a direction as a weighted sum of draws, ``[(key64, weight), ...]`` with 1 to
  ``MAX_TERMS`` entries, all of the same ``kind`` ("gaussian", "rademacher" or "uniform");
- element i of a tensor is element i of its flattened (contiguous) storage;
- arithmetic is fp32, in the order the plain-torch passes use (d = w0·z0 + w1·z1 + ..., each
  product rounded; no fused multiply-adds, the kernels are compiled with fp fusion off), so for a
  given z the results equal the same sequence of torch fp32 operations bit for bit. (The plain
  pass's ``torch.add(p, d, alpha=scale)`` is fused on a CPU's vector path, so its fp32 perturbed
  copy can differ from this one by an ulp; the update pass uses separate ops on both.)

Half-precision tensors are handled as their 16-bit patterns (rounding to nearest even, and the
stochastic rounding of ``zotune.passes.stochastic_round``, are done with integer operations), which
gives the same bits on a GPU and in Triton's interpreter (whose bf16 casts do not round to nearest).

Import this module only where triton is installed; ``TRITON_INTERPRET=1`` set before the import
runs the kernels on the CPU (slowly: that is for tests).
"""

import triton
import triton.language as tl
import torch

KINDS = {"uniform": 0, "rademacher": 1, "gaussian": 2}
MAX_TERMS = 4
BLOCK = 1024  # elements per program; a multiple of 128 (one Philox call per 128 Rademacher signs)

_F32, _F16, _BF16 = 0, 1, 2
_DT = {torch.float32: _F32, torch.float16: _F16, torch.bfloat16: _BF16}
_HALF_MAX = {torch.float16: torch.finfo(torch.float16).max, torch.bfloat16: torch.finfo(torch.bfloat16).max}
_INT32_LIMIT = 2**31 - 1


# ----------------------------------------------------------------------------- noise in registers

@triton.jit
def _philox(key, c):
    """Philox4x32-10 of the counter (c mod 2**32, c >> 32, 0, 0) keyed by (key64 mod 2**32, key64 >> 32):
    the same words as ``tl.randint4x(key, c)``. Written out here so that the kernels depend on no
    other @triton.jit function (Triton's own are compiled or interpreted as decided when triton is
    first imported, which would tie this module's interpreter mode to that moment)."""
    key = key.to(tl.uint64)
    k0 = (key & 0xFFFFFFFF).to(tl.uint32)
    k1 = (key >> 32).to(tl.uint32)
    c0 = c.to(tl.uint32)
    zero = c0 * 0
    if tl.constexpr(c.dtype.primitive_bitwidth) > 32:
        c1 = (c >> 32).to(tl.uint32)
    else:
        c1 = zero
    c2 = zero
    c3 = zero
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, 0xD2511F53)
        lo0 = tl.mul(c0, 0xD2511F53, sanitize_overflow=False)
        hi1 = tl.umulhi(c2, 0xCD9E8D57)
        lo1 = tl.mul(c2, 0xCD9E8D57, sanitize_overflow=False)
        c0 = hi1 ^ c1 ^ k0
        c1 = lo1
        c2 = hi0 ^ c3 ^ k1
        c3 = lo0
        k0 = tl.add(k0, 0x9E3779B9, sanitize_overflow=False)
        k1 = tl.add(k1, 0xBB67AE85, sanitize_overflow=False)
    return c0, c1, c2, c3


# Interleaving: tl.join adds a new minor axis, so join(join(v0, v2), join(v1, v3)) has shape
# [N, 2, 2] with [c, k, j] = v_{2k+j}; reshaped to [4N] it puts v_l at position 4c + l.

@triton.jit
def _uniform(key, q0, NQ: tl.constexpr):
    """Elements 4·q0 .. 4·(q0+NQ)-1 of the "uniform" stream: one Philox call per 4 elements."""
    c = q0 + tl.arange(0, NQ)
    r0, r1, r2, r3 = _philox(key, c)
    s = 5.9604644775390625e-08  # 2**-24
    u0 = (r0 >> 8).to(tl.float32) * s
    u1 = (r1 >> 8).to(tl.float32) * s
    u2 = (r2 >> 8).to(tl.float32) * s
    u3 = (r3 >> 8).to(tl.float32) * s
    return tl.reshape(tl.join(tl.join(u0, u2), tl.join(u1, u3)), [4 * NQ])


@triton.jit
def _gaussian(key, q0, NQ: tl.constexpr):
    """Elements 4·q0 .. of the "gaussian" stream: Box-Muller on the pairs (r0, r1) and (r2, r3)."""
    c = q0 + tl.arange(0, NQ)
    r0, r1, r2, r3 = _philox(key, c)
    s = 5.9604644775390625e-08  # 2**-24
    two_pi = 6.2831855  # float32(2π)
    a0 = ((r0 >> 8) + 1).to(tl.float32) * s  # (0, 1]: log is finite
    a1 = ((r2 >> 8) + 1).to(tl.float32) * s
    t0 = two_pi * ((r1 >> 8).to(tl.float32) * s)
    t1 = two_pi * ((r3 >> 8).to(tl.float32) * s)
    rad0 = tl.sqrt_rn(-2.0 * tl.log(a0))
    rad1 = tl.sqrt_rn(-2.0 * tl.log(a1))
    z0 = rad0 * tl.cos(t0)
    z1 = rad0 * tl.sin(t0)
    z2 = rad1 * tl.cos(t1)
    z3 = rad1 * tl.sin(t1)
    return tl.reshape(tl.join(tl.join(z0, z2), tl.join(z1, z3)), [4 * NQ])


@triton.jit
def _rademacher(key, w0, NW: tl.constexpr):
    """Elements 128·w0 .. 128·(w0+NW)-1 of the "rademacher" stream: one Philox call per 128
    elements, its four words give 32 signs each (bit b of word lane -> element 32·lane + b)."""
    c = w0 + tl.arange(0, NW)
    r0, r1, r2, r3 = _philox(key, c)
    words = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), [4 * NW])
    shifts = tl.arange(0, 32).to(tl.uint32)
    bits = (words[:, None] >> shifts[None, :]) & 1
    z = 1.0 - 2.0 * bits.to(tl.float32)
    return tl.reshape(z, [128 * NW])


@triton.jit
def _draw(key, a0, KIND: tl.constexpr, BLOCK: tl.constexpr):
    """Elements a0 .. a0+BLOCK-1 of stream ``KIND`` (a0 a multiple of 128)."""
    if KIND == 1:
        z = _rademacher(key, a0 // 128, BLOCK // 128)
    elif KIND == 0:
        z = _uniform(key, a0 // 4, BLOCK // 4)
    else:
        z = _gaussian(key, a0 // 4, BLOCK // 4)
    return z


@triton.jit
def _direction(a0, k0, k1, k2, k3, w0, w1, w2, w3,
               NT: tl.constexpr, KIND: tl.constexpr, BLOCK: tl.constexpr):
    """d = w0·z(k0) + w1·z(k1) + ... (NT terms), left to right, each product rounded."""
    d = w0 * _draw(k0, a0, KIND, BLOCK)
    if NT > 1:
        d = d + w1 * _draw(k1, a0, KIND, BLOCK)
    if NT > 2:
        d = d + w2 * _draw(k2, a0, KIND, BLOCK)
    if NT > 3:
        d = d + w3 * _draw(k3, a0, KIND, BLOCK)
    return d


# ----------------------------------------------------------------------------- dtypes as bits

@triton.jit
def _bits_to_f32(bits, DT: tl.constexpr):
    """An int32 holding a 16-bit pattern (fp16 or bf16) -> its exact fp32 value."""
    if DT == 2:
        x = (bits << 16).to(tl.float32, bitcast=True)
    else:
        x = bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return x


@triton.jit
def _nearest_bits(x, DT: tl.constexpr):
    """fp32 -> the 16-bit pattern (in an int32) of its round-to-nearest-even fp16/bf16 value."""
    if DT == 2:
        xb = x.to(tl.uint32, bitcast=True)
        r = (xb + 0x7FFF + ((xb >> 16) & 1)) >> 16
        r = tl.where((xb & 0x7FFFFFFF) > 0x7F800000, 0x7FC0, r)  # NaN -> torch's bf16 NaN
        bits = r.to(tl.int32)
    else:
        bits = x.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return bits


@triton.jit
def _load_f32(ptr, idx, mask, DT: tl.constexpr):
    if DT == 0:
        x = tl.load(ptr + idx, mask=mask, other=0.0)
    else:
        x = _bits_to_f32(tl.load(ptr + idx, mask=mask, other=0).to(tl.int32) & 0xFFFF, DT)
    return x


@triton.jit
def _store_nearest(ptr, idx, x, mask, DT: tl.constexpr):
    if DT == 0:
        tl.store(ptr + idx, x, mask=mask)
    else:
        tl.store(ptr + idx, _nearest_bits(x, DT).to(tl.int16), mask=mask)


@triton.jit
def _stochastic_bits(x, u, DT: tl.constexpr):
    """The bits of passes.stochastic_round(x, dtype, u): the nearest value, or its neighbour on
    the other side of x when u < |x - nearest| / gap."""
    near = _nearest_bits(x, DT)
    near_f = _bits_to_f32(near, DT)
    mag = near & 0x7FFF
    order = tl.where((near & 0x8000) != 0, -mag, mag)  # bit patterns as ordered integers (±0 -> 0)
    order = order + tl.where(near_f > x, -1, 1)  # nextafter(near, toward x)
    other = tl.where(order < 0, 0x8000 | (-order), order)
    other_f = _bits_to_f32(other, DT)
    p_other = tl.math.div_rn(tl.abs(x - near_f), tl.abs(other_f - near_f))
    return tl.where(u < p_other, other, near)


# ----------------------------------------------------------------------------- kernels

@triton.jit(do_not_specialize=["key", "start"])
def _fill_kernel(out_ptr, key: tl.uint64, start, n,
                 KIND: tl.constexpr, BLOCK: tl.constexpr, BIG: tl.constexpr):
    pid = tl.program_id(0)
    if BIG:
        pid = pid.to(tl.int64)
    a0 = (start - start % 128) + pid * BLOCK
    z = _draw(key, a0, KIND, BLOCK)
    idx = a0 + tl.arange(0, BLOCK)
    mask = (idx >= start) & (idx < start + n)
    tl.store(out_ptr + (idx - start), z, mask=mask)


@triton.jit(do_not_specialize=["scale", "k0", "k1", "k2", "k3", "w0", "w1", "w2", "w3"])
def _perturb_kernel(p_ptr, out_ptr, n, scale: tl.float32,
                    k0: tl.uint64, k1: tl.uint64, k2: tl.uint64, k3: tl.uint64,
                    w0: tl.float32, w1: tl.float32, w2: tl.float32, w3: tl.float32,
                    NT: tl.constexpr, KIND: tl.constexpr, P_DT: tl.constexpr, OUT_DT: tl.constexpr,
                    BLOCK: tl.constexpr, BIG: tl.constexpr):
    pid = tl.program_id(0)
    if BIG:
        pid = pid.to(tl.int64)
    a0 = pid * BLOCK
    idx = a0 + tl.arange(0, BLOCK)
    mask = idx < n
    d = _direction(a0, k0, k1, k2, k3, w0, w1, w2, w3, NT, KIND, BLOCK)
    x = _load_f32(p_ptr, idx, mask, P_DT)
    _store_nearest(out_ptr, idx, x + scale * d, mask, OUT_DT)


@triton.jit(do_not_specialize=["coef", "decay", "rkey", "k0", "k1", "k2", "k3", "w0", "w1", "w2", "w3"])
def _update_kernel(p_ptr, m_ptr, flag_ptr, n, coef: tl.float32, decay: tl.float32, rkey: tl.uint64,
                   k0: tl.uint64, k1: tl.uint64, k2: tl.uint64, k3: tl.uint64,
                   w0: tl.float32, w1: tl.float32, w2: tl.float32, w3: tl.float32, half_max: tl.float32,
                   NT: tl.constexpr, KIND: tl.constexpr, DT: tl.constexpr, MODE: tl.constexpr,
                   CHECK: tl.constexpr, BLOCK: tl.constexpr, BIG: tl.constexpr):
    # MODE 0: round to nearest (plain for fp32); 1: fp32 master copy in m_ptr; 2: stochastic rounding
    pid = tl.program_id(0)
    if BIG:
        pid = pid.to(tl.int64)
    a0 = pid * BLOCK
    idx = a0 + tl.arange(0, BLOCK)
    mask = idx < n
    delta = _direction(a0, k0, k1, k2, k3, w0, w1, w2, w3, NT, KIND, BLOCK) * coef
    if MODE == 1:
        x = tl.load(m_ptr + idx, mask=mask, other=0.0) * decay + delta
        tl.store(m_ptr + idx, x, mask=mask)
    else:
        x = _load_f32(p_ptr, idx, mask, DT) * decay + delta
    if CHECK:
        bad = mask & ((x != x) | (tl.abs(x) > half_max))
        tl.store(flag_ptr + idx * 0, tl.full([BLOCK], 1, tl.int32), mask=bad)
    if MODE == 2:
        u = _uniform(rkey, a0 // 4, BLOCK // 4)
        tl.store(p_ptr + idx, _stochastic_bits(x, u, DT).to(tl.int16), mask=mask)
    else:
        _store_nearest(p_ptr, idx, x, mask, DT)


# ----------------------------------------------------------------------------- host side

def _kind(kind: str) -> int:
    if kind not in KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {tuple(KINDS)}")
    return KINDS[kind]


def _key(key: int) -> int:
    key = int(key)
    if not 0 <= key < 2**64:
        raise ValueError(f"a noise key must be a 64-bit unsigned integer, got {key}")
    return key


def _terms(terms) -> tuple[list[int], list[float]]:
    terms = list(terms)
    if not 1 <= len(terms) <= MAX_TERMS:
        raise ValueError(f"a direction needs 1 to {MAX_TERMS} (key, weight) terms, got {len(terms)}")
    keys = [_key(k) for k, _ in terms] + [0] * (MAX_TERMS - len(terms))
    weights = [float(w) for _, w in terms] + [0.0] * (MAX_TERMS - len(terms))
    return keys, weights


def _dt(t: torch.Tensor, what: str) -> int:
    if t.dtype not in _DT:
        raise ValueError(f"{what} must be float32, float16 or bfloat16, not {t.dtype}")
    return _DT[t.dtype]


def _bits_view(t: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors travel as int16 bit patterns (see the module docstring)."""
    return t.view(torch.int16) if t.dtype in (torch.float16, torch.bfloat16) else t


def _check_block(block: int) -> int:
    if block < 128 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 128, got {block}")
    return block


def fill(out: torch.Tensor, key64: int, start: int = 0, kind: str = "gaussian", *, block: int = BLOCK) -> torch.Tensor:
    """Write elements [start, start + out.numel()) of stream ``kind`` keyed by ``key64`` into the
    contiguous float32 ``out`` (any shape, filled in flat order); returns ``out``."""
    if out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError("fill needs a contiguous float32 output tensor")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    n = out.numel()
    if n == 0:
        return out
    block = _check_block(block)
    head = start % 128
    grid = (triton.cdiv(head + n, block),)
    _fill_kernel[grid](out, _key(key64), start, n, KIND=_kind(kind), BLOCK=block,
                       BIG=start + n + block > _INT32_LIMIT, enable_fp_fusion=False)
    return out


def perturbed_copy(p: torch.Tensor, terms, scale: float, out_dtype: torch.dtype | None = None, *,
                   kind: str, block: int = BLOCK) -> torch.Tensor:
    """A new tensor fl(p + scale·d), d = Σ w_j·z(key_j), computed in fp32 and rounded to nearest
    into ``out_dtype`` (default p's dtype); p is only read."""
    if not p.is_contiguous():
        raise ValueError("perturbed_copy needs a contiguous tensor")
    terms = list(terms)
    out_dtype = out_dtype or p.dtype
    out = torch.empty(p.shape, dtype=out_dtype, device=p.device)
    n = p.numel()
    if n == 0:
        return out
    keys, weights = _terms(terms)
    block = _check_block(block)
    grid = (triton.cdiv(n, block),)
    _perturb_kernel[grid](_bits_view(p.detach()), _bits_view(out), n, float(scale), *keys, *weights,
                          NT=len(terms), KIND=_kind(kind), P_DT=_dt(p, "p"), OUT_DT=_dt(out, "out_dtype"),
                          BLOCK=block, BIG=n + block > _INT32_LIMIT, enable_fp_fusion=False)
    return out


def update_(p: torch.Tensor, terms, coef: float, decay: float = 1.0, rounding_key64: int | None = None, *,
            kind: str, master: torch.Tensor | None = None, overflow: torch.Tensor | None = None,
            block: int = BLOCK) -> torch.Tensor:
    """In place: p ← decay·p + coef·Σ w_j·z(key_j), in fp32 (as ``(decay·p) + ((Σ w_j z_j)·coef)``).

    Written back to p's dtype: fp32 as is; with ``master`` (an fp32 copy of a half-precision p),
    the master is updated and p becomes its round-to-nearest; else half precision is rounded
    stochastically with u_i = element i of the "uniform" stream keyed by ``rounding_key64``
    (exactly passes.stochastic_round), or to nearest when ``rounding_key64`` is None.

    ``overflow`` (optional int32 tensor of one element, on p's device, set to 0 by the caller)
    becomes 1 if a half-precision result (no master) is beyond the dtype's range or NaN; those
    elements are still written (a kernel cannot refuse without a host synchronisation). Returns p.
    """
    if not p.is_contiguous():
        raise ValueError("update_ needs a contiguous tensor")
    terms = list(terms)
    dt = _dt(p, "p")
    n = p.numel()
    if n == 0:
        return p
    keys, weights = _terms(terms)
    block = _check_block(block)
    if master is not None:
        if dt == _F32:
            raise ValueError("a master copy is only for half-precision parameters")
        if master.dtype != torch.float32 or master.shape != p.shape or not master.is_contiguous():
            raise ValueError("master must be a contiguous float32 tensor of p's shape")
        mode = 1
    elif dt != _F32 and rounding_key64 is not None:
        mode = 2
    else:
        mode = 0
    check = overflow is not None and dt != _F32 and mode != 1
    if overflow is not None and (overflow.dtype != torch.int32 or overflow.numel() != 1):
        raise ValueError("overflow must be an int32 tensor of one element")
    half_max = _HALF_MAX.get(p.dtype, 0.0)
    grid = (triton.cdiv(n, block),)
    pv = _bits_view(p.detach())
    _update_kernel[grid](pv, master if master is not None else pv, overflow if check else pv, n,
                         float(coef), float(decay), _key(rounding_key64 or 0), *keys, *weights, half_max,
                         NT=len(terms), KIND=_kind(kind), DT=dt, MODE=mode, CHECK=check,
                         BLOCK=block, BIG=n + block > _INT32_LIMIT, enable_fp_fusion=False)
    return p
