"""Fill data/benchmark/ceval-exam/ with C-Eval in its released CSV layout ({dev,val,test}/<subject>_<split>.csv).

    python data/get_ceval.py                              # medical subjects from the hub (ceval/ceval-exam)
    python data/get_ceval.py --subjects all               # all 52 subjects
    python data/get_ceval.py --zip ~/Downloads/ceval-exam.zip   # the official zip, no hub needed

The official zip: https://huggingface.co/datasets/ceval/ceval-exam/resolve/main/ceval-exam.zip
Existing files are only replaced with --overwrite (the repository ships a small team-written sample here).
"""

from __future__ import annotations

import argparse
import csv
import sys
import zipfile
from pathlib import Path

from medqwen.ceval import SPLIT_COLUMNS, expand_subjects, read_csv_split

SPLITS = ("dev", "val", "test")


def from_hub(subjects: list[str], out_dir: Path, overwrite: bool) -> int:
    """Download with `datasets` and write the released CSV layout; returns files written."""
    import datasets

    written = 0
    for subject in subjects:
        dataset_dict = datasets.load_dataset("ceval/ceval-exam", subject)
        for split in SPLITS:
            path = out_dir / split / f"{subject}_{split}.csv"
            if path.exists() and not overwrite:
                print(f"keep {path} (exists; --overwrite replaces it)")
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            columns = SPLIT_COLUMNS[split]
            with path.open("w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(columns)
                for row in dataset_dict[split]:
                    writer.writerow([row.get(c, "") if row.get(c) is not None else "" for c in columns])
            read_csv_split(path, subject, split)  # what we wrote must read back
            written += 1
    return written


def from_zip(zip_path: Path, subjects: list[str], out_dir: Path, overwrite: bool) -> int:
    """Extract the subjects' CSVs from the official ceval-exam.zip; returns files written."""
    if not zip_path.is_file():
        raise FileNotFoundError(f"{zip_path} not found; download ceval-exam.zip first (see this script's docstring)")
    written = 0
    with zipfile.ZipFile(zip_path) as zf:
        names = {Path(n).name: n for n in zf.namelist() if n.endswith(".csv")}
        for subject in subjects:
            for split in SPLITS:
                name = f"{subject}_{split}.csv"
                if name not in names:
                    raise FileNotFoundError(f"{zip_path} has no {name}: is this the C-Eval zip?")
                path = out_dir / split / name
                if path.exists() and not overwrite:
                    print(f"keep {path} (exists; --overwrite replaces it)")
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(zf.read(names[name]))
                read_csv_split(path, subject, split)
                written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", default="medical", help="comma-separated subjects or groups (medical, all)")
    parser.add_argument("--zip", type=Path, help="official ceval-exam.zip downloaded by hand (no hub access needed)")
    parser.add_argument("--output_dir", "--output-dir", type=Path, default=Path("data/benchmark/ceval-exam"))
    parser.add_argument("--overwrite", action="store_true", help="replace existing CSVs (e.g. the shipped sample)")
    args = parser.parse_args(argv)
    subjects = expand_subjects([s for s in args.subjects.split(",") if s.strip()])
    if args.zip:
        n = from_zip(args.zip, subjects, args.output_dir, args.overwrite)
    else:
        try:
            n = from_hub(subjects, args.output_dir, args.overwrite)
        except Exception as err:  # offline, hub blocked, datasets missing: all end the same way for the user
            sys.exit(f"error: could not load ceval/ceval-exam from the hub ({err.__class__.__name__}: {err}).\n"
                     f"Download ceval-exam.zip by hand and run: python data/get_ceval.py --zip ceval-exam.zip")
    print(f"{n} files written under {args.output_dir}/ ({len(subjects)} subjects)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
