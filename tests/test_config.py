"""Config files, flag overrides and validation errors (no model is loaded here)."""

import pytest

from zotune.cli import _config_from_args, build_parser
from zotune.config import TrainConfig, from_dict, load_config, merge, save_config


def _args(argv):
    return build_parser().parse_args(argv)


def test_yaml_file_then_flags_override(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("model: tiny-opt\nlr: 1e-4\nsteps: 50\noptimizer_kwargs: {momentum: 0.9}\n")
    cfg = load_config(f)
    assert (cfg.model, cfg.lr, cfg.steps) == ("tiny-opt", 1e-4, 50)  # YAML's string '1e-4' becomes a float
    cfg = _config_from_args(_args(["train", "--config", str(f), "--steps", "7", "--eval-examples", "none",
                                   "--opt", "nesterov=true"]))
    assert cfg.steps == 7 and cfg.model == "tiny-opt" and cfg.lr == 1e-4  # untouched values kept
    assert cfg.eval_examples is None
    assert cfg.optimizer_kwargs == {"momentum": 0.9, "nesterov": True}


def test_toml_and_roundtrip(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('model = "tiny-llama"\nbatch_size = 4\nautocast = "none"\n')
    cfg = load_config(f)
    assert cfg.batch_size == 4 and cfg.autocast is None
    save_config(cfg, tmp_path / "back.yaml")
    assert load_config(tmp_path / "back.yaml") == cfg


def test_unknown_key_lists_valid_keys(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("lr: 1e-5\nlearning_rate: 1e-5\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) 'learning_rate'.*valid keys: .*\blr\b"):
        load_config(f)


@pytest.mark.parametrize("values, fragment", [
    ({"steps": 0}, "steps must be >= 1"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"lr": -1}, "lr must be >= 0"),
    ({"eps": 0}, "eps must be > 0"),
    ({"optimizer": "nope"}, "unknown optimizer 'nope'; choose one of: .*mezo"),
    ({"task": "nope"}, "unknown task 'nope'"),
    ({"steps": "ten"}, "'steps' must be int, got str"),
    ({"lr": [1]}, "'lr' must be float"),
    ({"trainable": "("}, "not a valid regular expression"),
    ({"device": "gpu"}, "device must be auto, cpu"),
    ({"objective": "f2"}, "objective must be one of loss, accuracy, f1"),
    ({"objective": "accuracy", "optimizer": "adamw"}, "needs a zeroth-order optimizer .*'adamw' is first-order"),
    ({"objective": "f1"}, "objective 'f1' scores generated answers; task 'sst2' is classification"),
    ({"icl_shots": -1}, "icl_shots must be >= 0"),
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ({"max_length": 4}, "max_length must be >= 8"),
    ({"task": "rte", "task_spec": {"template": "{x}"}}, "built in and takes no task spec"),
])
def test_invalid_values_name_the_problem(values, fragment):
    with pytest.raises(ValueError, match=fragment):
        from_dict(values)


def test_merge_ignores_unset_and_returns_copy():
    base = TrainConfig()
    new = merge(base, {"lr": None, "seed": 3})
    assert new.seed == 3 and new.lr == base.lr and base.seed == 0


def test_bad_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ValueError, match=r"\.yaml, \.yml or \.toml"):
        load_config(tmp_path / "c.json")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_task_fields_from_file_and_flags(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("task: squad\nobjective: f1\nicl_shots: 32\nmax_new_tokens: 20\n")
    cfg = load_config(f)
    assert (cfg.task, cfg.objective, cfg.icl_shots, cfg.max_new_tokens, cfg.max_length) == ("squad", "f1", 32, 20, None)
    cfg = _config_from_args(_args(["train", "--task", "copa", "--objective", "accuracy", "--icl-shots", "4",
                                   "--max-length", "512"]))
    assert (cfg.task, cfg.objective, cfg.icl_shots, cfg.max_length) == ("copa", "accuracy", 4, 512)
    save_config(cfg, tmp_path / "back.yaml")
    assert load_config(tmp_path / "back.yaml") == cfg
