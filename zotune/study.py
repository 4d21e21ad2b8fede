"""``zotune bench study CONFIG.yaml``: a benchmark study, resumable, in parallel, reported.

Reads the study file (``zotune.study_spec``: the schema; ``zotune.study_grid``: its cells), checks
every cell and every task's data before anything runs, runs the unfinished cells ``--jobs`` at a time
(``zotune.study_run``), then writes into the study folder ``results.csv`` / ``results.json``
(``zotune.study_table``), ``plots/*.png`` (``zotune.study_plots``) and ``report.md``
(``zotune.study_report``). Rerunning the same command
skips finished cells and continues stopped ones; ``--report-only`` rebuilds the outputs from the
cells on disk (keeping the Reading written into report.md); ``--publish PAGE.md`` copies the report
and its plots to a documentation page; ``--dry-run`` lists the cells and their cost (``zotune.study_cost``) and writes nothing.

Exit codes: 0 all cells finished and the sanity pair agrees; 1 a cell failed or the sanity check
failed (the report says which); 2 a bad study file or option (nothing written); 128 + N stopped by
signal N (finished cells kept; rerun to continue).

Also runnable as ``python -m zotune.study CONFIG.yaml [...]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from zotune.run_folder import atomic_write
from zotune.study_cell import CELLS_DIR
from zotune.study_cost import study_cost
from zotune.study_plots import write_plots
from zotune.study_report import publish, write_report
from zotune.study_run import locked, run_cells, threads_per_cell, write_cells
from zotune.study_grid import check_data, read_study
from zotune.study_spec import Study, StudyError
from zotune.study_table import build_table, write_table

STUDY_COPY = "study.yaml"
COMMAND_FILE = "command.txt"


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``zotune bench study`` (none clashes with the other ``zotune bench`` options)."""
    parser.add_argument("study_file", nargs="?", metavar="CONFIG.yaml", help="bench study: the study file "
                        "(see configs/study/ and zotune/study_spec.py)")
    parser.add_argument("--out", help="bench study: the study folder (default: the file's `out:`, else "
                                      "runs/study-<file name>)")
    parser.add_argument("--jobs", type=int, default=1, help="bench study: cells run at a time, each in its own "
                                                            "process with cores/jobs threads (default 1)")
    parser.add_argument("--cell-threads", type=int, help="bench study: threads per cell (default: cores / --jobs)")
    parser.add_argument("--report-only", action="store_true", help="bench study: rebuild the table, plots and "
                                                                   "report from the cells on disk; run nothing")
    parser.add_argument("--publish", metavar="PAGE.md", help="bench study: also copy the report to PAGE.md and its "
                                                         "plots into PAGE/ (e.g. docs/results.md)")
    parser.add_argument("--dry-run", action="store_true", help="bench study: list the cells and their estimated "
                                                               "cost; run and write nothing")
    parser.add_argument("--in-process", action="store_true", help="bench study: run the cells one by one in this "
                                                                  "process, ignoring --jobs (debugging; peak memory "
                                                                  "is then shared)")


def study_out(study: Study, out: str | None) -> Path:
    return Path(out or study.out or f"runs/study-{Path(study.path).stem}")


