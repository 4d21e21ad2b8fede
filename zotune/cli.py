"""Command-line interface: ``zotune train | eval | replay | plot | demo | bench``.

Every TrainConfig field is a flag of ``train`` (and ``demo``); flags override ``--config FILE``,
which overrides the defaults. User errors (bad flags or values, missing files) print one line,
``zotune: error: ...``, and exit with code 2; a run stopped by a non-finite loss exits with 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from pathlib import Path

import yaml

from zotune.errors import TrainingFailure
from zotune.config import DEMO_LR, FIELDS, HELP, TrainConfig, _base_type, known_optimizers, load_config, merge

EXIT_USAGE = 2
EXIT_NONFINITE = 1


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors raise so that main() reports every error the same way, and
    negative numbers in exponent form (``--eps -1e-3``) are values, not flags, so that they reach
    the range checks and get their message."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message):
        raise ValueError(f"{self.prog}: {message}")


def _kv(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), yaml.safe_load(v)


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, all defaulting to None (= not given, keep file/default)."""
    p.add_argument("--config", metavar="FILE", help="YAML or TOML config file; flags override its values")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty run folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    defaults = TrainConfig()
    for name in FIELDS:
        flag = "--" + name.replace("_", "-")
        typ, optional = _base_type(name)
        doc = HELP.get(name, "")
        if name == "optimizer" and known_optimizers():
            doc = f"optimizer: {', '.join(known_optimizers())}"
        help_ = f"{doc} (default: {getattr(defaults, name)!r})".strip()
        if typ is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif typ is dict:
            p.add_argument("--opt", dest=name, metavar="KEY=VALUE", type=_kv, action="append", default=None,
                           help="extra optimizer argument (optimizer_kwargs), repeatable, e.g. --opt momentum=0.9")
        else:
            # Values stay strings/numbers here; config.merge converts and checks them, so
            # 'none' works for optional fields and error messages are the same as for files.
            p.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=help_)


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    cfg = load_config(args.config) if args.config else TrainConfig()
    overrides = {name: getattr(args, name, None) for name in FIELDS}
    if overrides.get("optimizer_kwargs") is not None:
        overrides["optimizer_kwargs"] = {**cfg.optimizer_kwargs, **dict(overrides["optimizer_kwargs"])}
    return merge(cfg, overrides, where="command-line flags")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zotune", description="Forward-only (zeroth-order) fine-tuning of language models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="fine-tune a model on a task (or --resume a run)",
                       description="Fine-tune a model on a task, or continue a stopped or killed run with --resume.")
    p.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN where it stopped (same config; "
                                                    "--steps, --save-every, --max-skips may change)")
    _add_config_flags(p)

    p = sub.add_parser("demo", help="the README demo: SmolLM2 on SST-2 with MeZO into runs/demo",
                       description="Train the default config into runs/demo (replacing the previous demo there) and "
                                   "print a summary. Any train flag may be given to change the demo; an --out "
                                   "folder that is not empty is refused unless --overwrite is given.")
    _add_config_flags(p)

    p = sub.add_parser("eval", help="a task's metric for a model zero-shot / in context, or for a saved run",
                       description="Evaluate a model zero-shot (or with --icl-shots demonstrations), or the "
                                   "weights of a saved run (--run), on the task's metric.")
    p.add_argument("--run", help="run folder with config.yaml and model.safetensors")
    p.add_argument("--model", help="model spec (default: the run's, else smollm2)")
    p.add_argument("--task", help="task name or own data file (default: the run's, else sst2)")
    p.add_argument("--task-spec", help="YAML spec of your own data (with a data file as --task)")
    p.add_argument("--split", default="test", help="split to evaluate: train, dev or test (default: test)")
    p.add_argument("--examples", type=int, help="number of examples (default: the run's test/eval count)")
    p.add_argument("--icl-shots", type=int, default=0,
                   help="in-context demonstrations from train (fixed seed), as many as fit; MeZO uses 32 (default 0)")
    p.add_argument("--max-length", type=int, help="maximum tokens per sequence (default: the run's, else the "
                                                  "model's context)")
    p.add_argument("--max-new-tokens", type=int, help="generation tasks: answer token budget (default: the run's, "
                                                      "else the task's)")
    p.add_argument("--data-dir", help="benchmark data folder (default: $ZOTUNE_DATA; sst2 has a packaged sample)")
    p.add_argument("--dtype")
    p.add_argument("--autocast", help="bf16 or none (default: the run's, else bf16)")
    p.add_argument("--device")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("replay", help="rebuild a run's weights from its base model and trajectory",
                       description="Rebuild the weights of a zeroth-order run from the base model and the run's "
                                   "trajectory.zot, without forward passes; bit-identical to the run's own weights.")
    p.add_argument("--trajectory", required=True, metavar="RUN", help="run folder (or its trajectory.zot file)")
    p.add_argument("--base", metavar="MODEL", help="base model spec (default: the run's model)")
    p.add_argument("--steps", type=int, help="replay only the first N steps (default: all)")
    p.add_argument("--out", required=True, help="folder to write model.safetensors and config.yaml into")
    p.add_argument("--device", help="device (default: the device type the run was recorded on)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")

    p = sub.add_parser("export", help="write a run's model (LoRA merged) as a Hugging Face folder",
                       description="Write a run's fine-tuned model as a Hugging Face folder (config.json, "
                                   "safetensors, tokenizer) that AutoModelForCausalLM.from_pretrained loads; a LoRA "
                                   "adapter is merged into the weights.")
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("--out", required=True, help="folder to write the model into")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")

    p = sub.add_parser("bench", help="time a step (or a noise pass) against a forward, textbook MeZO and AdamW",
                       description="`zotune bench step`: one step of each phase on one model and batch, in one run, "
                                   "as JSON lines (--table for a table) with the ratios; `zotune bench noise`: one "
                                   "pass of each noise source against the copy floor. See zotune/bench.py. "
                                   "`zotune bench study CONFIG.yaml`: a benchmark study (configs/study/).")
    p.add_argument("what", nargs="?", choices=("step", "noise", "scale", "study"), default="step",
                   help="what to time (default: step); scale: throughput at 1 and --processes processes; study: "
                        "a grid of methods x tasks x modes x hyperparameters x seeds, reported (zotune/study.py)")
    p.add_argument("--model", default="smollm2", help="model spec, or a random architecture: opt-125m, opt-1.3b, "
                                                      "opt-6.7b, opt-13b, llama-1b (default: smollm2)")
    p.add_argument("--task", help="time a real training batch of this task (default: random tokens)")
    p.add_argument("--data-dir", help="benchmark data folder (default: $ZOTUNE_DATA)")
    p.add_argument("--batch", "--batch-size", dest="batch", type=int, default=16)
    p.add_argument("--seq", "--max-length", dest="seq", type=int, default=64, help="tokens per sequence (default 64)")
    p.add_argument("--dtype", default="fp32", help="weight dtype: fp32, bf16, fp16 (default fp32)")
    p.add_argument("--methods", default="mezo", help="comma-separated optimizers to time, each NAME or NAME:KEY=VALUE[:KEY=VALUE] "
                   "with its options, e.g. adanaged:sampler=dense:geometry=sign (default: mezo)")
    p.add_argument("--noise", default="rademacher", help="ZO direction distribution (default rademacher)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per phase; the median is reported")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--autocast", default="bf16", help="bf16 or none")
    p.add_argument("--memory", action="store_true", help="on a CPU, measure each phase's peak RSS in its own process")
    p.add_argument("--numel", type=int, default=1 << 24, help="bench noise: elements per pass (default 16M)")
    p.add_argument("--table", action="store_true", help="print a table instead of JSON lines")
    p.add_argument("--json", metavar="FILE", help="also write the whole result as one JSON file")
    p.add_argument("--mode", default="data", help="bench scale: data (the batch split over processes) or evaluation "
                                                 "(the step's forwards split over processes)")
    p.add_argument("--processes", type=int, default=2, help="bench scale: processes to compare with one (default 2)")
    p.add_argument("--directions", type=int, help="bench scale: directions per step (default: 1 for data, "
                                                  "--processes for evaluation)")
    p.add_argument("--threads", type=int, default=1, help="bench scale: CPU threads per process (default 1)")
    from zotune.study import add_study_arguments

    add_study_arguments(p)

    p = sub.add_parser("plot", help="loss and dev-accuracy curves of runs",
                       description="Plot smoothed training loss and dev accuracy of one or more runs.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or their metrics.jsonl files)")
    p.add_argument("--out", default="curves.png", help="image file to write (default: curves.png)")
    p.add_argument("--smooth", type=float, default=0.9, help="EMA factor for the loss curve, 0..1 (default 0.9)")
    return parser


