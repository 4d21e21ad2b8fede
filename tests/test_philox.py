"""Philox4x32-10 reference (zotune.philox) against published vectors, and the fast CPU path
(zotune.noise_cpu) against the reference: bits for uniform/rademacher, a tolerance for gaussian."""

import pytest
import torch

from zotune import rng
from zotune.noise_cpu import fill_cpu
from zotune.philox import KINDS, mulhilo32, philox4x32, philox4x32_words, reference_fill

# Random123's kat_vectors, philox4x32 with 10 rounds: counter (4 words), key (2 words) -> output.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]
# Gaussian tolerance: the fast path's float32 log/sin/cos are within ~1 ulp of torch's (SLEEF);
# measured max |fast - reference| = 7.2e-7 over 2M elements.
ATOL = RTOL = 1e-6


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_known_answers(ctr, key, expected):
    words = philox4x32_words(*(torch.tensor([c]) for c in ctr), *key)
    assert tuple(int(w) for w in words) == expected


def test_seven_rounds_known_answer():  # the round count is really a parameter
    words = philox4x32_words(0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344, 0xA4093822, 0x299F31D0, rounds=7)
    assert tuple(int(w) for w in words) == (0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A)


def test_mulhilo32_matches_python_integers():
    g = torch.Generator().manual_seed(0)
    b = torch.cat([torch.randint(0, 2**32, (1000,), generator=g), torch.tensor([0, 1, 2**32 - 1, 2**31])])
    for a in (0xD2511F53, 0xCD9E8D57, 2**32 - 1):
        hi, lo = mulhilo32(a, b)
        for x, h, l in zip(b.tolist(), hi.tolist(), lo.tolist()):
            assert (h, l) == ((a * x) >> 32, (a * x) & 0xFFFFFFFF)


def test_counter_layout_is_index_low_high_zero_zero():
    key = 0x0123456789ABCDEF
    o = torch.tensor([0, 5, 2**32 - 1, 2**32, 2**33 + 7])
    got = philox4x32(o, key)
    want = philox4x32_words(o & 0xFFFFFFFF, o >> 32, 0, 0, key & 0xFFFFFFFF, key >> 32)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    assert not torch.equal(got[0][3:4], got[0][4:5])  # the high word of the counter is used


@pytest.mark.parametrize("kind", KINDS)
def test_reference_independent_of_chunking(kind):
    key = rng.mix(3, 77, rng.DIRECTION)
    whole = reference_fill(1000, key, kind)
    for a, b in [(0, 1), (1, 4), (3, 130), (127, 129), (500, 1000), (999, 1000)]:
        assert torch.equal(reference_fill((a, b), key, kind), whole[a:b])


@pytest.mark.parametrize("kind", KINDS)
def test_distinct_keys_seeds_and_streams_give_distinct_noise(kind):
    keys = {
        rng.mix(seed, param, stream) for seed in (0, 1) for param in (0, 1) for stream in (rng.DIRECTION, rng.ROUNDING)
    }
    draws = [reference_fill(512, k, kind) for k in keys]
    assert len(keys) == 8
    for i in range(len(draws)):
        for j in range(i):
            assert (draws[i] != draws[j]).float().mean() > 0.4


def test_statistics():
    key = rng.mix(11, 12, rng.DIRECTION)
    n = 1_000_000
    z = reference_fill(n, key, "gaussian").double()
    assert torch.isfinite(z).all()
    assert abs(z.mean()) < 5e-3 and abs(z.var() - 1) < 1e-2  # standard errors 1e-3 and 1.4e-3
    assert abs((z**4).mean() - 3) < 0.05  # a Gaussian's kurtosis, not a uniform's or a sign's
    r = reference_fill(n, key, "rademacher")
    assert set(r.unique().tolist()) == {-1.0, 1.0} and abs(r.double().mean()) < 5e-3
    u = reference_fill(n, key, "uniform")
    assert u.min() >= 0 and u.max() < 1 and abs(u.double().mean() - 0.5) < 3e-3
    assert torch.equal(u * 2**24, (u * 2**24).floor())  # 24-bit grid


def test_reference_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown noise kind"):
        reference_fill(4, 0, "cauchy")
    with pytest.raises(ValueError, match="range"):
        reference_fill((5, 2), 0, "uniform")


def _assert_matches(fast, ref, kind):
    if kind == "gaussian":
        torch.testing.assert_close(fast, ref, atol=ATOL, rtol=RTOL)
    else:
        assert torch.equal(fast, ref)


@pytest.mark.parametrize("kind", KINDS)
def test_fill_cpu_equals_reference_at_odd_offsets(kind):
    key = rng.mix(2024, rng.name_key("layer.0.weight"), rng.DIRECTION)
    cases = [(0, 1), (1, 3), (5, 127), (131, 129), (77, 1000), (3, 1_000_003), (2**33 + 3, 129), (2**40 - 7, 300)]
    for start, n in cases:
        out = torch.full((n,), float("nan"))
        fill_cpu(out, key, start, kind)
        _assert_matches(out, reference_fill((start, start + n), key, kind), kind)


@pytest.mark.parametrize("kind", KINDS)
def test_fill_cpu_bits_independent_of_chunking_and_threads(kind):
    key = rng.mix(5, 6, rng.ROUNDING)
    n, start = 300_001, 17
    whole = fill_cpu(torch.empty(n), key, start, kind)
    pieces = torch.empty(n)
    cuts = [0, 1, 4, 130, 2047, 2049, 100_000, 250_003, n]
    for a, b in zip(cuts, cuts[1:]):
        fill_cpu(pieces[a:b], key, start + a, kind)
    assert torch.equal(pieces, whole)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        assert torch.equal(fill_cpu(torch.empty(n), key, start, kind), whole)
    finally:
        torch.set_num_threads(threads)


def test_fill_cpu_gaussian_tolerance_is_tight_and_stream_is_normal():
    key = rng.mix(9, 9, rng.DIRECTION)
    fast = fill_cpu(torch.empty(200_000), key, 0, "gaussian")
    ref = reference_fill(200_000, key, "gaussian")
    assert (fast - ref).abs().max() < 2e-6
    assert (fast == ref).float().mean() > 0.5  # mostly the same bits: same rounding steps as the reference


def test_fill_cpu_rejects_bad_buffers():
    with pytest.raises(ValueError, match="float32"):
        fill_cpu(torch.empty(8, dtype=torch.float64), 1, 0, "uniform")
    with pytest.raises(ValueError, match="contiguous 1-D"):
        fill_cpu(torch.empty(8, 2)[:, 0], 1, 0, "uniform")
    with pytest.raises(ValueError, match="unknown noise kind"):
        fill_cpu(torch.empty(8), 1, 0, "normal")
    with pytest.raises(ValueError, match="outside"):
        fill_cpu(torch.empty(8), 1, -1, "uniform")
    assert fill_cpu(torch.empty(0), 1, 0, "gaussian").numel() == 0