def _check_out(out: Path) -> None:
    """Refuse an output folder that holds something other than a study (nothing is written there)."""
    if out.exists() and not out.is_dir():
        raise StudyError(f"study folder {out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / CELLS_DIR).is_dir() and not (out / STUDY_COPY).is_file():
        raise StudyError(f"{out} is not empty and holds no study (no {CELLS_DIR}/ folder); choose another --out")


def dry_run(study: Study, out: Path, jobs: int) -> int:
    from zotune.study_cell import cell_folder, is_done

    rows, totals = study_cost(study, study.cells)
    done = sum(is_done(cell_folder(out, c)) for c in study.cells)
    width = max(len(r["id"]) for r in rows)
    print(f"{'cell':<{width}}  {'kind':<9}{'fwd passes':>12}{'ex-forwards':>13}{'est. min':>10}")
    for r in rows:
        minutes = "-" if r["seconds"] is None else f"{r['seconds'] / 60:.1f}"
        print(f"{r['id']:<{width}}  {r['kind']:<9}{r['forward_passes']:>12,}{r['example_forwards']:>13,}{minutes:>10}")
    print(f"\n{totals['cells']} cells ({done} already finished in {out}); {totals['forward_passes']:,} training "
          f"forward passes; {totals['example_forwards']:,} example-forwards (training and evaluation)")
    if totals["seconds"] is not None:
        hours, threads = totals["seconds"] / 3600, threads_per_cell(jobs)
        measured = study.cost.get("threads")
        print(f"estimated compute: {hours:.2f} cell-hours at the rates of the file's `cost:`"
              + (f" (measured with {measured:g} thread(s) per cell)" if measured else "")
              + f"; with --jobs {jobs} ({threads} thread(s) per cell): about {hours / jobs:.2f} hours")
        if measured and measured != threads:
            print(f"note: --jobs {jobs} gives each cell {threads} thread(s), not the {measured:g} the rates were "
                  "measured with; the estimate is off by that difference")
    else:
        print("no time estimate: give `cost: {s_per_example_forward: {TASK: seconds}}` in the study file")
    return 0


def report(study: Study, out: Path, command: str, page: str | None = None) -> int:
    """Write results.csv/json, plots and report.md (and copy them to ``page``); 1 if a cell failed or
    the sanity check failed."""
    table = build_table(study, out)
    write_table(table, out)
    plots = write_plots(table, out)
    path = write_report(study, table, out, command, plots)
    failed = [r for r in table["rows"] if r["status"] == "failed"]
    sanity = table["sanity"]
    print(f"wrote {out / 'results.csv'}, {out / 'results.json'}, {len(plots)} plot(s) and {path}")
    if page:
        print(f"published {publish(path, plots, Path(page))} and its plots")
    if sanity is not None and sanity.get("agree") is False:
        print(f"SANITY FAILED: textbook MeZO {sanity['textbook']['final_dev']:.4f} vs zotune MeZO "
              f"{sanity['zotune']['final_dev']:.4f} final dev (tolerance {sanity['tolerance']:.4f})", file=sys.stderr)
    if failed:
        print(f"{len(failed)} cell(s) failed: see the report's list (rerun to retry them)", file=sys.stderr)
    return 1 if failed or (sanity is not None and sanity.get("agree") is False) else 0


def run_study_command(args: argparse.Namespace) -> int:
    """``zotune bench study``; returns the exit code (see the module docstring)."""
    try:
        if not args.study_file:
            raise StudyError("zotune bench study needs the study file: zotune bench study CONFIG.yaml "
                             "(examples in configs/study/)")
        if args.jobs < 1 or (args.cell_threads is not None and args.cell_threads < 1):
            raise StudyError(f"--jobs and --cell-threads must be >= 1 (got {args.jobs}, {args.cell_threads})")
        study = read_study(args.study_file)
        out = study_out(study, args.out)
        _check_out(out)
        if not args.report_only:
            check_data(study)
        if args.dry_run:
            return dry_run(study, out, args.jobs)
        command = f"zotune bench study {args.study_file} --out {out} --jobs {args.jobs}" + (
            f" --cell-threads {args.cell_threads}" if args.cell_threads else "") + (
            " --in-process" if args.in_process else "")
        if args.report_only:
            if not (out / CELLS_DIR).is_dir():
                raise StudyError(f"{out} holds no study cells yet; run the study first (without --report-only)")
            ran = out / COMMAND_FILE  # the report names the command that ran the cells
            return report(study, out, ran.read_text(encoding="utf-8").strip() if ran.is_file() else command,
                          args.publish)
        out.mkdir(parents=True, exist_ok=True)
        with locked(out / ".study.lock", f"study folder {out}"):
            atomic_write(out / STUDY_COPY, lambda p: shutil.copyfile(args.study_file, p))
            atomic_write(out / COMMAND_FILE, lambda p: p.write_text(command + "\n", encoding="utf-8"))
            write_cells(out, study.cells)
            code = run_cells(out, study.cells, jobs=args.jobs, in_process=args.in_process, threads=args.cell_threads)
            result = report(study, out, command, args.publish)
        return code or result
    except (StudyError, RuntimeError) as e:
        print(f"zotune: error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zotune.study", description=__doc__.split("\n\n")[0])
    add_study_arguments(parser)
    return run_study_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
