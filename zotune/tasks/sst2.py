"""SST-2 sentiment, with MeZO's prompt ``"<sentence> It was"`` and verbalizers terrible/great.

GLUE's SST-2 dev set has only 872 rows and its test set has no labels, so - like MeZO -
all three splits (1000 train / 500 dev / 1000 test) are drawn from GLUE ``train.tsv`` with
a fixed seed. The draw is shipped in ``zotune/data/sst2`` so runs need no dataset download;
``data_dir`` reproduces it from a GLUE folder (see ``scripts/make_sst2_sample.py``).
"""

from __future__ import annotations

import functools
import random
from importlib import resources
from pathlib import Path

from .base import Example, Task

HEADER = "sentence\tlabel"
SPLIT_SIZES = {"train": 1000, "dev": 500, "test": 1000}
SEED = 0


class SST2Task(Task):
    name = "sst2"
    verbalizers = [" terrible", " great"]  # label 0 = negative, 1 = positive
    splits = ("train", "dev", "test", "glue-dev")

    def prompt(self, ex: Example) -> str:
        # GLUE text is lower-cased and tokenised with a trailing space; strip it so
        # the prompt reads "... movie . It was" with exactly one space.
        return f"{ex.text.strip()} It was"

    def load(self, split: str, data_dir: str | None = None) -> list[Example]:
        if split not in self.splits:
            raise ValueError(f"unknown SST-2 split {split!r}; known: {', '.join(self.splits)}")
        if data_dir is None:
            if split == "glue-dev":
                raise ValueError("split 'glue-dev' needs data_dir= a GLUE SST-2 folder holding dev.tsv")
            return read_tsv(resources.files("zotune") / "data" / "sst2" / f"{split}.tsv")
        folder = Path(data_dir).expanduser()
        if split == "glue-dev":
            return read_tsv(folder / "dev.tsv")
        return list(_sample_from(str((folder / "train.tsv").resolve()))[split])


def read_tsv(path) -> list[Example]:
    """Parse a GLUE-style ``sentence<TAB>label`` file, failing loudly on the first bad line."""
    fix = ("regenerate the packaged files with `python scripts/make_sst2_sample.py <GLUE SST-2 folder>` "
           "or point data_dir at an unmodified GLUE SST-2 folder")
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
        out.append(Example(text=sentence.strip(), label=int(label)))
    return out


def draw_sample(examples: list[Example], seed: int = SEED) -> dict[str, list[Example]]:
    """The protocol: drop repeated sentences (first one wins), then one seeded draw, cut into splits.

    A single ``random.sample`` without replacement makes the splits disjoint by construction;
    de-duplicating first keeps the same sentence from landing in both train and test.
    """
    seen, unique = set(), []
    for ex in examples:
        if ex.text not in seen:
            seen.add(ex.text)
            unique.append(ex)
    total = sum(SPLIT_SIZES.values())
    if len(unique) < total:
        raise ValueError(f"need {total} distinct sentences, found {len(unique)}")
    picked = random.Random(seed).sample(unique, total)
    out, start = {}, 0
    for split, size in SPLIT_SIZES.items():
        out[split] = picked[start:start + size]
        start += size
    return out


def write_tsv(path, examples: list[Example]) -> None:
    lines = [HEADER] + [f"{ex.text}\t{ex.label}" for ex in examples]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


@functools.lru_cache(maxsize=4)
def _sample_from(train_tsv: str) -> dict[str, tuple[Example, ...]]:
    # Cached: reading 67k rows takes ~0.1 s and load() is called once per split.
    return {k: tuple(v) for k, v in draw_sample(read_tsv(Path(train_tsv))).items()}
