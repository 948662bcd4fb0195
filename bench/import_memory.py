"""Peak memory of `densekit import` on a multi-GB MS MARCO documents TSV vs a 10x smaller one.

Writes a synthetic msmarco-docs.tsv (docid<TAB>url<TAB>title<TAB>body, ~7 KB bodies like the real
3.2M-document file) of `--gb` GB and a 10x smaller one in a temp dir, imports each in its own
subprocess and prints rows/s and peak RSS (ru_maxrss of the child). Streaming means the two peaks
are about equal: the ratio, measured in the same run, is the figure to watch.

    python bench/import_memory.py            # 3 GB vs 0.3 GB
    python bench/import_memory.py --gb 2 --keep /data/tmp/bench
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec, so a child forked from a big parent would
# report the parent's size; VmHWM belongs to the new address space.
PEAK = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024"

CHILD = f"""
import json, sys, time
import pyarrow as pa
from densekit.config import ImportConfig
from densekit.data.importer import import_data
from densekit.artifacts import read_manifest
path, out = sys.argv[1], sys.argv[2]
t = time.monotonic()
import_data(ImportConfig(format="msmarco_docs", path=path, output=out))
secs = time.monotonic() - t
print(json.dumps({{"seconds": secs, "rows": read_manifest(out)["rows"],
                  "peak_rss_mb": {PEAK},
                  "arrow_peak_mb": pa.default_memory_pool().max_memory() / 2**20}}))
"""

BASELINE = f"""
import json
import pyarrow, numpy, pandas, densekit.data.importer
print(json.dumps({{"peak_rss_mb": {PEAK}}}))
"""


def write_docs(big: Path, small: Path, gb: float, ratio: int, seed: int = 0) -> tuple[int, int]:
    """Write ~`gb` GB of documents to `big`; its first 1/`ratio` also to `small`. Returns row counts."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, rng.integers(2, 11))) for _ in range(50_000)]
    # A ~25 MB pool of random text; each body is a random ~7 KB window of it (cheap, and varied
    # enough that Parquet cannot compress the corpus away).
    pool = " ".join(rng.choice(vocab, 4_000_000, p=_zipf(len(vocab))).tolist())
    target = int(gb * 1e9)
    n = 0
    written = 0
    small_target = target // ratio
    with open(big, "w") as fb, open(small, "w") as fs:
        while written < target:
            lines = []
            for _ in range(1000):
                size = int(rng.integers(2_000, 12_000))
                start = int(rng.integers(0, len(pool) - size))
                body = pool[start : start + size]
                title = pool[start + size : start + size + 60].strip()
                lines.append(f"D{n}\thttp://example.com/{n}\t{title}\t{body}\n")
                n += 1
            chunk = "".join(lines)
            fb.write(chunk)
            if written < small_target:
                fs.write(chunk)
                n_small = n
            written += len(chunk)
    return n, n_small


def _zipf(n: int) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1)
    return p / p.sum()


def run_child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"child failed ({out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=3.0, help="size of the big input in GB (1e9 bytes)")
    ap.add_argument("--ratio", type=int, default=10, help="the small input is this many times smaller")
    ap.add_argument("--keep", default=None, help="work here and keep the files (default: a temp dir, removed)")
    args = ap.parse_args()

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="densekit-bench-import-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        big, small = work / "docs-big.tsv", work / "docs-small.tsv"
        t = time.monotonic()
        n_big, n_small = write_docs(big, small, args.gb, args.ratio)
        print(f"wrote {big.stat().st_size / 1e9:.2f} GB ({n_big:,} docs) and {small.stat().st_size / 1e9:.2f} GB "
              f"({n_small:,} docs) in {time.monotonic() - t:.0f} s")
        base = run_child(BASELINE)
        res = {}
        for name, path in (("small", small), ("big", big)):
            res[name] = run_child(CHILD, str(path), str(work / f"out-{name}"))
            res[name]["bytes"] = path.stat().st_size
            shutil.rmtree(work / f"out-{name}", ignore_errors=True)
        print(f"\nbaseline (python + pyarrow + densekit imported): peak RSS {base['peak_rss_mb']:.0f} MB")
        print(f"{'input':>8} {'GB':>6} {'rows':>10} {'s':>7} {'rows/s':>8} {'MB/s':>6} {'peak RSS MB':>12} {'Arrow peak MB':>14}")
        for name, r in res.items():
            print(f"{name:>8} {r['bytes'] / 1e9:6.2f} {r['rows']:10,} {r['seconds']:7.1f} {r['rows'] / r['seconds']:8,.0f} "
                  f"{r['bytes'] / 1e6 / r['seconds']:6.1f} {r['peak_rss_mb']:12.0f} {r['arrow_peak_mb']:14.0f}")
        ratio = res["big"]["peak_rss_mb"] / res["small"]["peak_rss_mb"]
        print(f"\ninput {res['big']['bytes'] / res['small']['bytes']:.1f}x bigger -> peak RSS {ratio:.2f}x "
              f"({res['big']['peak_rss_mb'] - res['small']['peak_rss_mb']:+.0f} MB)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("DENSEKIT_LOG_LEVEL", "WARNING")
    main()
