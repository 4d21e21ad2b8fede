"""The Triton kernels compiled for a CUDA GPU, against the CPU reference of the Philox spec: the same
checks as the interpreter tests (tests/triton_checks.py), plus sizes spanning many programs and a
check that the kernels never synchronise with the host. Skipped without a GPU."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU", allow_module_level=True)
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("TRITON_INTERPRET=1 would run these on the CPU", allow_module_level=True)

import triton_checks as tc  # noqa: E402
import zotune.kernels_triton as kt  # noqa: E402

DEV = "cuda"
KINDS = ["uniform", "rademacher", "gaussian"]
HALF = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n,start", [(1, 0), (3, 5), (127, 1), (129, 130), (4099, 0), ((1 << 20) + 3, 77),
                                     (300, 2**34 - 6), (300, 2**39 - 100)])
def test_fill_matches_reference(kind, n, start):
    tc.check_fill(kt, DEV, kind, n, start, tc.KEYS[n % len(tc.KEYS)])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype,out_dtype", [(torch.float32, None), (torch.float32, torch.bfloat16),
                                             (torch.float32, torch.float16), (torch.bfloat16, None),
                                             (torch.float16, None), (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("nterms", [1, 4])
def test_perturbed_copy(kind, dtype, out_dtype, nterms):
    tc.check_perturbed_copy(kt, DEV, dtype, out_dtype, kind, (1 << 18) + 5, nterms)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("rounding", [False, True])
@pytest.mark.parametrize("n", [4099, (1 << 18) + 5])
def test_update(kind, dtype, rounding, n):
    tc.check_update(kt, DEV, dtype, kind, n, 3 if rounding else 1, rounding)


@pytest.mark.parametrize("dtype", HALF)
def test_update_with_master(dtype):
    tc.check_update(kt, DEV, dtype, "rademacher", 4099, 2, False, use_master=True)


@pytest.mark.parametrize("dtype", HALF)
def test_update_flags_overflow(dtype):
    p = torch.full((3000,), torch.finfo(dtype).max, dtype=dtype, device=DEV)
    flag = torch.zeros(1, dtype=torch.int32, device=DEV)
    kt.update_(p, [(tc.KEYS[0], 1.0)], 1e38, 1.0, 99, kind="rademacher", overflow=flag)
    assert int(flag) == 1


def test_no_host_synchronisation():
    p = torch.randn(1 << 16, device=DEV).to(torch.bfloat16)
    flag = torch.zeros(1, dtype=torch.int32, device=DEV)
    out = torch.empty(1 << 16, device=DEV)
    terms = [(tc.KEYS[0], 0.5), (tc.KEYS[1], -2.0)]
    kt.perturbed_copy(p, terms, 1e-3, kind="gaussian")  # compile outside the guarded region
    kt.update_(p, terms, 1e-3, 0.99, 5, kind="gaussian", overflow=flag)
    kt.fill(out, tc.KEYS[2], 0, "rademacher")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        kt.perturbed_copy(p, terms, 1e-3, kind="gaussian")
        kt.update_(p, terms, 1e-3, 0.99, 5, kind="gaussian", overflow=flag)
        kt.fill(out, tc.KEYS[2], 7, "rademacher")
    finally:
        torch.cuda.set_sync_debug_mode("default")