# --------------------------------------------------------------------------- commands

def _summary_table(results: dict, out: str) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    metric, n = results.get("metric", "accuracy"), results["test_examples"]
    if results.get("icl"):
        icl = results["icl"]
        baseline = (f"ICL test {metric} (n={n}, {icl['shots_used_min']}-{icl['shots_used_max']} of "
                    f"{icl['shots']} shots fit)", pct(results["icl_test_accuracy"]))
    else:
        baseline = (f"zero-shot test {metric} (n={n})", pct(results["zero_shot_test_accuracy"]))
    rows = [
        ("run", out),
        ("model / task / optimizer", f"{results['model']} / {results['task']} / {results['optimizer']}"),
        baseline,
        (f"fine-tuned test {metric} (n={n})", pct(results["test_accuracy"])),
        (f"best dev {metric}", pct(results["best_dev_accuracy"])),
        ("steps", str(results["steps"])),
        ("wall time", f"{results['wall_time_s'] / 60:.1f} min ({results['train_time_s']:.0f} s training)"),
        ("peak memory", f"{results['peak_memory_mb'] / 1024:.2f} GiB ({results['peak_memory_kind']})"),
    ]
    if results.get("stopped"):
        rows.append(("stopped", results["stopped"]))
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def _cmd_train(args, demo: bool = False) -> int:
    from zotune.train import resume, train

    if getattr(args, "resume", None):
        if args.config or args.overwrite:
            raise ValueError("--resume continues a run with its own config.yaml; drop --config/--overwrite")
        results = resume(args.resume, {name: getattr(args, name, None) for name in FIELDS},
                         progress=not args.no_progress)
        return _report(results)
    cfg = _config_from_args(args)
    # The demo may replace only its own default folder; an --out the user named is protected as in train.
    overwrite = args.overwrite or (demo and cfg.out is None)
    if demo and cfg.out is None:
        cfg = dataclasses.replace(cfg, out=os.path.join("runs", "demo"))
    if demo and cfg.lr is None and cfg.optimizer == "mezo":
        cfg = dataclasses.replace(cfg, lr=DEMO_LR)
    results = train(cfg, overwrite=overwrite, progress=not args.no_progress)
    return _report(results)


