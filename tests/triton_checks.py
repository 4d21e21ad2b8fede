"""Checks of zotune.kernels_triton against a plain reference of the Philox spec, shared by the
interpreter tests (CPU, TRITON_INTERPRET=1) and the CUDA-only tests: the same assertions on both.

The reference is zotune.philox.reference_fill; ``own_reference`` is a second, independent
transcription of the spec (numpy uint64 for the 32×32→64-bit products, torch fp32 for the floats),
used when zotune.philox is absent and checked bit for bit against it otherwise.
"""

from __future__ import annotations

import numpy as np
import torch

from zotune.passes import stochastic_round

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = 0x9E3779B9, 0xBB67AE85
LO = np.uint64(0xFFFFFFFF)


def philox_words(key64: int, counters: np.ndarray) -> list[np.ndarray]:
    """Philox4x32-10 of (o & 0xFFFFFFFF, o >> 32, 0, 0) keyed by key64: the four output words."""
    o = counters.astype(np.uint64)
    c0, c1 = o & LO, o >> np.uint64(32)
    c2 = np.zeros_like(o)
    c3 = np.zeros_like(o)
    k0, k1 = key64 & 0xFFFFFFFF, key64 >> 32
    for _ in range(10):
        p0, p1 = M0 * c0, M1 * c2  # < 2**64: exact in uint64
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0), p1 & LO,
                          (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1), p0 & LO)
        k0, k1 = (k0 + W0) & 0xFFFFFFFF, (k1 + W1) & 0xFFFFFFFF
    return [c.astype(np.uint32) for c in (c0, c1, c2, c3)]


try:  # the project's reference (zotune/philox.py); this file's own transcription is the fallback
    from zotune.philox import reference_fill as _project_reference
except ImportError:  # pragma: no cover - only before zotune.philox exists
    _project_reference = None


def reference(key64: int, start: int, n: int, kind: str) -> torch.Tensor:
    """Elements [start, start + n) of stream ``kind`` (float32, on the CPU): zotune.philox's
    reference when it exists (tests check that it equals ``own_reference``), else ``own_reference``."""
    if _project_reference is not None:
        return _project_reference((start, start + n), key64, kind)
    return own_reference(key64, start, n, kind)


