"""Run folders: nothing destroyed, nothing half-made (issue 8).

A run that fails on bad input must leave an old run untouched and no new folder behind; temp files
of a killed write are swept by the next run; a corrupt GGUF conversion cache is named with its fix.
"""

import json
import os

import pytest
import torch

from zotune.cli import main
from zotune.models import load_model

TINY = ["--model", "tiny-llama", "--batch-size", "4", "--eval-examples", "8", "--test-examples", "8",
        "--max-length", "48", "--no-progress", "--eval-every", "0"]


def _train(out, *extra, command="train"):
    return main([command, *TINY, "--out", str(out), *extra])


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def old_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--steps", "1") == 0
    capsys.readouterr()
    return out


def test_overwrite_with_a_bad_model_keeps_the_old_run(old_run, capsys):
    before = _snapshot(old_run)
    assert "model.safetensors" in before and "results.json" in before
    assert _train(old_run, "--steps", "1", "--overwrite", "--model", "tiny-lama") == 2
    err = capsys.readouterr().err
    assert "zotune: error: model spec 'tiny-lama'" in err and "Traceback" not in err
    assert _snapshot(old_run) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a CPU-only torch")
@pytest.mark.parametrize("failure", [RuntimeError("out of memory"), KeyboardInterrupt()])
def test_overwrite_keeps_the_old_run_until_the_new_one_completes_a_step(old_run, capsys, monkeypatch, failure):
    """The new run is staged inside the folder; a crash or Ctrl-C before its first step is done
    (here: in its first forward) leaves the old run byte for byte, and no staging folder."""
    import zotune.train as train_mod

    before = _snapshot(old_run)

    def broken(model, batch):
        raise failure

    monkeypatch.setattr(train_mod, "loss_fn", broken)
    code = _train(old_run, "--steps", "2", "--overwrite", "--lr", "1e-2") if isinstance(failure, KeyboardInterrupt) \
        else None
    if code is None:
        with pytest.raises(RuntimeError):
            _train(old_run, "--steps", "2", "--overwrite", "--lr", "1e-2")
    else:
        assert code == 130
    assert _snapshot(old_run) == before
    assert not [p for p in old_run.iterdir() if p.name.startswith(".")]


def test_overwrite_swaps_in_the_new_run_after_its_first_step(old_run):
    (old_run / "notes.txt").write_text("mine")
    assert _train(old_run, "--steps", "2", "--overwrite", "--lr", "1e-2") == 0
    assert json.loads((old_run / "results.json").read_text())["steps"] == 2
    assert (old_run / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in old_run.glob("checkpoint-*")) == ["checkpoint-00000002"]
    assert not [p for p in old_run.iterdir() if p.name.startswith(".")]


def test_overwrite_onto_a_missing_gpu_keeps_the_old_run(old_run, capsys):
    before = _snapshot(old_run)
    assert _train(old_run, "--steps", "1", "--overwrite", "--device", "cuda") == 2
    err = capsys.readouterr().err
    assert "sees no CUDA GPU" in err and "--device cpu" in err and "Traceback" not in err
    assert _snapshot(old_run) == before


def test_a_failed_run_leaves_no_folder_and_the_rerun_works(tmp_path, capsys):
    out = tmp_path / "new" / "run"
    assert _train(out, "--steps", "1", "--model", str(tmp_path / "missing-model")) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert not out.exists() and not out.parent.exists()
    assert _train(out, "--steps", "1") == 0  # the corrected rerun is not blocked
    assert json.loads((out / "results.json").read_text())["steps"] == 1


def test_an_out_below_a_file_is_refused_cleanly(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert _train(blocker / "run", "--steps", "1") == 2
    err = capsys.readouterr().err
    assert "is a file" in err and "--out" in err and "Traceback" not in err
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_an_unwritable_out_is_refused_before_the_model_loads(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert _train(locked / "run", "--steps", "1") == 2
        assert "cannot write" in capsys.readouterr().err
        assert not (locked / "run").exists()
    finally:
        locked.chmod(0o700)


def test_demo_out_onto_an_existing_run_needs_overwrite(old_run, capsys):
    before = _snapshot(old_run)
    assert _train(old_run, "--steps", "2", command="demo") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _snapshot(old_run) == before
    assert _train(old_run, "--steps", "2", "--overwrite", command="demo") == 0
    assert json.loads((old_run / "results.json").read_text())["steps"] == 2


def test_temp_files_of_a_killed_write_are_swept_by_the_next_run(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".model.safetensors.k1ll3d.tmp"
    stale.write_bytes(b"\0" * 1000)  # what a SIGKILL during save_weights leaves
    (out / ".results.json.x.tmp").write_text("{")
    # Only leftovers in the folder: it counts as empty, so no --overwrite is needed.
    assert _train(out, "--steps", "1") == 0
    names = {p.name for p in out.iterdir()}
    assert not any(n.endswith(".tmp") for n in names)
    assert {"config.yaml", "results.json", "model.safetensors"} <= names


def test_overwrite_sweeps_temp_files_but_keeps_the_users_own(old_run, capsys):
    (old_run / ".model.safetensors.abc.tmp").write_bytes(b"half")
    (old_run / "notes.txt").write_text("mine")
    (old_run / ".draft.tmp").write_text("also mine")  # not a zotune temp name
    assert _train(old_run, "--steps", "2", "--overwrite") == 0
    names = {p.name for p in old_run.iterdir()}
    assert ".model.safetensors.abc.tmp" not in names
    assert (old_run / "notes.txt").read_text() == "mine" and (old_run / ".draft.tmp").read_text() == "also mine"


def _fake_gguf_with_cache(tmp_path, cut_weights: bool):
    """A file that passes the GGUF magic check and a ready conversion cache for it, so that the
    cache is what gets loaded (building a real GGUF is not needed to test the cache check)."""
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    cache = tmp_path / "cache"
    target = cache / f"m-{gguf.stat().st_size}"
    model, tok = load_model("tiny-llama")
    model.save_pretrained(target)
    tok.save_pretrained(target)
    weights = target / "model.safetensors"
    if cut_weights:
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return gguf, cache, target


def test_an_intact_gguf_cache_loads(tmp_path):
    gguf, cache, _ = _fake_gguf_with_cache(tmp_path, cut_weights=False)
    model, _ = load_model(str(gguf), cache_dir=str(cache))
    assert sum(p.numel() for p in model.parameters()) > 0


def test_a_truncated_gguf_cache_is_named_with_the_fix(tmp_path, monkeypatch, capsys):
    gguf, cache, target = _fake_gguf_with_cache(tmp_path, cut_weights=True)
    with pytest.raises(ValueError, match="is corrupt") as info:
        load_model(str(gguf), cache_dir=str(cache))
    assert str(target) in str(info.value) and "delete that folder" in str(info.value)
    monkeypatch.setenv("ZOTUNE_CACHE", str(cache))
    assert main(["eval", "--model", str(gguf), "--examples", "4"]) == 2
    err = capsys.readouterr().err
    assert f"rm -r {target}" in err and "Traceback" not in err
