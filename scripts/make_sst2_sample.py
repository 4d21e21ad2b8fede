"""Regenerate zotune/data/sst2/{train,dev,test}.tsv from a GLUE SST-2 folder.

Usage: python scripts/make_sst2_sample.py /path/to/SST-2 [--out zotune/data/sst2]

The protocol lives in ``zotune.tasks.sst2.draw_sample`` (de-duplicate, one draw with
random.Random(0), cut 1000/500/1000), so this script and ``load(split, data_dir=...)``
can never disagree. Prints the sha256 of each written file for PROVENANCE.md.
"""

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zotune.tasks.sst2 import draw_sample, read_tsv, write_tsv  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("glue_dir", help="folder holding GLUE SST-2 train.tsv")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "zotune" / "data" / "sst2"))
    args = ap.parse_args()
    src = Path(args.glue_dir) / "train.tsv"
    print(f"source {src} sha256 {hashlib.sha256(src.read_bytes()).hexdigest()}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, examples in draw_sample(read_tsv(src)).items():
        path = out / f"{split}.tsv"
        write_tsv(path, examples)
        pos = sum(ex.label for ex in examples)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{split}: {len(examples)} rows ({pos} positive) sha256 {digest}")


if __name__ == "__main__":
    main()