def own_reference(key64: int, start: int, n: int, kind: str) -> torch.Tensor:
    """Elements [start, start + n) of stream ``kind``, transcribed from the spec with numpy."""
    i = np.arange(start, start + n, dtype=np.uint64)
    if kind == "rademacher":
        words = philox_words(key64, i // np.uint64(128))
        lane = ((i // np.uint64(32)) % np.uint64(4)).astype(np.int64)
        w = np.choose(lane, words)
        bit = (w >> (i % np.uint64(32)).astype(np.uint32)) & np.uint32(1)
        return torch.from_numpy(np.where(bit == 0, 1.0, -1.0).astype(np.float32))
    words = philox_words(key64, i // np.uint64(4))
    lane = (i % np.uint64(4)).astype(np.int64)
    s = 2.0 ** -24
    if kind == "uniform":
        r = np.choose(lane, words)
        return torch.from_numpy((r >> np.uint32(8)).astype(np.float32)) * s
    if kind != "gaussian":
        raise ValueError(kind)
    pair = lane // 2
    a = np.where(pair == 0, words[0], words[2])
    b = np.where(pair == 0, words[1], words[3])
    u1 = torch.from_numpy(((a >> np.uint32(8)) + np.uint32(1)).astype(np.float32)) * s
    u2 = torch.from_numpy((b >> np.uint32(8)).astype(np.float32)) * s
    rad = torch.sqrt(-2 * torch.log(u1))
    t = torch.tensor(6.2831855, dtype=torch.float32) * u2
    even = torch.from_numpy(lane % 2 == 0)
    return torch.where(even, rad * torch.cos(t), rad * torch.sin(t))


def reference_direction(terms, n: int, kind: str) -> torch.Tensor:
    """Σ w_j·z_j in fp32, as the engine computes it: each product rounded, summed left to right."""
    d = None
    for key, w in terms:
        t = reference(key, 0, n, kind) * torch.tensor(w, dtype=torch.float32)
        d = t if d is None else d + t
    return d


KEYS = [0x0123456789ABCDEF, 0xFEDCBA9876543210, 7, 0x80000000]  # u64 above 2**63, tiny, 2**31


def _compare_z(got: torch.Tensor, want: torch.Tensor, kind: str) -> None:
    got = got.cpu()
    if kind == "gaussian":
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    else:
        assert torch.equal(got.view(torch.int32), want.view(torch.int32)), \
            f"{kind}: {(got != want).sum()} of {got.numel()} elements differ"


def check_fill(kt, device, kind: str, n: int, start: int, key: int, block: int | None = None) -> None:
    buf = torch.full((n + 300,), float("nan"), device=device)  # guards on both sides
    out = buf[150:150 + n]
    kw = {} if block is None else {"block": block}
    kt.fill(out, key, start, kind, **kw)
    _compare_z(out, reference(key, start, n, kind), kind)
    assert buf[:150].isnan().all() and buf[150 + n:].isnan().all(), "fill wrote outside its range"


def _pattern(shape, dtype, device, seed=0) -> torch.Tensor:
    """Weights with the awkward values too: ±0, subnormals of the dtype, large ones."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    flat = x.view(-1)
    tiny = torch.finfo(dtype).tiny if dtype != torch.float32 else 1e-38
    special = torch.tensor([0.0, -0.0, tiny / 4, -tiny / 8, tiny, 3e4])
    k = min(flat.numel(), special.numel())
    flat[:k] = special[:k]
    return x.to(dtype).to(device)


def check_perturbed_copy(kt, device, dtype, out_dtype, kind: str, n: int, nterms: int, block=None) -> None:
    p = _pattern((n,), dtype, device)
    terms = [(KEYS[j], (0.5, -1.25, 3.0, 1.0)[j]) for j in range(nterms)]
    scale = 1e-3
    kw = {} if block is None else {"block": block}
    before = p.clone()
    got = kt.perturbed_copy(p, terms, scale, out_dtype, kind=kind, **kw)
    assert torch.equal(p, before), "perturbed_copy wrote its input"
    assert got.dtype == (out_dtype or dtype) and got.shape == p.shape
    d = reference_direction(terms, n, kind)
    want = (p.cpu().float() + torch.tensor(scale, dtype=torch.float32) * d).to(out_dtype or dtype)
    if kind == "gaussian":
        torch.testing.assert_close(got.cpu().float(), want.float(), rtol=2 ** -7, atol=1e-7)
    else:
        assert torch.equal(got.cpu().view(-1).float(), want.float()), \
            f"{(got.cpu().float() != want.float()).sum()} elements differ"


def expected_update(p, terms, coef, decay, kind, rounding_key=None, master=None):
    """The same arithmetic in torch: x = (decay·θ) + (d·coef), then passes' write-back."""
    n = p.numel()
    d = reference_direction(terms, n, kind)
    src = (master if master is not None else p).cpu().float()
    x = src * torch.tensor(decay, dtype=torch.float32) + d * torch.tensor(coef, dtype=torch.float32)
    if p.dtype == torch.float32:
        return x, None
    if master is not None:
        return x.to(p.dtype), x
    if rounding_key is None:
        return x.to(p.dtype), None
    u = reference(rounding_key, 0, n, "uniform")
    return stochastic_round(x, p.dtype, u), None


def check_update(kt, device, dtype, kind: str, n: int, nterms: int, rounding: bool, use_master=False,
                 decay=0.999, block=None) -> None:
    buf = torch.cat([torch.full((130,), 7.0), _pattern((n,), dtype, "cpu", seed=1).float(), torch.full((130,), 7.0)])
    buf = buf.to(dtype).to(device)
    p = buf[130:130 + n]  # guards on both sides
    master = p.float().clone() if use_master else None
    terms = [(KEYS[j], (1.0, -0.5, 2.0, 0.25)[j]) for j in range(nterms)]
    coef = -3e-3
    rkey = 0xC0FFEE1234567890 if rounding else None
    want, want_master = expected_update(p, terms, coef, decay, kind, rkey, master)
    flag = torch.zeros(1, dtype=torch.int32, device=device)
    kw = {} if block is None else {"block": block}
    kt.update_(p, terms, coef, decay, rkey, kind=kind, master=master, overflow=flag, **kw)
    assert int(flag) == 0
    assert (buf[:130] == 7).all() and (buf[130 + n:] == 7).all(), "update_ wrote outside its tensor"
    if kind == "gaussian" and dtype == torch.float32:
        torch.testing.assert_close(p.cpu(), want, rtol=3e-7, atol=1e-7)  # an ulp of θ
        return
    if kind == "gaussian":  # a pre-rounding value a few ulp off may pick the other neighbour
        torch.testing.assert_close(p.cpu().float(), want.float(), rtol=2 ** -6, atol=1e-6)
        return
    assert torch.equal(p.cpu().view(-1).view(torch.int16 if dtype != torch.float32 else torch.int32),
                       want.view(-1).view(torch.int16 if dtype != torch.float32 else torch.int32)), \
        f"{(p.cpu() != want).sum()} of {n} elements differ"
    if use_master:
        assert torch.equal(master.cpu(), want_master)
    if rounding and dtype != torch.float32:  # the check is only meaningful if some elements went the other way
        nearest, _ = expected_update(_pattern((n,), dtype, "cpu", seed=1), terms, coef, decay, kind)
        assert (want != nearest).any() and (want == nearest).any()
