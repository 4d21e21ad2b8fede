"""Behaviour pinned: every golden case replays to the recorded weights, bit for bit.

The weights in ``tests/golden/golden_weights.pt`` were recorded (float64 forward, so the same on AVX2
and AVX-512 CPUs) first from the engine before the issue-7 restructuring (commit 0cf51b7), then
re-recorded when issue 9 changed the noise generator to Philox (``tests/golden/make_golden.py``).
A failure here means the current code computes a different update; if that change is a deliberate
fix, say so in the closing note and regenerate the file (the generator's docstring).
"""

from __future__ import annotations

import pytest
import torch

from golden.make_golden import CASES, GOLDEN_FILE, fingerprint, run_case, single_thread, zo_methods

GOLDEN = torch.load(GOLDEN_FILE, weights_only=True)["cases"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def replays():
    return {}


def replay(case, replays):
    if case not in replays:
        replays[case] = run_case(case)
    return replays[case]


def test_every_zo_method_has_a_golden_case():
    recorded = {CASES[c][0] for c in GOLDEN}
    assert set(zo_methods()) <= recorded, f"no golden weights for {sorted(set(zo_methods()) - recorded)}"
    assert set(GOLDEN) == set(CASES), "golden file and CASES disagree: regenerate the file on purpose"


@pytest.mark.parametrize("case", list(CASES))
def test_weights_bit_identical(case, replays):
    weights, _ = replay(case, replays)
    golden = GOLDEN[case]
    assert list(weights) == list(golden["weights"])
    for name, w in weights.items():
        want = golden["weights"][name]
        if not torch.equal(w, want):
            diff = (w.float() - want.float()).abs().max().item()
            pytest.fail(f"{case}: {name} differs from the golden weights after 20 steps (max |Δ| = {diff:.3g})")
        assert fingerprint(w) == golden["sha256"][name], f"{case}: {name} bytes differ (dtype or layout)"


@pytest.mark.parametrize("case", list(CASES))
def test_returned_losses_identical(case, replays):
    """The losses ``step`` returns, step by step: they locate the first step that diverged."""
    _, losses = replay(case, replays)
    want = GOLDEN[case]["losses"]
    first = next((i for i, (a, b) in enumerate(zip(losses, want)) if a != b), None)
    assert first is None, f"{case}: step {first} returned {losses[first]!r}, golden {want[first]!r}"
