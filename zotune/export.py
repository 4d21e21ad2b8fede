"""``zotune export RUN --out DIR``: a run's weights as a plain Hugging Face model folder.

The folder holds ``config.json``, safetensors weights and the tokenizer, so
``AutoModelForCausalLM.from_pretrained(DIR)`` loads it anywhere (serving, other evaluation
harnesses) without zotune or peft. A LoRA run is merged into the weights (peft's
``merge_and_unload``); a full fine-tuning run's saved tensors are copied into the base model;
prefix and prompt tuning change no weight, so they cannot be exported this way (the error says how
to serve them). Written into a temporary folder and renamed, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from zotune.adapters import check_mergeable, load_adapter, merged
from zotune.config import load_config
from zotune.run_folder import check_out_dir, load_weights


def export_run(run: str | Path, out: str | Path, overwrite: bool = False) -> dict:
    """Write the run's model (adapter merged) to ``out``; return what was written."""
    from zotune.models import load_model

    run, out = Path(run), Path(out)
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run} is not a zotune run folder (no config.yaml)")
    config = load_config(run / "config.yaml")
    check_mergeable(config.mode)
    out = check_out_dir(out, overwrite)
    model, tokenizer = load_model(config.model, dtype=config.dtype, device="cpu")
    if config.mode == "ft":
        load_weights(model, run / "model.safetensors")
    else:
        model = merged(load_adapter(model, run), config.mode)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"run": str(run), "out": str(out), "mode": config.mode, "model": config.model,
            "files": sorted(p.name for p in out.iterdir())}
