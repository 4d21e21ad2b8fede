"""Every file in configs/ is a valid run: it parses as a TrainConfig, and its optimizer accepts its
options (on the tiny model of the same architecture, so a typo in an option or a parameter
pattern that matches nothing fails here, not minutes into a run)."""

from pathlib import Path

import pytest

from zotune.config import load_config
from zotune.models import load_model
from zotune.optim import build_optimizer

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_configs_cover_the_demo_and_every_zo_method():
    from zotune.optim import OPTIMIZERS

    names = {p.stem for p in CONFIGS}
    assert "demo" in names
    zo = {n for n, (_, _, is_zo) in OPTIMIZERS.items() if is_zo}
    assert {f"smollm2-{n}" for n in zo} <= names


@pytest.fixture(scope="module")
def tiny():
    model, _ = load_model("tiny-llama", device="cpu")
    return model


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_builds_its_optimizer(path, tiny):
    cfg = load_config(path)
    assert cfg.model == "smollm2" and cfg.task == "sst2"
    hp = dict(lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps, seed=cfg.seed, noise=cfg.noise)
    opt = build_optimizer(cfg.optimizer, tiny.named_parameters(), **hp, **cfg.optimizer_kwargs)
    assert opt.noise == cfg.noise


def test_a_config_with_a_sampler_trains_through_the_cli(tmp_path):
    """`zotune train --config configs/zo-adam-subspace.yaml` with flags that shrink it to the tiny
    model: the sampler mapping travels from the file to the optimizer, and the run folder records it."""
    import json

    import yaml

    from zotune.cli import main

    out = tmp_path / "run"
    tiny = ["--model", "tiny-llama", "--batch-size", "4", "--eval-examples", "8", "--test-examples", "8",
            "--max-length", "48", "--no-progress", "--steps", "2", "--out", str(out)]
    assert main(["train", "--config", str(CONFIGS[0].with_name("zo-adam-subspace.yaml")), *tiny]) == 0
    assert json.loads((out / "results.json").read_text())["train_forward_passes"] == 4
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["optimizer_kwargs"]["sampler"] == {"name": "subspace", "rank": 24, "refresh_every": 1000}
