"""Running a study's cells: in order, ``jobs`` at a time, each in its own process.

Each cell is ``python -m zotune.study_cell <out>/cells/<id>`` with ``OMP_NUM_THREADS`` = cores /
jobs (the machine shared out, not oversubscribed), its output in the cell's ``cell.log``. A finished
cell (``results.json``) is never started again; a stopped one is continued. A failing cell leaves
``error.json`` and the others go on. SIGINT or SIGTERM to the study is passed once to every running
cell (each finishes its step, writes a checkpoint and exits; a second signal stops them at once),
no new cell starts, and the study exits with 128 + the signal's number: finished cells are intact
and the rest continue on the next run. Cells run in their own session, so a terminal's Ctrl-C reaches
them only through the study, once.

Two locks keep two writers out of one folder: the study's ``.study.lock`` (a second study on the
same --out is refused) and each cell's ``.lock`` (a cell left running by a killed study is not
started twice).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from zotune.run_folder import write_json
from zotune.signals import install as install_signals
from zotune.study_cell import CELL_FILE, ERROR_FILE, LOG_FILE, cell_folder, is_done, run_cell
from zotune.study_spec import Cell

BUSY = 75  # a cell's exit code when another process holds its lock


def write_cells(out: Path, cells: list[Cell]) -> None:
    """Create each cell's folder with its ``cell.json`` (rewritten only when it differs)."""
    for cell in cells:
        folder = cell_folder(out, cell)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / CELL_FILE
        data = cell.to_dict()
        try:
            same = json.loads(path.read_text(encoding="utf-8")) == json.loads(json.dumps(data))
        except (OSError, ValueError):
            same = False
        if not same:
            write_json(path, data)


@contextmanager
def locked(path: Path, what: str):
    """An exclusive lock on ``path`` for the block, or a RuntimeError saying who holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{what} is in use by another process (lock {path}); wait for it to finish, "
                               "or stop it first") from None
        yield
    finally:
        os.close(fd)


def run_locked_cell(folder: Path) -> int:
    """``run_cell`` under the cell's lock; ``BUSY`` when another process is running it."""
    try:
        with locked(Path(folder) / ".lock", f"cell {Path(folder).name}"):
            return run_cell(folder)
    except RuntimeError as e:
        print(f"zotune study: {e}", file=sys.stderr, flush=True)
        return BUSY


def threads_per_cell(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(jobs, 1))


def _say(msg: str) -> None:
    print(f"zotune study: {msg}", file=sys.stderr, flush=True)


def _record_crash(folder: Path, code: int) -> None:
    """A cell process that died without writing ``error.json`` (killed, out of memory): record it,
    with the end of its log."""
    if (folder / ERROR_FILE).is_file():
        return
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    try:
        tail = (folder / LOG_FILE).read_text(encoding="utf-8", errors="replace")[-2000:]
    except OSError:
        tail = ""
    write_json(folder / ERROR_FILE, {"error": f"the cell's process {how} (see {LOG_FILE})", "log_tail": tail})


class _Signals:
    """SIGINT/SIGTERM noted and passed to the running cells (each signal once to each cell)."""

    def __init__(self, procs: dict):
        self.procs, self.received = procs, None

    def _note(self, signum, frame) -> None:
        self.received = signum
        _say(f"{signal.Signals(signum).name}: passing it to {len(self.procs)} running cell(s) (each checkpoints and "
             "stops); finished cells are kept, the rest continue on the next run")
        for proc in list(self.procs):
            if proc.poll() is None:
                proc.send_signal(signum)

    def __enter__(self):
        self.restore = install_signals(self._note)
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def run_cells(out: Path, cells: list[Cell], jobs: int = 1, in_process: bool = False, threads: int | None = None) -> int:
    """Run the unfinished ``cells`` (their folders written by ``write_cells``); 0 when every one was
    run to its end (finished or failed), 128 + the signal's number when the study was stopped."""
    pending = [c for c in cells if not is_done(cell_folder(out, c))]
    _say(f"{len(cells) - len(pending)} of {len(cells)} cells already finished; {len(pending)} to run"
         + ("" if in_process or not pending else f", {jobs} at a time with {threads or threads_per_cell(jobs)} "
                                                  "thread(s) each"))
    if in_process:
        return _run_here(out, pending)
    return _run_processes(out, pending, jobs, threads or threads_per_cell(jobs))


def _outcome(folder: Path, code: int, seconds: float) -> str:
    if code == 0:
        return f"finished in {seconds:.0f} s"
    if code == BUSY:
        return "skipped: another process is running it"
    try:
        error = json.loads((folder / ERROR_FILE).read_text(encoding="utf-8"))["error"]
    except (OSError, ValueError, KeyError):
        error = f"exit code {code}"
    # 130/143: the cell's handler checkpointed and exited; -2/-15: the signal came before the cell
    # installed its handler (while it loaded), so it had nothing to save
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGINT, -signal.SIGTERM):
        return f"stopped by a signal (exit code {code}); it continues on the next run"
    return f"FAILED ({error})"


def _run_here(out: Path, pending: list[Cell]) -> int:
    """Every cell in this process, one after another (tests, debugging: no process start-up, but
    the peak memory of each is this process's so far)."""
    for i, cell in enumerate(pending, 1):
        folder = cell_folder(out, cell)
        t0 = time.perf_counter()
        try:
            code = run_locked_cell(folder)
        except KeyboardInterrupt:
            return 128 + signal.SIGINT
        _say(f"[{i}/{len(pending)}] {cell.id}: {_outcome(folder, code, time.perf_counter() - t0)}")
        if code > 128 and code != BUSY:
            return code
    return 0


def _run_processes(out: Path, pending: list[Cell], jobs: int, threads: int) -> int:
    # every thread pool sized to the cell's share, waiting passively: numba's (the noise kernels) and
    # spinning OpenMP pools left at their defaults made two cells run several times slower than one
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "NUMBA_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    procs: dict[subprocess.Popen, tuple[Cell, float]] = {}
    queue, done = list(pending), 0
    with _Signals(procs) as signals:
        while queue or procs:
            while queue and len(procs) < jobs and signals.received is None:
                cell = queue.pop(0)
                folder = cell_folder(out, cell)
                with open(folder / LOG_FILE, "a", encoding="utf-8") as log:
                    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start ({threads} threads)\n")
                    log.flush()
                    proc = subprocess.Popen([sys.executable, "-m", "zotune.study_cell", str(folder)], env=env,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
                procs[proc] = (cell, time.perf_counter())
            if signals.received is not None:
                queue.clear()
            time.sleep(0.2)
            for proc in [p for p in procs if p.poll() is not None]:
                cell, t0 = procs.pop(proc)
                folder = cell_folder(out, cell)
                if proc.returncode not in (0, BUSY) and signals.received is None:
                    _record_crash(folder, proc.returncode)
                done += 1
                outcome = _outcome(folder, proc.returncode, time.perf_counter() - t0)
                _say(f"[{done}/{len(pending)}] {cell.id}: {outcome}")
    return 128 + signals.received if signals.received is not None else 0