def _report(results: dict) -> int:
    from zotune.distributed import is_writer

    if not is_writer():  # under torchrun rank 0 reports for every rank
        return results.get("exit_code", EXIT_NONFINITE if results.get("stopped") else 0)
    if results.get("interrupted") and results.get("resumable") is False:
        print(f"zotune: {results['interrupted']} before the first step; nothing to resume", file=sys.stderr)
        return results["exit_code"]
    if results.get("interrupted"):
        print(f"zotune: {results['interrupted']}: stopped after step {results['steps']} with a checkpoint; "
              f"continue with: zotune train --resume {results['out']}", file=sys.stderr)
        return results["exit_code"]
    print(_summary_table(results, results["out"]))
    if results.get("stopped"):
        step = results.get("weights_step", results["steps"])
        kept = "the base model's weights" if step == 0 else f"the weights after step {step}"
        print(f"zotune: error: {results['stopped']}; {kept} are in {results['out']}. "
              "Try a smaller --lr (or --eps).", file=sys.stderr)
        return EXIT_NONFINITE
    return 0


def _cmd_replay(args) -> int:
    from zotune.replay import replay

    res = replay(args.trajectory, args.out, base=args.base, steps=args.steps, device=args.device,
                 overwrite=args.overwrite)
    print(f"replayed {res['steps']} steps of {res['optimizer']} from {res['trajectory']} "
          f"({res['trajectory_bytes']:,} bytes) onto {res['base']} -> {res['out']}/model.safetensors")
    return 0


def _cmd_eval(args) -> int:
    from zotune.train import evaluate_run

    autocast = "config" if args.autocast is None else (None if args.autocast.lower() == "none" else args.autocast)
    if args.run is None and autocast == "config":
        autocast = TrainConfig().autocast
    res = evaluate_run(run=args.run, model=args.model, task=args.task, split=args.split, examples=args.examples,
                       data_dir=args.data_dir, dtype=args.dtype, autocast=autocast, device=args.device,
                       batch_size=args.batch_size, icl_shots=args.icl_shots, task_spec=args.task_spec,
                       max_length=args.max_length, max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps(res))
    else:
        icl = res["icl"]
        how = (f"ICL, {icl['shots_used_min']}-{icl['shots_used_max']} of {icl['shots']} shots fit" if icl
               else "zero-shot")
        what = f"run {res['run']}" if res["run"] else f"{res['model']} ({how})"
        print(f"{what} on {res['task']} {res['split']}: {res['metric']} {100 * res['accuracy']:.2f}% "
              f"(n={res['n']}, {res['eval_time_s']:.0f} s)")
    return 0


def _cmd_export(args) -> int:
    from zotune.export import export_run

    res = export_run(args.run, args.out, overwrite=args.overwrite)
    print(f"exported {res['run']} ({res['mode']}, {res['model']}) -> {res['out']}: {', '.join(res['files'])}")
    return 0


