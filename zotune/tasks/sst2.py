"""SST-2 sentiment, with MeZO's prompt ``"<sentence> It was"`` and verbalizers terrible/great.

GLUE's SST-2 dev set has only 872 rows and its test set has no labels, so - like MeZO -
all three splits (1000 train / 500 dev / 1000 test) are drawn from GLUE ``train.tsv`` with
a fixed seed. The draw is shipped in ``zotune/data/sst2`` so runs need no dataset download;
a data folder (``<root>/SST-2/train.tsv``, or a GLUE SST-2 folder itself) reproduces it
(see ``scripts/make_sst2_sample.py``).
"""

from __future__ import annotations

import functools
import random
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from .base import ClassificationTask, Example
from .data import data_root

HEADER = "sentence\tlabel"
SPLIT_SIZES = {"train": 1000, "dev": 500, "test": 1000}
SEED = 0


class Row(NamedTuple):
    """One GLUE row: the sentence (stripped) and its label (0 negative, 1 positive)."""
    text: str
    label: int


def packaged_file(split: str):
    """The packaged sample file of ``split`` (found through importlib.resources, as in a wheel)."""
    return resources.files("zotune") / "data" / "sst2" / f"{split}.tsv"


def prompt(text: str) -> str:
    # GLUE text is lower-cased and tokenised with a trailing space; strip it so
    # the prompt reads "... movie . It was" with exactly one space.
    return f"{text.strip()} It was"


class SST2Task(ClassificationTask):
    name = "sst2"
    verbalizers = (" terrible", " great")  # label 0 = negative, 1 = positive
    splits = ("train", "dev", "test", "glue-dev")

    def load(self, split: str, data_dir: str | None = None) -> list[Example]:
        self.check_split(split)
        return [self.example(prompt(r.text), r.label) for r in self.rows(split, data_dir)]

    def rows(self, split: str, data_dir: str | None = None) -> list[Row]:
        root = data_root(data_dir)
        if root is None:
            if split == "glue-dev":
                raise ValueError("split 'glue-dev' needs a data folder (--data-dir) holding SST-2/dev.tsv")
            return read_tsv(packaged_file(split))
        folder = root / "SST-2" if (root / "SST-2").is_dir() else root
        if data_dir is None and not (folder / "train.tsv").is_file() and split != "glue-dev":
            return read_tsv(packaged_file(split))  # $ZOTUNE_DATA without SST-2: the packaged sample
        if split == "glue-dev":
            return read_tsv(folder / "dev.tsv")
        return list(_sample_from(str((folder / "train.tsv").resolve()))[split])


def read_tsv(path) -> list[Row]:
    """Parse a GLUE-style ``sentence<TAB>label`` file, failing loudly on the first bad line."""
    fix = ("regenerate the packaged files with `python scripts/make_sst2_sample.py <GLUE SST-2 folder>` "
           "or point --data-dir at a folder holding an unmodified GLUE SST-2/train.tsv")
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, OSError) as e:
        raise FileNotFoundError(f"SST-2 file {path} not found or unreadable ({e}); {fix}") from e
    lines = text.splitlines()
    if not lines or lines[0] != HEADER:
        got = lines[0] if lines else "<empty file>"
        raise ValueError(f"{path}, line 1: header must be {HEADER!r}, got {got!r}; {fix}")
    out = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise ValueError(f"{path}, line {lineno}: expected 'sentence<TAB>label' (2 tab-separated fields), "
                             f"got {len(parts)} in {line[:80]!r}; {fix}")
        sentence, label = parts
        if label.strip() not in ("0", "1"):
            raise ValueError(f"{path}, line {lineno}: label must be 0 or 1, got {label!r}; {fix}")
        if not sentence.strip():
            raise ValueError(f"{path}, line {lineno}: empty sentence; {fix}")
        out.append(Row(text=sentence.strip(), label=int(label)))
    return out


def draw_sample(rows: list[Row], seed: int = SEED) -> dict[str, list[Row]]:
    """The protocol: drop repeated sentences (first one wins), then one seeded draw, cut into splits.

    A single ``random.sample`` without replacement makes the splits disjoint by construction;
    de-duplicating first keeps the same sentence from landing in both train and test.
    """
    seen, unique = set(), []
    for r in rows:
        if r.text not in seen:
            seen.add(r.text)
            unique.append(r)
    total = sum(SPLIT_SIZES.values())
    if len(unique) < total:
        raise ValueError(f"need {total} distinct sentences, found {len(unique)}")
    picked = random.Random(seed).sample(unique, total)
    out, start = {}, 0
    for split, size in SPLIT_SIZES.items():
        out[split] = picked[start:start + size]
        start += size
    return out


def write_tsv(path, rows: list[Row]) -> None:
    lines = [HEADER] + [f"{r.text}\t{r.label}" for r in rows]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


@functools.lru_cache(maxsize=4)
def _sample_from(train_tsv: str) -> dict[str, tuple[Row, ...]]:
    # Cached: reading 67k rows takes ~0.1 s and load() is called once per split.
    return {k: tuple(v) for k, v in draw_sample(read_tsv(Path(train_tsv))).items()}
