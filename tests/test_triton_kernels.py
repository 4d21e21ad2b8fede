"""The Triton kernels (zotune.kernels_triton) on the CPU under Triton's interpreter, against the
plain reference of the Philox spec in triton_checks: bits for uniform and Rademacher streams and
for the fp32 arithmetic and rounding choices built on them, a tolerance for Gaussian ones.

The module is loaded as a private copy with TRITON_INTERPRET=1 set only while it is imported (the
flag is read when @triton.jit decorates), so a CUDA test module in the same session still gets
compiled kernels.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

import triton_checks as tc  # noqa: E402  (tests/ is on sys.path under pytest's rootdir conftest-less mode)
from zotune.passes import WeightOverflowError, update_ as plain_update  # noqa: E402


def _interpreted():
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        path = Path(__file__).resolve().parents[1] / "zotune" / "kernels_triton.py"
        spec = importlib.util.spec_from_file_location("_zotune_kernels_triton_interpreted", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old


kt = _interpreted()
KINDS = ["uniform", "rademacher", "gaussian"]
HALF = [torch.float16, torch.bfloat16]


def test_reference_philox_known_answer():
    # Random123 kat_vectors, philox4x32_10, counter (0, 0, 0, 0), key (0, 0)
    import numpy as np
    words = [int(w[0]) for w in tc.philox_words(0, np.zeros(1, dtype=np.uint64))]
    assert words == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@pytest.mark.parametrize("kind", KINDS)
def test_two_references_agree(kind):
    philox = pytest.importorskip("zotune.philox")
    for key in tc.KEYS:
        for a, b in [(0, 1000), (2**34 - 6, 2**34 + 300), (2**39 - 100, 2**39 + 200)]:
            ours = tc.own_reference(key, a, b - a, kind)
            assert torch.equal(philox.reference_fill((a, b), key, kind).view(torch.int32), ours.view(torch.int32))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n,start", [(1, 0), (3, 5), (127, 1), (129, 130), (4099, 0), (300, 77)])
def test_fill_matches_reference(kind, n, start):
    tc.check_fill(kt, "cpu", kind, n, start, tc.KEYS[n % len(tc.KEYS)])


@pytest.mark.parametrize("kind", KINDS)
def test_fill_64bit_counters(kind):
    # counters past 2**32 (the Philox counter's high word) and element indices past 2**31
    start = 2**34 - 6 if kind != "rademacher" else 2**39 - 100
    tc.check_fill(kt, "cpu", kind, 300, start, tc.KEYS[0])


def test_fill_chunking_and_block_size_do_not_matter():
    whole = torch.empty(1000)
    kt.fill(whole, tc.KEYS[1], 0, "rademacher", block=256)
    parts = torch.empty(1000)
    for a, b in [(0, 3), (3, 200), (200, 641), (641, 1000)]:
        kt.fill(parts[a:b], tc.KEYS[1], a, "rademacher")
    assert torch.equal(whole, parts)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype,out_dtype", [(torch.float32, None), (torch.float32, torch.bfloat16),
                                             (torch.float32, torch.float16), (torch.bfloat16, None),
                                             (torch.float16, None), (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("nterms", [1, 4])
def test_perturbed_copy(kind, dtype, out_dtype, nterms):
    tc.check_perturbed_copy(kt, "cpu", dtype, out_dtype, kind, 129, nterms, block=128)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # numpy, on purpose
@pytest.mark.parametrize("out_dtype", HALF)
def test_rounding_to_nearest_even_as_torch(out_dtype):
    # ties, values that round to inf, subnormals of both dtypes, ±0, ±inf, NaN
    tie = [1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 1 + 2**-11, 1 + 3 * 2**-11, 2049.0, 2051.0]
    edge = [3.3961e38, 3.3893e38, 65519.0, 65520.0, 1e-40, -3e-39, 1e-6, 6e-8, 2e-8, 0.0, -0.0,
            float("inf"), -float("inf"), float("nan")]
    x = torch.cat([torch.tensor(tie + edge), torch.randn(200) * 10.0 ** torch.randint(-40, 38, (200,))])
    got = kt.perturbed_copy(x, [(tc.KEYS[0], 1.0)], 0.0, out_dtype, kind="rademacher")
    want = (x + 0.0 * tc.reference(tc.KEYS[0], 0, x.numel(), "rademacher")).to(out_dtype)
    nan = want.isnan()  # NaN bit patterns differ inside torch itself (scalar vs vector paths)
    assert torch.equal(got.isnan(), nan)
    assert torch.equal(got[~nan].view(torch.int16), want[~nan].view(torch.int16))


@pytest.mark.parametrize("n", [1, 3, 127, 4099])
def test_perturbed_copy_sizes(n):
    tc.check_perturbed_copy(kt, "cpu", torch.bfloat16, None, "rademacher", n, 2)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("rounding", [False, True])
def test_update(kind, dtype, rounding):
    tc.check_update(kt, "cpu", dtype, kind, 4099, 3 if rounding else 1, rounding)


@pytest.mark.parametrize("dtype", HALF)
def test_update_with_master(dtype):
    tc.check_update(kt, "cpu", dtype, "rademacher", 129, 2, False, use_master=True)


@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
def test_update_zero_step_is_exact(dtype):
    p = tc._pattern((257,), dtype, "cpu")
    before = p.clone()
    kt.update_(p, [(tc.KEYS[0], 1.0)], 0.0, 1.0, 12345, kind="gaussian")
    assert torch.equal(p, before)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # numpy, on purpose
@pytest.mark.parametrize("dtype", HALF)
def test_update_flags_overflow_like_the_plain_pass(dtype):
    p = torch.full((300,), torch.finfo(dtype).max, dtype=dtype)
    with pytest.raises(WeightOverflowError):  # the plain pass refuses this update...
        plain_update(p.clone(), lambda a, b: torch.full((b - a,), 1e38), 1 << 16)
    flag = torch.zeros(1, dtype=torch.int32)
    kt.update_(p, [(tc.KEYS[0], 1.0)], 1e38, 1.0, 99, kind="rademacher", overflow=flag)
    assert int(flag) == 1  # ...the kernel reports it
    ok = torch.zeros(1, dtype=torch.int32)
    kt.update_(torch.ones(300, dtype=dtype), [(tc.KEYS[0], 1.0)], 1e-3, 1.0, 99, kind="rademacher", overflow=ok)
    assert int(ok) == 0


def test_bad_arguments():
    p = torch.zeros(10)
    with pytest.raises(ValueError, match="noise kind"):
        kt.perturbed_copy(p, [(1, 1.0)], 1.0, kind="cauchy")
    with pytest.raises(ValueError, match="1 to 4"):
        kt.perturbed_copy(p, [(1, 1.0)] * 5, 1.0, kind="gaussian")
    with pytest.raises(ValueError, match="64-bit"):
        kt.update_(p, [(-1, 1.0)], 1.0, kind="uniform")
    with pytest.raises(ValueError, match="contiguous"):
        kt.update_(torch.zeros(4, 4).t(), [(1, 1.0)], 1.0, kind="uniform")
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        kt.perturbed_copy(p.double(), [(1, 1.0)], 1.0, kind="uniform")
