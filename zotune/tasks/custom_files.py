"""Rows of a user's data from JSONL, CSV and TSV files and from ``datasets`` objects, each row knowing
where it came from, so that any later complaint about it can name the file and line to fix.

Reading is strict: the first malformed line stops it with one message. A half-read data set would
train on whatever happened to parse and hide the problem in a worse accuracy.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import jsonl_objects

DATA_SUFFIXES = (".jsonl", ".csv", ".tsv")
SPLIT_FILE_STEMS = {"train": ("train",), "dev": ("dev", "validation"), "test": ("test",)}
JSONL_EXAMPLE = '{"text": "a fine film", "label": 1}'


@dataclass(frozen=True)
class Row:
    """One data row: its fields, the file (or data set) it came from, and where in it."""

    source: str
    where: str  # e.g. "data/train.jsonl, line 4" or "Dataset (train), row 4"
    values: dict[str, Any]


def is_data_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in DATA_SUFFIXES


def read_rows(path: str | Path) -> list[Row]:
    """All rows of a .jsonl/.csv/.tsv file; ValueError naming the file and line of the first bad one."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise ValueError(f"{path}: unsupported data file type {suffix or '(no suffix)'!r}; "
                         "use .jsonl (one JSON object per line), .csv or .tsv (a header line, then one row per line)")
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}; check the path (relative paths in the spec's files: "
                                "are relative to the folder of the --task file)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    rows = _jsonl(path, text) if suffix == ".jsonl" else _delimited(path, text, "\t" if suffix == ".tsv" else ",")
    if not rows:
        what = "no JSON lines" if suffix == ".jsonl" else "a header but no rows"
        raise ValueError(f"{path} is empty ({what}); add rows, e.g. "
                         + (JSONL_EXAMPLE if suffix == ".jsonl" else "a header line `text,label` then `a fine film,1`"))
    return rows


def _jsonl(path: Path, text: str) -> list[Row]:
    fix = f"each line must be one JSON object, e.g. {JSONL_EXAMPLE}"
    return [Row(str(path), f"{path}, line {lineno}", values) for lineno, values in jsonl_objects(path, text, fix)]


def _delimited(path: Path, text: str, delimiter: str) -> list[Row]:
    """CSV follows RFC 4180 (quoted fields may hold commas and newlines); TSV has no quoting, as in
    GLUE's files, so a stray quote in a sentence cannot swallow the lines after it."""
    kind = "TSV" if delimiter == "\t" else "CSV"
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    header: list[str] | None = None
    rows, last = [], 0
    try:
        for record in reader:
            first, last = last + 1, reader.line_num
            if not record:
                continue  # blank line
            if header is None:
                header = [h.strip() for h in record]
                _check_header(path, kind, header)
                continue
            if len(record) != len(header):
                fix = ("quote fields that contain commas, e.g. \"a, b\"" if kind == "CSV"
                       else "fields must not contain tabs")
                raise ValueError(f"{path}, line {first}: {len(record)} columns but the header (line 1) has "
                                 f"{len(header)}; {fix}")
            rows.append(Row(str(path), f"{path}, line {first}", dict(zip(header, record))))
    except csv.Error as e:
        raise ValueError(f"{path}, line {reader.line_num}: malformed {kind} ({e}); close the quoted field or "
                         "double the quote inside it (\"\")") from None
    return rows


def _check_header(path: Path, kind: str, header: list[str]) -> None:
    if any(not h for h in header):
        raise ValueError(f"{path}, line 1: the header has an empty column name ({header}); the first line of a "
                         f"{kind} file must name every column")
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise ValueError(f"{path}, line 1: the header names column(s) {', '.join(map(repr, dup))} twice; "
                         "give each column its own name")


# --------------------------------------------------------------------------- datasets objects and folders

def is_dataset(obj: Any) -> bool:
    """A ``datasets.Dataset`` or ``DatasetDict`` (checked without importing ``datasets`` when unused)."""
    return type(obj).__module__.startswith("datasets.") and type(obj).__name__ in ("Dataset", "DatasetDict")


def is_saved_dataset(folder: str | Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` (state.json) or ``DatasetDict.save_to_disk``."""
    folder = Path(folder)
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def load_saved_dataset(folder: str | Path):
    try:
        from datasets import load_from_disk
    except ImportError as e:  # pragma: no cover - datasets is a dependency
        raise ValueError(f"reading {folder} needs the `datasets` package: pip install datasets ({e})") from None
    try:
        return load_from_disk(str(folder))
    except Exception as e:  # datasets raises several types for a damaged folder
        raise ValueError(f"{folder}: cannot read this datasets folder ({type(e).__name__}: {e}); write it again "
                         "with Dataset.save_to_disk") from None


def dataset_splits(obj: Any, source: str) -> dict[str, list[Row]]:
    """Rows per split of a Dataset (all 'train') or DatasetDict (train, dev or validation, test)."""
    if type(obj).__name__ == "Dataset":
        return {"train": dataset_rows(obj, source, "train")}
    names = {split: [k for k in stems if k in obj] for split, stems in SPLIT_FILE_STEMS.items()}
    if not names["train"]:
        raise ValueError(f"{source}: the DatasetDict has splits {', '.join(obj)} but no 'train'; "
                         "name the training split 'train'")
    out = {}
    for split, found in names.items():
        if len(found) > 1:
            raise ValueError(f"{source}: the DatasetDict has both {found[0]!r} and {found[1]!r}; keep one")
        if found:
            out[split] = dataset_rows(obj[found[0]], source, found[0])
    return out


def dataset_rows(ds: Any, source: str, split: str) -> list[Row]:
    if len(ds) == 0:
        raise ValueError(f"{source} ({split}) has no rows; add rows to the data set")
    return [Row(source, f"{source} ({split}), row {i}", dict(values)) for i, values in enumerate(ds)]


def split_files_in(folder: Path) -> dict[str, Path]:
    """train/dev/test files of a data folder: ``train.jsonl``, ``dev.csv`` (or ``validation.csv``), ..."""
    found: dict[str, Path] = {}
    for split, stems in SPLIT_FILE_STEMS.items():
        hits = [folder / f"{stem}{suffix}" for stem in stems for suffix in DATA_SUFFIXES
                if (folder / f"{stem}{suffix}").is_file()]
        if len(hits) > 1:
            raise ValueError(f"{folder}: several {split} files ({', '.join(h.name for h in hits)}); keep one")
        if hits:
            found[split] = hits[0]
    if "train" not in found:
        present = sorted(p.name for p in folder.iterdir())[:10]
        raise ValueError(f"{folder}: no train file; a data folder holds train.jsonl (or .csv/.tsv) and optionally "
                         f"dev and test files, or was written by datasets' save_to_disk. It has: "
                         f"{', '.join(present) or 'nothing'}")
    return found
