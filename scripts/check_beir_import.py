"""Import the staged BEIR sets, check row counts against the files, export back and compare.

For each set (default: scifact, cranfield, cisi under ../shared/data relative to the repo):
`densekit import format=beir`, then row counts vs the files (and vs the published scifact
numbers), then `densekit export format=beir` and a value-by-value comparison of corpus, queries
and every qrels split with the originals (also reports which files come back byte-identical).

    python scripts/check_beir_import.py
    python scripts/check_beir_import.py /path/to/beir-sets --sets scifact
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {"scifact": {"corpus": 5183, "queries": 1109, "qrels/test": 339, "qrels/train": 919}}


def read_jsonl(path: Path, keys: tuple[str, ...]) -> dict:
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                obj = json.loads(line)
                out[str(obj["_id"])] = tuple(obj.get(k) or "" for k in keys)
    return out


def read_qrels(path: Path) -> list[tuple[str, str, int]]:
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [(q, p, int(s)) for q, p, s in (ln.split("\t") for ln in lines if ln.strip())]


def check(src: Path, work: Path) -> bool:
    from densekit.artifacts import read_manifest
    from densekit.config import ExportConfig, ImportConfig
    from densekit.data.exporter import export_data
    from densekit.data.importer import import_data

    t = time.monotonic()
    import_data(ImportConfig(format="beir", path=str(src), output=str(work / "tables")))
    secs = time.monotonic() - t
    manifest = read_manifest(work / "tables")
    splits = sorted(p.stem for p in (src / "qrels").glob("*.tsv"))
    orig = {
        "corpus": read_jsonl(src / "corpus.jsonl", ("title", "text")),
        "queries": read_jsonl(src / "queries.jsonl", ("text",)),
        **{f"qrels/{s}": read_qrels(src / "qrels" / f"{s}.tsv") for s in splits},
    }
    ok = True
    print(f"\n{src.name}: imported in {secs:.1f} s -> {work / 'tables'}")
    for name, rows in orig.items():
        got = manifest["tables"][name]
        want = EXPECTED.get(src.name, {}).get(name)
        flag = "ok" if got == len(rows) and (want is None or want == got) else "MISMATCH"
        ok &= flag == "ok"
        extra = f" (published: {want:,})" if want is not None else ""
        print(f"  {name:<12} file {len(rows):>6,} rows, table {got:>6,}{extra}  {flag}")
    export_data(ExportConfig(format="beir", input=str(work / "tables"), output=str(work / "beir")))
    back = {
        "corpus": read_jsonl(work / "beir" / "corpus.jsonl", ("title", "text")),
        "queries": read_jsonl(work / "beir" / "queries.jsonl", ("text",)),
        **{f"qrels/{s}": read_qrels(work / "beir" / "qrels" / f"{s}.tsv") for s in splits},
    }
    for name in orig:
        same = back[name] == orig[name]
        ok &= same
        f = {"corpus": "corpus.jsonl", "queries": "queries.jsonl"}.get(name, f"{name}.tsv")
        identical = (work / "beir" / f).read_bytes() == (src / f).read_bytes()
        print(f"  round trip {name:<12} values {'equal' if same else 'DIFFER'}; file "
              f"{'byte-identical' if identical else 'differs in bytes (metadata not kept)'}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # ../shared/data beside the repo (main checkout); from a worktree under wt/, one level further up.
    default = next((p for p in (ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data") if p.is_dir()),
                   ROOT.parent / "shared" / "data")
    ap.add_argument("data", nargs="?", default=str(default), help="folder of BEIR sets (default ../shared/data)")
    ap.add_argument("--sets", nargs="+", default=["scifact", "cranfield", "cisi"])
    ap.add_argument("--keep", default=None, help="write the tables here and keep them")
    args = ap.parse_args()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="densekit-beir-check-"))
    try:
        results = {s: check(Path(args.data) / s, base / s) for s in args.sets}
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print("\n" + ", ".join(f"{s}: {'OK' if r else 'FAILED'}" for s, r in results.items()))
    sys.exit(0 if all(results.values()) else 1)


if __name__ == "__main__":
    main()
