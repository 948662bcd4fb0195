"""What `teacher_cache` saves: a train config with an online frozen teacher (LEAD's), run with the
teacher's embeddings read from the cache against the same run computing them, side by side.

    python bench/teacher_cache.py [--config configs/train/real/lead.yaml] [--steps 12 --interval 4] [key=value ...]

Run it where the config's relative paths resolve (for the real-tier LEAD config: after
`densekit run configs/methods/real/lead.yaml`, in the same folder). First a run with
`teacher_cache` computes and keeps the teacher's embeddings of every batch (2 CPUs). Then two runs
of the same batches AT THE SAME TIME, one Ray Train worker of 1 CPU each on a 2-CPU local Ray, so
both see the same load: one computes the teacher as without a cache, one reads it (the faster,
it runs twice the steps, so the machine stays shared until the other ends). Each reports
queries/s per interval between checkpoints (reading, collating, tokenising, forward, backward,
optimizer; no dev evaluation); the first interval (start-up) is dropped, and only intervals
inside the time both ran are compared. Printed: both
throughputs, the ratio, the reading run's count of batches read and computed (all read, none
computed), and the largest difference between the two runs' losses (the cache changes nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cmd(config: str, extra: list[str], args, out: Path, cpus: int, cache: Path | None, steps: int) -> list[str]:
    return [
        sys.executable, "-m", "densekit.cli", "train", config, *extra,
        f"optim.max_steps={steps}", f"checkpoint_every={args.interval}", "keep_checkpoints=1",
        "eval.every=0", "resources.num_workers=1", f"resources.cpus_per_worker={cpus}", f"output={out}",
        *([f"teacher_cache={cache}"] if cache else []),
    ]  # fmt: skip


def _batch_size(out: Path) -> int:
    import yaml

    return int(yaml.safe_load((out / "_config.yaml").read_text())["optim"]["batch_size"])


def _rates(rows: list[dict]) -> str:
    return ", ".join(f"{r['queries_per_s']:.2f}" for r in rows)


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/train/real/lead.yaml")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--interval", type=int, default=4, help="steps between checkpoints (timed intervals)")
    ap.add_argument("--workdir", default=None)
    args, extra = ap.parse_known_args(argv)
    if args.steps % args.interval or args.steps // args.interval < 2:
        ap.error("--steps must be a multiple of --interval, at least two intervals")

    import ray

    root = Path(args.workdir or tempfile.mkdtemp(prefix="densekit-bench-cache-"))
    cache = root / "cache"
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    try:
        # The reading run is faster: it runs twice the steps, so that it still runs, and the two
        # share the machine, until the computing run ends; only intervals of both inside the
        # time both ran are compared.
        longer = 2 * args.steps
        subprocess.run(_cmd(args.config, extra, args, root / "fill", 2, cache, longer), env=env, check=True)
        runs = {
            "computed": subprocess.Popen(_cmd(args.config, extra, args, root / "computed", 1, None, args.steps), env=env),
            "read": subprocess.Popen(_cmd(args.config, extra, args, root / "read", 1, cache, longer), env=env),
        }
        for name, proc in runs.items():
            if proc.wait() != 0:
                raise SystemExit(f"the '{name}' run failed (exit {proc.returncode})")
    finally:
        ray.shutdown()

    hist = {name: _history(root / name) for name in ("computed", "read")}
    batch = _batch_size(root / "computed")
    spans = {name: [(r["time"] - args.interval * batch / r["queries_per_s"], r["time"], r) for r in h[1:]]
             for name, h in hist.items()}  # fmt: skip
    both = (max(s[0][0] for s in spans.values()), min(s[-1][1] for s in spans.values()))
    inside = {name: [r for t0, t1, r in s if t0 >= both[0] - 1e-6 and t1 <= both[1] + 1e-6] for name, s in spans.items()}
    if not all(inside.values()):
        raise SystemExit("no interval of each run lies inside the time both ran: use more --steps")
    qps = {name: statistics.median(r["queries_per_s"] for r in rows) for name, rows in inside.items()}
    last = hist["read"][-1]
    diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(hist["computed"], hist["read"]))
    print(f"{args.config} {' '.join(extra)}: both runs at once, 1 CPU each; intervals of {args.interval} steps "
          f"inside the {both[1] - both[0]:.0f} s both ran (start-up intervals dropped)")  # fmt: skip
    for name, rows in inside.items():
        print(f"  {name:9s} steps {', '.join(str(r['step']) for r in rows)}: "
              f"{_rates(rows)} queries/s")  # fmt: skip
    print(f"median: computing the teacher {qps['computed']:.2f} queries/s, reading it {qps['read']:.2f} queries/s; "
          f"ratio read/computed {qps['read'] / qps['computed']:.2f}x")  # fmt: skip
    print(f"reading run: {last['teacher_cache_read']:.0f} tower batches read, {last['teacher_cache_computed']:.0f} computed; "
          f"largest loss difference between the runs {diff:.2e}; cache {sum(p.stat().st_size for p in cache.rglob('*.pt')) / 2**20:.1f} MiB")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
