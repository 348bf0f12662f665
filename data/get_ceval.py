"""Fill an exam's folder in its published layout: C-Eval, CMMLU or CMExam, from the hub or an archive you downloaded.

    python data/get_ceval.py                              # C-Eval medical subjects from the hub (ceval/ceval-exam)
    python data/get_ceval.py --subjects all               # all 52 C-Eval subjects
    python data/get_ceval.py --zip ~/Downloads/ceval-exam.zip          # the official zip, no hub needed
    python data/get_ceval.py --benchmark cmmlu --subjects medical,general   # CMMLU from the hub (haonan-li/cmmlu)
    python data/get_ceval.py --benchmark cmmlu --zip cmmlu_v1_0_1.zip  # CMMLU's release archive
    python data/get_ceval.py --benchmark cmexam --source CMExam/data   # CMExam: the release's val.csv and test.csv

Layouts written (what benchmark/benchmark_ceval.py reads):
    C-Eval  data/benchmark/ceval-exam/{dev,val,test}/<subject>_<split>.csv
    CMMLU   data/benchmark/cmmlu/{dev,test}/<subject>.csv      (`,Question,A,B,C,D,Answer`)
    CMExam  data/benchmark/cmexam/{val,test}.csv               (Question,Options,Answer,Explanation,...)
C-Eval's zip: https://huggingface.co/datasets/ceval/ceval-exam/resolve/main/ceval-exam.zip; CMMLU's:
https://github.com/haonan-li/CMMLU (data/cmmlu_v1_0_1.zip); CMExam: https://github.com/williamliujl/CMExam (data/).
--source takes a folder or a zip. Existing files are only replaced with --overwrite (the repository ships small
team-written samples here). Every file is read back with the benchmark's reader: a malformed row stops with its
file:line, or with --skip_invalid is counted (and skipped when scoring).
"""

from __future__ import annotations

import argparse
import csv
import sys
import zipfile
from pathlib import Path

from medqwen.cli import fail
from medqwen.exams import get_exam
from medqwen.exams.base import ExamDataError, Skipped
from medqwen.exams.ceval import SPLIT_COLUMNS

DEFAULT_DIRS = {"ceval": "data/benchmark/ceval-exam", "cmmlu": "data/benchmark/cmmlu",
                "cmexam": "data/benchmark/cmexam"}
HUB = {"ceval": "ceval/ceval-exam", "cmmlu": "haonan-li/cmmlu"}


def wanted_files(benchmark: str, subjects: list[str]) -> list[tuple[str, str]]:
    """(path under the output folder, subject) for every file the exam's layout needs."""
    if benchmark == "ceval":
        return [(f"{split}/{s}_{split}.csv", s) for s in subjects for split in ("dev", "val", "test")]
    if benchmark == "cmmlu":
        return [(f"{split}/{s}.csv", s) for s in subjects for split in ("dev", "test")]
    return [("val.csv", "physician"), ("test.csv", "physician")]


def check(benchmark: str, out_dir: Path, rel: str, subject: str, skip_invalid: bool) -> int:
    """Read a written file back with the benchmark's reader; returns the malformed rows skipped."""
    exam, skipped = get_exam(benchmark), Skipped(skip_invalid)
    split = Path(rel).stem.rsplit("_", 1)[-1] if benchmark == "ceval" else Path(rel).parent.name or Path(rel).stem
    exam.load(out_dir, subject, split, skipped)
    for row in skipped.rows[:3]:
        print(f"  malformed (skipped when scoring with --skip_invalid): {row}")
    return len(skipped)


def from_archive(source: Path, benchmark: str, files: list[tuple[str, str]], out_dir: Path,
                 overwrite: bool) -> list[tuple[str, str]]:
    """Copy the wanted files out of a zip or folder, matched by their path's tail; returns those written."""
    if not source.exists():
        raise FileNotFoundError(f"{source} not found; download the exam's archive first (see this script's help)")
    if source.is_dir():
        names = {str(p.relative_to(source)): p for p in source.rglob("*.csv")}
        read = lambda name: names[name].read_bytes()  # noqa: E731
    else:
        zf = zipfile.ZipFile(source)
        names = {n: n for n in zf.namelist() if n.endswith(".csv") and "__MACOSX" not in n}
        read = lambda name: zf.read(names[name])  # noqa: E731
    written = []
    for rel, subject in files:
        hits = [n for n in names if n == rel or n.endswith("/" + rel)] or \
            [n for n in names if Path(n).name == Path(rel).name and benchmark == "ceval"]
        if not hits:
            raise FileNotFoundError(f"{source} has no {rel}: is this the {get_exam(benchmark).title} release?")
        path = out_dir / rel
        if path.exists() and not overwrite:
            print(f"keep {path} (exists; --overwrite replaces it)")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(read(sorted(hits, key=len)[0]))
        written.append((rel, subject))
    return written


