"""`densekit <step> CONFIG [key=value ...]`: one entry point for every step, locally or as a Ray job.

Steps are listed once, in STEPS. Their modules are imported only when the step runs, so
`densekit --help` stays fast and never imports torch or Ray.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import signal
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

from densekit import config as config_module
from densekit import stopping
from densekit.config import describe_fields, load_config
from densekit.errors import DensekitError, root_cause
from densekit.logs import setup_logging

logger = logging.getLogger("densekit")
VERBOSE_FLAGS = ("-v", "--verbose")


@dataclass(frozen=True)
class Step:
    """One CLI verb: its summary, its config class (by name in densekit.config) and its function.

    `config` None means the step parses its own arguments: `run` is called with the argv list.
    """

    summary: str
    run: str  # "module:function"
    config: str | None = None  # class name in densekit.config

    def function(self) -> Callable:
        """The step's function; a step with a config class holds its output's lock while it runs
        (densekit.artifacts.output_lock: one writer per output, however it was started)."""
        module, _, name = self.run.partition(":")
        fn = getattr(importlib.import_module(module), name)
        if self.config is None:
            return fn

        @functools.wraps(fn)
        def locked(cfg, *args, **kwargs):
            from densekit.artifacts import output_lock

            with output_lock(getattr(cfg, "output", None), name):
                return fn(cfg, *args, **kwargs)

        return locked

    def config_cls(self) -> type | None:
        return getattr(config_module, self.config) if self.config else None


STEPS: dict[str, Step] = {
    "generate": Step(
        "write a generated retrieval task (corpus, queries, train/dev qrels)",
        "densekit.data.synthetic:generate",
        "GenerateConfig",
    ),
    "import": Step(
        "import MS MARCO / BEIR / TREC / DPR / PROD / Margin-MSE files into Parquet tables",
        "densekit.data.importer:import_data",
        "ImportConfig",
    ),
    "export": Step(
        "export tables to TREC run/qrels, the Margin-MSE teacher TSV, MS MARCO TSV or BEIR",
        "densekit.data.exporter:export_data",
        "ExportConfig",
    ),
    "trainset": Step(
        "training / dev splits of a labelled collection, plus title and sentence pseudo-queries",
        "densekit.data.trainset:trainset",
        "TrainsetConfig",
    ),
    # --- retrieval -----------------------------------------------------------------------------
    "encode": Step(
        "encode a corpus or query table into embedding shards (Ray Data model actors, resumable)",
        "densekit.pipelines.encode:encode",
        "EncodeConfig",
    ),
    "index": Step(
        "build a sharded FAISS index (Flat, IVF, PQ, HNSW) from embedding shards, one Ray task each",
        "densekit.pipelines.index:index",
        "IndexConfig",
    ),
    "search": Step(
        "search a sharded index from Ray actors (exact top-k merge); write a run table and TREC file",
        "densekit.pipelines.search:search",
        "SearchConfig",
    ),
    "mine": Step(
        "hard negatives from a run (every judged-relevant document removed) -> training groups",
        "densekit.pipelines.mine:mine",
        "MineConfig",
    ),
    "score": Step(
        "teacher scores for training groups (cross-encoder, ColBERT, bi-encoder; ensemble mean)",
        "densekit.pipelines.score:score",
        "ScoreConfig",
    ),
    "rerank": Step(
        "rerank each query's top candidates of a run with a cross-encoder (or another teacher) -> a run",
        "densekit.pipelines.rerank:rerank",
        "RerankConfig",
    ),
    "evaluate": Step(
        "MRR@k, nDCG@k, Recall@k, MAP of a run (pytrec_eval); paired significance tests vs a baseline",
        "densekit.pipelines.evaluate:evaluate",
        "EvaluateConfig",
    ),
    "train": Step(
        "train or distil a student on Ray Train (DDP), resumable, with periodic evaluation",
        "densekit.train:train",
        "TrainConfig",
    ),
    "tune": Step(
        "search a train config with Ray Tune (one train run per trial, ASHA); write the best config and model",
        "densekit.tune:tune",
        "TuneConfig",
    ),
    # --- methods -----------------------------------------------------------------------------
    "build": Step(
        "build a small randomly initialised encoder offline (tokenizer trained on tables or copied)",
        "densekit.pipelines.build:build",
        "BuildConfig",
    ),
    "select": Step(
        "PROD's data-progressive selection: queries the teacher ranks right and the student ranks 2-15",
        "densekit.pipelines.select:select",
        "SelectConfig",
    ),
    "speed": Step(
        "encoding throughput of several models on the same texts, and the speed-up against the first",
        "densekit.pipelines.speed:speed",
        "SpeedConfig",
    ),
    "run": Step(
        "run a multi-stage method (configs/methods/*.yaml), skipping finished stages",
        "densekit.methods:run",
    ),
    # --- reports and the quickstart --------------------------------------------------------------
    "report": Step(
        "report of a run, train or tune folder: quality, query speed, stage times (Markdown + PNG)",
        "densekit.report:report",
    ),
    "quickstart": Step(
        "train a teacher, distil a student, index and evaluate on a generated task, then report",
        "densekit.quickstart:quickstart",
    ),
}


def _usage() -> str:
    width = max(len(s) for s in STEPS)
    lines = [
        "usage: densekit [-v] <step> [CONFIG.yaml] [key=value ...]",
        "       densekit <step> --help      list the step's config keys",
        "       -v, --verbose               also show Ray's, Hugging Face's and workers' output",
        "",
        "Runs locally (Ray starts by itself) or inside `ray job submit` (jobs/<step>.py).",
        "",
        "steps:",
    ]
    lines += [f"  {name:<{width}}  {step.summary}" for name, step in STEPS.items()]
    return "\n".join(lines)


def _step_help(name: str, step: Step) -> str:
    cls = step.config_cls()
    out = [f"usage: densekit {name} [CONFIG.yaml] [key=value ...]", "", step.summary, ""]
    if cls is None:
        fn = step.function()
        out.append(textwrap.dedent(fn.__doc__ or "").strip())
        return "\n".join(out)
    if cls.__doc__:
        out += [cls.__doc__.strip().splitlines()[0], ""]
    out.append("config keys (dotted; set in the YAML or as key=value):")
    rows = describe_fields(cls)
    width = min(max(len(r[0]) for r in rows), 36)
    for key, typ, default, help_ in rows:
        if typ and not default and not help_.strip():
            continue
        meta = f"[{typ}{', default ' + default if default else ''}]"
        out.append(f"  {key:<{width}}  {help_} {meta}".rstrip())
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `densekit` command and of every jobs/<step>.py script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # -v / --verbose (anywhere): Ray's, Hugging Face's and the workers' own output too.
    verbose = any(a in VERBOSE_FLAGS for a in argv)
    argv = [a for a in argv if a not in VERBOSE_FLAGS]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("--version", "-V"):
        from densekit import __version__

        print(f"densekit {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    step = STEPS.get(name)
    if step is None:
        import difflib

        close = difflib.get_close_matches(name, list(STEPS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        print(f"densekit: unknown step '{name}'.{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    if any(a in ("-h", "--help") for a in rest):
        print(_step_help(name, step))
        return 0
    setup_logging(verbose_=True if verbose else None)
    stopping.install()
    # Which copy runs matters on a cluster: under `ray job submit` it is the one shipped by the
    # runtime env's py_modules (.../runtime_resources/py_modules_files/...), not an installed one.
    import densekit

    logger.info(
        "densekit %s from %s: %s", densekit.__version__, os.path.dirname(densekit.__file__), name
    )
    try:
        cls = step.config_cls()
        if cls is None:
            result = step.function()(rest)
        else:
            path = None
            if rest and "=" not in rest[0] and not rest[0].startswith("~"):
                path, rest = rest[0], rest[1:]
            cfg = load_config(cls, path, rest)
            from densekit.artifacts import check_output_paths

            check_output_paths(cfg)  # an output on an input destroys it: refuse before any work
            result = step.function()(cfg)
    except KeyboardInterrupt:
        return _stopped("interrupted (SIGINT)", 130)
    except SystemExit as e:
        # SIGTERM: our handler, or ray.init's (sys.exit(15)) once Ray is up in this process.
        if e.code != signal.SIGTERM:
            raise
        return _stopped("terminated (SIGTERM)", 143)
    except Exception as e:
        # A user's problem raised inside a Ray task, actor or Train worker arrives wrapped (with
        # the remote traceback in its text): print the problem itself.
        cause = root_cause(e)
        if not isinstance(cause, DensekitError):
            raise
        logger.error("%s", cause)
        return 2
    return result if isinstance(result, int) else 0


def _stopped(how: str, code: int) -> int:
    """Ctrl-C or SIGTERM: stop the Ray this process started (a cluster it joined keeps running),
    say so in one line, no traceback. Outputs stay as they are: rerun the command to resume."""
    stopping.mark_handled()  # a second Ctrl-C must not break the shutdown
    ray = sys.modules.get("ray")
    try:
        if ray is not None and ray.is_initialized():
            ray.shutdown()
    except Exception:  # stopping anyway
        pass
    logger.error("%s: stopped; rerun the same command to resume", how)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