def read_metrics(run: str | Path) -> tuple[str, list[dict]]:
    """(run name, records) from a run folder or a metrics.jsonl path."""
    path = Path(run)
    f = path if path.is_file() else path / "metrics.jsonl"
    if not f.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {path}; is it a zotune run folder?")
    name = (f.parent if path.is_file() else path).resolve().name
    records = []
    for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"{f}:{i} is not valid JSON") from None
    return name, records


def _ema(values: list[float], beta: float) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard-style smoothing)."""
    out, m = [], 0.0
    for i, v in enumerate(values, 1):
        m = beta * m + (1 - beta) * v
        out.append(m / (1 - beta**i) if beta > 0 else v)
    return out


def _cmd_plot(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not 0 <= args.smooth < 1:
        raise ValueError(f"--smooth must be in [0, 1), got {args.smooth}")
    out = Path(args.out)
    fmt = out.suffix.lstrip(".").lower() or "png"
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for run in args.runs:
        name, recs = read_metrics(run)
        loss = [(r["step"], r["loss"]) for r in recs if isinstance(r.get("loss"), (int, float))]
        acc = [(r["step"], r["dev_accuracy"]) for r in recs if r.get("dev_accuracy") is not None]
        if loss:
            steps, vals = zip(*loss)
            (line,) = ax_loss.plot(steps, _ema(list(vals), args.smooth), label=name)
            ax_loss.plot(steps, vals, color=line.get_color(), alpha=0.15, linewidth=0.8)
        if acc:
            steps, vals = zip(*acc)
            ax_acc.plot(steps, vals, marker="o", markersize=3, label=name)
    ax_loss.set(title=f"training loss (EMA {args.smooth:g})", xlabel="step", ylabel="loss")
    ax_acc.set(title="dev accuracy", xlabel="step", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    from zotune.run_folder import atomic_write

    atomic_write(out, lambda tmp: fig.savefig(tmp, format=fmt, dpi=120))
    plt.close(fig)
    print(f"wrote {out}")
    return 0


def _cmd_bench(args) -> int:
    from zotune.bench import bench_noise, bench_step, format_noise, format_table, split_methods

    if args.what == "study":
        from zotune.study import run_study_command

        return run_study_command(args)
    if args.what == "scale":
        from zotune.bench_scale import bench_scale

        autocast = None if args.autocast.lower() == "none" else args.autocast
        result = bench_scale(args.model, batch=args.batch, seq=args.seq, mode=args.mode, processes=args.processes,
                             directions=args.directions, threads=args.threads, steps=args.steps, warmup=args.warmup,
                             autocast=autocast)
        print(json.dumps(result))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        return 0
    if args.what == "noise":
        result = bench_noise(numel=args.numel, device=args.device, steps=args.steps, warmup=args.warmup)
        rows, table = result["sources"], format_noise(result)
    else:
        autocast = None if args.autocast.lower() == "none" else args.autocast
        methods = split_methods(args.methods)
        result = bench_step(args.model, batch_size=args.batch, seq=args.seq, dtype=args.dtype, methods=methods,
                            device=args.device, autocast=autocast, steps=args.steps, warmup=args.warmup,
                            noise=args.noise, task=args.task, data_dir=args.data_dir, memory=args.memory)
        rows, table = result["phases"], format_table(result)
    if args.table:
        print(table)
    else:
        for row in rows.values():
            print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (the console script passes it to sys.exit)."""
    try:
        args = build_parser().parse_args(argv)
        if args.command == "train":
            return _cmd_train(args)
        if args.command == "demo":
            return _cmd_train(args, demo=True)
        if args.command == "eval":
            return _cmd_eval(args)
        if args.command == "replay":
            return _cmd_replay(args)
        if args.command == "plot":
            return _cmd_plot(args)
        if args.command == "bench":
            return _cmd_bench(args)
        if args.command == "export":
            return _cmd_export(args)
    except SystemExit as e:  # --help / --version
        return int(e.code or 0)
    except FloatingPointError as e:  # NonFiniteLossError is a subclass
        print(f"zotune: error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    except (ValueError, FileNotFoundError) as e:
        msg = str(e.args[0]) if isinstance(e, FileNotFoundError) and e.args and not e.filename else str(e)
        print(f"zotune: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingFailure as e:  # e.g. a checkpoint that could not be written (a full disk)
        print(f"zotune: error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    except KeyboardInterrupt:
        print("zotune: interrupted", file=sys.stderr)
        return 130
    finally:
        from zotune.distributed import leave

        leave()  # under torchrun: every exit, clean or not, leaves the process group
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
