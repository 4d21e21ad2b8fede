"""Adapters through ``peft``: LoRA, prefix tuning and prompt tuning (``--mode``).

zotune owns no adapter code and no per-architecture table: ``peft`` builds the adapter (its own
per-model defaults pick LoRA's target modules), freezes the base weights, saves and merges. zotune
only seeds the adapter's initialisation with the run seed, so that a resumed run, a replay and a
rebuild of the weights after a failed step reconstruct the same starting point bit for bit.

Modes: ``ft`` (all weights, no adapter), ``lora`` (W + (α/r)·B·A on the target modules; B starts at
zero, so step 0 is the base model), ``prefix`` (learned keys and values of ``virtual_tokens``
positions in every layer) and ``prompt`` (``virtual_tokens`` learned input embeddings).
Half-precision base weights keep fp32 adapters (peft's ``autocast_adapter_dtype``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

MODES = ("ft", "lora", "prefix", "prompt")
ADAPTER_DIR = "adapter"  # in a run folder: what peft's save_pretrained writes
# peft's notes on every prompt-learning forward; the behaviour they describe is what zotune wants
# (position ids are recomputed with the virtual tokens; the prefix goes in as a cache)
_PEFT_NOISE = ("Position ids are not supported for parameter efficient tuning",
               "`past_key_values` is deprecated", "`is_gradient_checkpointing` is deprecated")


def peft_config(mode: str, lora_r: int = 8, lora_alpha: float = 16.0, lora_targets: str | None = None,
                virtual_tokens: int = 20):
    """The peft config of ``mode`` (None for ``ft``). ``lora_targets``: None for peft's default
    modules of the architecture, ``all-linear``, or comma-separated module names."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "ft":
        return None
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType

    if mode == "lora":
        targets = None
        if lora_targets:
            targets = "all-linear" if lora_targets == "all-linear" else [t.strip() for t in lora_targets.split(",")]
        return LoraConfig(task_type=TaskType.CAUSAL_LM, r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0,
                          target_modules=targets)
    cls = PrefixTuningConfig if mode == "prefix" else PromptTuningConfig
    return cls(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=virtual_tokens)


def apply_adapter(model: torch.nn.Module, mode: str, seed: int, **options) -> torch.nn.Module:
    """``model`` with the adapter of ``mode`` (``peft_config``'s options), initialised from ``seed``;
    ``model`` itself for ``ft``. The global RNG is left as it was."""
    config = peft_config(mode, **options)
    if config is None:
        return model
    from peft import get_peft_model

    quiet()
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        try:
            return get_peft_model(model, config)
        except ValueError as err:  # e.g. target modules that the model does not have
            raise ValueError(f"--mode {mode}: peft refused the adapter ({err}); for LoRA, name the model's "
                             "linear layers with --lora-targets (or use all-linear)") from None


def load_adapter(base: torch.nn.Module, run: Path) -> torch.nn.Module:
    """``base`` with the adapter a run saved (``run/adapter``, peft's ``save_pretrained`` folder)."""
    from peft import PeftModel

    folder = Path(run) / ADAPTER_DIR
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no adapter (no adapter_config.json); was the run saved with "
                                "save_weights: false, or stopped before its end?")
    quiet()
    return PeftModel.from_pretrained(base, str(folder))


def save_adapter(model: torch.nn.Module, run: Path) -> None:
    """peft's ``save_pretrained`` of the adapter into ``run/adapter`` (safetensors)."""
    model.save_pretrained(str(Path(run) / ADAPTER_DIR), safe_serialization=True)


def check_mergeable(mode: str) -> None:
    """Refuse to merge an adapter that is not a change of the weights (prefix, prompt)."""
    if mode in ("prefix", "prompt"):
        raise ValueError(f"a {mode}-tuning adapter is not a change of the weights and cannot be merged into them; "
                         "serve it with peft (PeftModel.from_pretrained(base, RUN/adapter)) instead of exporting")


def merged(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """The plain model with the adapter folded into its weights (LoRA), for export."""
    check_mergeable(mode)
    return model.merge_and_unload() if mode == "lora" else model


def quiet() -> None:
    """Silence peft's per-forward notes listed in ``_PEFT_NOISE``."""
    for text in _PEFT_NOISE:
        warnings.filterwarnings("ignore", message=f".*{text}")


__all__ = ["ADAPTER_DIR", "MODES", "apply_adapter", "check_mergeable", "load_adapter", "merged", "peft_config", "save_adapter"]
