"""Bad input through the CLI: one clear `zotune: error:` line, exit 2, no traceback, no folder left."""

import json

import pytest
import torch

from zotune.cli import main

TINY = ["--model", "tiny-llama", "--batch-size", "4", "--eval-examples", "8", "--test-examples", "8",
        "--max-length", "48", "--no-progress", "--eval-every", "0", "--steps", "1"]


def _refused(capsys, argv, *phrases):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "zotune: error:" in err and "Traceback" not in err
    for phrase in phrases:
        assert phrase in err, err
    return err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a CPU-only torch")
def test_cuda_on_a_cpu_only_install(tmp_path, capsys):
    out = tmp_path / "run"
    _refused(capsys, ["train", *TINY, "--device", "cuda", "--out", str(out)], "no CUDA GPU", "--device cpu")
    _refused(capsys, ["eval", "--model", "tiny-llama", "--device", "cuda:0", "--examples", "4"], "no CUDA GPU")
    assert not out.exists()


def test_a_file_named_gguf_that_is_not_one(tmp_path, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_text("<html>404 Not Found</html>")
    out = tmp_path / "run"
    _refused(capsys, ["train", *TINY, "--model", str(fake), "--out", str(out)], "is not a GGUF file", str(fake))
    assert not out.exists()


def test_a_gguf_that_is_cut_short(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ZOTUNE_CACHE", str(tmp_path / "cache"))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x07")  # the magic, a version, then nothing
    _refused(capsys, ["eval", "--model", str(cut), "--examples", "4"], "could not be read as a GGUF model")
    assert not any((tmp_path / "cache").glob("cut-*"))  # no half cache left to trust later


@pytest.mark.parametrize("files", [
    {"config.json": "{not json"},
    {"config.json": json.dumps({"model_type": "llama"})},  # a config but no weights or tokenizer
])
def test_a_folder_with_config_json_that_is_not_a_model(tmp_path, capsys, files):
    folder = tmp_path / "hf"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    out = tmp_path / "run"
    _refused(capsys, ["train", *TINY, "--model", str(folder), "--out", str(out)],
             "not a loadable Hugging Face model", str(folder))
    assert not out.exists()


def test_a_batch_larger_than_the_training_data(tmp_path, capsys):
    out = tmp_path / "run"
    # sst2's packaged sample has 1000 training examples
    _refused(capsys, ["train", *TINY, "--batch-size", "5000", "--out", str(out)],
             "batch_size 5000 is larger than the 1000 training examples", "--batch-size 1000")
    assert not out.exists()


@pytest.mark.parametrize("n", ["-3", "0"])
def test_eval_examples_must_be_positive(capsys, n):
    _refused(capsys, ["eval", "--model", "tiny-llama", "--examples", n], f"--examples must be >= 1 (got {n})")
