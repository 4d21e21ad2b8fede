"""The benchmark tasks' shared loader: official files in a data folder, MeZO's split protocol.

A benchmark task names its folder and files and turns one official file into ``Example``s;
this class finds the files (``--data-dir`` or ``$ZOTUNE_DATA``), reads each once per process,
and cuts train / dev / test as MeZO does (see ``data.mezo_splits``); the validation file is used as
it is, so a test set smaller than 1000 is the whole official validation split.
"""

from __future__ import annotations

from pathlib import Path

from .base import Example, Task
from .data import SIZES, data_root, mezo_splits, task_file

_CACHE: dict[tuple[str, str, int], list[Example]] = {}


class BenchmarkTask(Task):
    folder: str = ""
    train_files: tuple[str, ...] = ("train.jsonl",)
    val_files: tuple[str, ...] = ("val.jsonl",)
    dev_size: int = SIZES["dev"]
    needs_train_file: bool = True  # False: without a train file, train/dev come from validation rows
    splits = ("train", "dev", "test")

    def read(self, path: Path) -> list[Example]:
        """Every example of one official file, in file order."""
        raise NotImplementedError

    def load(self, split: str, data_dir: str | None = None) -> list[Example]:
        self.check_split(split)
        val = self._read_cached(task_file(self.name, self.folder, self.val_files, data_dir))
        train = None
        if self.needs_train_file or self._has_train(data_dir):
            # identical rows repeated in a train file (RTE, WSC have a few) are drawn once, so
            # the same example never lands in both train and dev
            train = list(dict.fromkeys(self._read_cached(task_file(self.name, self.folder, self.train_files, data_dir))))
        return mezo_splits(train, val, dev_size=self.dev_size)[split]

    def _has_train(self, data_dir: str | None) -> bool:
        root = data_root(data_dir)
        return root is not None and any((root / self.folder / n).is_file() for n in self.train_files)

    def _read_cached(self, path: Path) -> list[Example]:
        key = (type(self).__name__, str(path.resolve()), path.stat().st_mtime_ns)
        if key not in _CACHE:
            examples = self.read(path)
            if not examples:
                raise ValueError(f"{path} holds no examples of task {self.name!r}; replace it with the official file")
            _CACHE[key] = examples
        return _CACHE[key]