def from_hub(benchmark: str, files: list[tuple[str, str]], out_dir: Path, overwrite: bool) -> list[tuple[str, str]]:
    """Download with `datasets` and write the published layout; returns the files written."""
    import datasets

    if benchmark not in HUB:
        raise ValueError("CMExam is not on the hub in its release layout: clone https://github.com/williamliujl/CMExam"
                         " and run: python data/get_ceval.py --benchmark cmexam --source CMExam/data")
    written, loaded = [], {}
    for rel, subject in files:
        path = out_dir / rel
        if path.exists() and not overwrite:
            print(f"keep {path} (exists; --overwrite replaces it)")
            continue
        if subject not in loaded:
            loaded[subject] = datasets.load_dataset(HUB[benchmark], subject)
        split = Path(rel).parent.name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            if benchmark == "ceval":
                writer.writerow(SPLIT_COLUMNS[split])
                for row in loaded[subject][split]:
                    writer.writerow([row.get(c) if row.get(c) is not None else "" for c in SPLIT_COLUMNS[split]])
            else:
                writer.writerow(["", "Question", "A", "B", "C", "D", "Answer"])
                for i, row in enumerate(loaded[subject][split]):
                    writer.writerow([i, *(row[c] for c in ("Question", "A", "B", "C", "D", "Answer"))])
        written.append((rel, subject))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", choices=sorted(DEFAULT_DIRS), default="ceval", help="which exam to fill")
    parser.add_argument("--subjects", default="medical",
                        help="comma-separated subjects or the exam's groups (medical, general, all); CMExam: ignored")
    parser.add_argument("--zip", "--source", dest="source", type=Path,
                        help="the exam's release downloaded by hand, a zip or a folder (no hub access needed)")
    parser.add_argument("--output_dir", "--output-dir", type=Path,
                        help="the exam's folder (default: data/benchmark/<ceval-exam|cmmlu|cmexam>)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing CSVs (e.g. the shipped sample)")
    parser.add_argument("--skip_invalid", action="store_true",
                        help="count malformed rows instead of stopping at the first (the benchmark then needs "
                             "--skip_invalid too)")
    args = parser.parse_args(argv)
    exam = get_exam(args.benchmark)
    out_dir = args.output_dir or Path(DEFAULT_DIRS[args.benchmark])
    subjects: list[str] = []
    for name in (s.strip() for s in args.subjects.split(",") if s.strip()):
        for subject in exam.groups.get(name, [name]):
            if subject not in exam.subjects:
                parser.error(f"unknown {exam.title} subject {subject!r}; groups: {', '.join(exam.groups)}")
            subjects += [subject] if subject not in subjects else []
    files = wanted_files(args.benchmark, subjects)
    try:
        if args.source:
            written = from_archive(args.source, args.benchmark, files, out_dir, args.overwrite)
        else:
            try:
                written = from_hub(args.benchmark, files, out_dir, args.overwrite)
            except Exception as err:  # offline, hub blocked, datasets missing: all end the same way for the user
                archive = {"ceval": "ceval-exam.zip", "cmmlu": "cmmlu_v1_0_1.zip", "cmexam": "CMExam/data"}
                fail(f"could not load {exam.title} from the hub ({err.__class__.__name__}: {err}).\n"
                     f"Download it by hand and run: python data/get_ceval.py --benchmark {args.benchmark} "
                     f"--source {archive[args.benchmark]}")
        bad = sum(check(args.benchmark, out_dir, rel, subject, args.skip_invalid) for rel, subject in written)
    except ExamDataError as err:
        fail(f"{err}\n(--skip_invalid counts malformed rows instead of stopping)")
    print(f"{len(written)} files written under {out_dir}/ ({exam.title}, {len(subjects) or 1} subjects)"
          + (f"; {bad} malformed rows counted" if bad else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
