"""Bad input: every kind of broken file a user may hand densekit is refused with a message naming
the file (and line or record) and what was expected, and, where it can be known from the inputs
alone, before Ray starts. Huge and odd texts (10 MB, control characters) go through, truncated.

Each test reports its bad inputs to the suite's tally (see conftest.py).
"""

from __future__ import annotations

import json
import re
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from densekit.artifacts import TableWriter, is_complete, read_manifest, read_table, write_manifest
from densekit.cli import STEPS
from densekit.config import (
    EncodeConfig,
    ImportConfig,
    IndexConfig,
    MineConfig,
    ScoreConfig,
    SearchConfig,
    TrainConfig,
    load_config,
)
from densekit.data import records as R
from densekit.errors import (
    ChangedArtifactError,
    ConfigError,
    DensekitError,
    IncompleteOutputError,
    InputError,
)

# Words of tests/conftest.py's TINY_TEXTS (the tiny tokenizer knows them).
WORDS = ("dense retrieval trains small query and passage encoders a cross encoder teacher scores each "
         "pair hard negatives are mined from faiss index of the corpus margin mse distils").split()


class RayStarted(AssertionError):
    """A step started Ray although its inputs were already known to be bad."""


@pytest.fixture
def no_ray(monkeypatch):
    """Make any step that reaches init_ray fail the test: bad inputs must be refused before."""

    def refuse(*args, **kwargs):
        raise RayStarted("the step started Ray before refusing its bad input")

    monkeypatch.setattr("densekit.raycluster.init_ray", refuse)


def table(directory: Path, schema: pa.Schema, columns: dict, rows_per_part: int = 1_000_000,
          extra: dict | None = None) -> Path:
    with TableWriter(directory, schema, rows_per_part=rows_per_part) as w:
        w.write(pa.table(columns, schema=schema))
    write_manifest(directory, "test", extra)
    return directory


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 20)))) for _ in range(n)]


def embeddings(directory: Path, parts: list[np.ndarray], model_dir: Path | None = None) -> Path:
    """An embeddings table of one part per array (dims may differ: that is the point)."""
    from densekit.pipelines.embeddings import embeddings_batch, model_fingerprint

    directory.mkdir(parents=True)
    start = 0
    for i, x in enumerate(parts):
        batch = embeddings_batch([f"p{start + j}" for j in range(len(x))], x)
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_batches([batch]), directory / f"part-{i:05d}.parquet")
        start += len(x)
    extra = {"dim": parts[0].shape[1], "metric": "ip"}
    if model_dir is not None:
        extra.update(model=str(model_dir), model_fingerprint=model_fingerprint(model_dir))
    write_manifest(directory, "encode", extra)
    return directory


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """Valid inputs of every step (small), so that one broken input at a time can be tried."""
    root = tmp_path_factory.mktemp("world")
    n = 40
    corpus = table(root / "corpus", R.CORPUS_SCHEMA,
                   {R.PID: [f"p{i}" for i in range(n)], R.TEXT: texts(n), R.TITLE: [""] * n})
    queries = table(root / "queries", R.QUERIES_SCHEMA,
                    {R.QID: ["q0", "q1", "q2"], R.TEXT: texts(3, 1)})
    qrels = table(root / "qrels", R.QRELS_SCHEMA,
                  {R.QID: ["q0", "q1", "q2"], R.PID: ["p0", "p1", "p2"], R.RELEVANCE: [1, 1, 1]})
    run = table(root / "run", R.RUN_SCHEMA,
                {R.QID: ["q0"] * 5 + ["q1"] * 5 + ["q2"] * 5, R.PID: [f"p{i}" for i in range(15)],
                 R.RANK: list(range(1, 6)) * 3, R.SCORE: [float(10 - i % 5) for i in range(15)]})
    groups = table(root / "groups", R.GROUPS_SCHEMA, {
        R.QID: ["q0", "q1", "q2"], R.QUERY: texts(3, 1),
        R.POSITIVES: [[R.passage(f"p{i}", t, "", 1.0)] for i, t in enumerate(texts(3, 2))],
        R.NEGATIVES: [[R.passage(f"p{10 + i}", t, "", 0.0)] for i, t in enumerate(texts(3, 3))]})
    emb = embeddings(root / "emb", [np.ones((4, 32), np.float32)], tiny_model_dir)
    # An index as far as its readers look before Ray: a complete directory with its manifest.
    index = root / "index"
    index.mkdir()
    (index / "trained.faiss").write_bytes(b"-")
    write_manifest(index, "index", {"factory": "Flat", "dim": 32, "metric": "ip", "shards": [],
                                    "ntotal": 0, "model_fingerprint": read_manifest(emb)["model_fingerprint"]})
    (root / "qrels.trec").write_text("q0 0 p0 1\n")
    return {"root": root, "corpus": corpus, "queries": queries, "qrels": qrels, "run": run,
            "groups": groups, "emb": emb, "index": index, "model": tiny_model_dir}


# --- a config that points at a missing file: every step refuses it before Ray starts --------------

TRAIN = ["model.path={model}", "data.train={groups}", "data.group_size=2", "losses.contrastive.weight=1",
         "optim.batch_size=2", "optim.max_steps=1", "output={out}"]
MISSING_CASES = {
    "import path": ("import", ["format=msmarco_collection", "path={missing}", "output={out}"]),
    "import corpus lookup": ("import", ["format=trec_qrels", "path={root}/qrels.trec", "corpus={missing}",
                                        "output={out}"]),
    "export input": ("export", ["format=trec_run", "input={missing}", "output={out}"]),
    "encode input": ("encode", ["model={model}", "input={missing}", "output={out}"]),
    "encode model": ("encode", ["model={missing}", "input={corpus}", "output={out}"]),
    "index embeddings": ("index", ["embeddings={missing}", "output={out}"]),
    "search index": ("search", ["index={missing}", "query_embeddings={emb}", "output={out}"]),
    "search query embeddings": ("search", ["index={index}", "query_embeddings={missing}", "output={out}"]),
    "search queries": ("search", ["index={index}", "queries={missing}", "model={model}", "output={out}"]),
    "search model": ("search", ["index={index}", "queries={queries}", "model={missing}", "output={out}"]),
    "evaluate run": ("evaluate", ["run={missing}", "qrels={qrels}", "output={out}"]),
    "evaluate qrels": ("evaluate", ["run={run}", "qrels={missing}", "output={out}"]),
    "mine corpus": ("mine", ["run={run}", "qrels={qrels}", "queries={queries}", "corpus={missing}",
                             "output={out}"]),
    "mine qrels": ("mine", ["run={run}", "qrels={missing}", "queries={queries}", "corpus={corpus}",
                            "output={out}"]),
    "score groups": ("score", ["groups={missing}", "teachers=[{{model: '{model}'}}]", "output={out}"]),
    "score teacher": ("score", ["groups={groups}", "teachers=[{{model: '{missing}'}}]", "output={out}"]),
    "train data": ("train", [t.replace("{groups}", "{missing}") for t in TRAIN]),
    "train model": ("train", [t.replace("{model}", "{missing}") for t in TRAIN]),
    "train eval corpus": ("train", TRAIN + ["eval.every=1", "eval.queries={queries}", "eval.qrels={qrels}",
                                            "eval.corpus={missing}"]),
}


@pytest.mark.parametrize("case", list(MISSING_CASES))
def test_missing_input_is_refused_before_ray(case, world, tmp_path, no_ray, tally):
    step, template = MISSING_CASES[case]
    missing = tmp_path / "not-there"
    values = {k: v for k, v in world.items()} | {"missing": missing, "out": tmp_path / "out"}
    overrides = [t.format(**values) for t in template]
    with pytest.raises(DensekitError) as e:
        cfg = load_config(STEPS[step].config_cls(), None, overrides)
        STEPS[step].function()(cfg)
    tally.bad_input(f"config points at a missing file ({case})")
    assert str(missing) in str(e.value), str(e.value)
    assert not is_complete(tmp_path / "out")


def test_missing_method_and_stage_files(tmp_path, tally):
    from densekit.methods import run

    with pytest.raises(ConfigError, match="nothere.yaml: config file not found"):
        run([str(tmp_path / "nothere.yaml")])
    method = tmp_path / "m.yaml"
    method.write_text(f"name: m\noutput: {tmp_path / 'run'}\nstages:\n  a: {{step: encode, config: gone.yaml}}\n")
    with pytest.raises(ConfigError, match="gone.yaml: config file not found"):
        run([str(method)])
    tally.bad_input("method file missing")
    tally.bad_input("stage config file missing")


# --- truncated and corrupt Parquet -----------------------------------------------------------------


def _corpus_copy(world, tmp_path) -> Path:
    dst = tmp_path / "corpus"
    shutil.copytree(world["corpus"], dst, ignore=shutil.ignore_patterns("lookup-*"))
    return dst


def test_truncated_parquet_is_refused(world, tmp_path, no_ray, tally):
    corpus = _corpus_copy(world, tmp_path)
    part = corpus / "part-00000.parquet"
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    cfg = load_config(EncodeConfig, overrides=[f"model={world['model']}", f"input={corpus}",
                                               f"output={tmp_path / 'emb'}"])
    with pytest.raises(IncompleteOutputError, match=rf"part-00000.parquet has {len(data) // 2} bytes, "
                                                    rf"_?manifest.json says {len(data)}"):
        STEPS["encode"].function()(cfg)
    tally.bad_input("truncated Parquet part (size differs from the manifest)")
    # Without a manifest to compare with (a reader handed the file itself), Parquet's own check.
    from densekit.artifacts import read_table as read

    with pytest.raises(InputError, match=r"part-00000.parquet: not a readable Parquet file"):
        read(part)
    tally.bad_input("truncated Parquet file read directly")


def test_corrupt_parquet_footer_is_refused_before_ray(world, tmp_path, no_ray, tally, monkeypatch):
    corpus = _corpus_copy(world, tmp_path)
    part = corpus / "part-00000.parquet"
    data = bytearray(part.read_bytes())
    data[-40:-8] = b"\xff" * 32  # same size (the manifest still agrees), footer garbage
    part.write_bytes(bytes(data))
    cfg = load_config(EncodeConfig, overrides=[f"model={world['model']}", f"input={corpus}",
                                               f"output={tmp_path / 'emb'}"])
    # The manifest's sha256 finds it first...
    with pytest.raises(ChangedArtifactError, match=r"part-00000.parquet does not match its sha256"):
        STEPS["encode"].function()(cfg)
    tally.bad_input("corrupt Parquet footer (sha256)")
    # ... and with checksums off (DENSEKIT_VERIFY_CHECKSUMS=0), Parquet's own footer check.
    monkeypatch.setenv("DENSEKIT_VERIFY_CHECKSUMS", "0")
    with pytest.raises(InputError, match=r"part-00000.parquet: not a readable Parquet file"):
        STEPS["encode"].function()(cfg)
    tally.bad_input("corrupt Parquet footer (checksums off)")


@pytest.mark.ray
def test_corrupt_parquet_data_is_named_by_the_worker(world, tmp_path, ray_session, tally, monkeypatch):
    """Footer intact, a data page garbage: found inside a Ray Data task, reported as itself (with
    checksums off; with them on the driver's sha256 check refuses it first, tested above)."""
    monkeypatch.setenv("DENSEKIT_VERIFY_CHECKSUMS", "0")
    corpus = _corpus_copy(world, tmp_path)
    part = corpus / "part-00000.parquet"
    data = bytearray(part.read_bytes())
    data[8:200] = b"\xa5" * 192  # the first column chunk's pages
    part.write_bytes(bytes(data))
    cfg = load_config(EncodeConfig, overrides=[f"model={world['model']}", f"input={corpus}",
                                               f"output={tmp_path / 'emb'}", "resources.cpus_per_worker=0.5"])
    with pytest.raises(InputError) as e:
        STEPS["encode"].function()(cfg)
    tally.bad_input("corrupt Parquet data page")
    assert type(e.value) is InputError  # not Ray's wrapper with a remote traceback
    assert str(e.value).startswith(f"{part}: row group 0: corrupt Parquet data"), str(e.value)
    assert not is_complete(tmp_path / "emb")


# --- embeddings, indexes and models that do not fit together ---------------------------------------


def test_embedding_shard_of_another_dimension(world, tmp_path, no_ray, tally):
    emb = embeddings(tmp_path / "emb", [np.ones((5, 32), np.float32), np.ones((5, 16), np.float32)])
    with pytest.raises(InputError, match=r"part-00001.parquet: embeddings of dimension 16; expected 32"):
        STEPS["index"].function()(load_config(IndexConfig, overrides=[f"embeddings={emb}",
                                                                      f"output={tmp_path / 'ix'}"]))
    tally.bad_input("embedding shard of the wrong dimension (index)")
    # Query embeddings of another size than the index's.
    q = embeddings(tmp_path / "q16", [np.ones((2, 16), np.float32)])
    with pytest.raises(ConfigError, match="holds 32-dim vectors, the queries in .* are 16-dim"):
        STEPS["search"].function()(load_config(SearchConfig, overrides=[
            f"index={world['index']}", f"query_embeddings={q}", f"output={tmp_path / 'run'}"]))
    tally.bad_input("query embeddings of the wrong dimension (search)")


@pytest.fixture(scope="module")
def other_model(tmp_path_factory, tiny_model_dir):
    """A second tiny model: same shapes, other weights (another seed)."""
    from densekit.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("other") / "bert", WORDS, layers=2, hidden=32, seed=1,
                            tokenizer_from=tiny_model_dir)


@pytest.mark.ray
def test_index_of_another_model_than_the_query_encoder(world, tmp_path, ray_session, other_model, tally,
                                                       monkeypatch):
    """Real encode -> index of model A; searching with model B is refused from the manifests,
    before any query is encoded; asymmetric=true allows it."""
    encode = STEPS["encode"].function()
    common = ["resources.cpus_per_worker=0.5"]
    encode(load_config(EncodeConfig, overrides=[f"model={world['model']}", f"input={world['corpus']}",
                                                f"output={tmp_path / 'emb'}", *common]))
    STEPS["index"].function()(load_config(IndexConfig, overrides=[f"embeddings={tmp_path / 'emb'}",
                                                                  f"output={tmp_path / 'ix'}", *common]))
    search = STEPS["search"].function()

    def cfg(*extra):
        return load_config(SearchConfig, overrides=[f"index={tmp_path / 'ix'}", f"queries={world['queries']}",
                                                    f"model={other_model}", f"output={tmp_path / 'run'}",
                                                    "k=5", *common, *extra])

    calls = []
    monkeypatch.setattr("densekit.pipelines.search._encode_queries", lambda *a: calls.append(a))
    with pytest.raises(ConfigError, match=rf"{re.escape(str(tmp_path / 'ix'))} was built from model "
                                          rf"{re.escape(str(world['model']))} .*model={re.escape(str(other_model))} "
                                          r"is another model.*asymmetric=true"):
        search(cfg())
    assert not calls, "queries were encoded before the model check"
    tally.bad_input("index built by another model than the query encoder")
    monkeypatch.undo()
    search(cfg("asymmetric=true"))
    assert read_manifest(tmp_path / "run")["asymmetric"] is True


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change", ["layers", "width", "kind", "head"])
def test_checkpoint_config_that_does_not_fit_its_weights(change, world, tmp_path, no_ray, tally):
    """A checkpoint whose configs describe another model than its weights: refused by every step
    that would load it, before Ray; transformers alone would load it with random layers."""
    from densekit.models import build_model, load_model
    from densekit.models.spec import ModelSpec

    model = tmp_path / "model"
    if change == "head":
        # A bi-encoder with a 16-dim head whose spec was edited to say 24.
        build_model(ModelSpec(head_dim=16), world["model"]).save(model)
        _edit_json(model / "densekit_model.json", head_dim=24)
        message = r"densekit_head.safetensors: head weights .* do not fit"
    else:
        shutil.copytree(world["model"], model)
        if change == "layers":
            _edit_json(model / "config.json", num_hidden_layers=4)
            message = r"config.json: does not fit the weights: 32 weights it describes are missing"
        elif change == "width":
            _edit_json(model / "config.json", intermediate_size=128)
            message = r"config.json: does not fit the weights: encoder.layer.0.intermediate.dense.bias is \[64\]"
        else:  # densekit_model.json says cross-encoder; the files are a plain encoder (no head)
            ModelSpec(kind="cross_encoder").save(model)
            message = r"densekit_head.safetensors: missing: densekit_model.json declares a cross_encoder head"
    tally.bad_input(f"checkpoint config does not fit its weights ({change})")
    with pytest.raises(InputError, match=message):
        load_model(model)
    steps = {
        "encode": (EncodeConfig, [f"model={model}", f"input={world['corpus']}", f"output={tmp_path / 'e'}"]),
        "score": (ScoreConfig, [f"groups={world['groups']}", f"teachers=[{{model: '{model}'}}]",
                                f"output={tmp_path / 's'}"]),
        "train": (TrainConfig, [t.format(model=model, groups=world["groups"], out=tmp_path / "t") for t in TRAIN]),
    }
    if change == "kind":
        del steps["encode"]  # encode refuses a cross-encoder by its kind already
    for step, (cls, overrides) in steps.items():
        with pytest.raises(InputError, match=message):
            STEPS[step].function()(load_config(cls, overrides=overrides))


# --- training groups and teacher scores ------------------------------------------------------------


def _groups(directory: Path, negatives_score: float | None = 0.5, positives: int = 1) -> Path:
    ts = texts(8, 4)
    return table(directory, R.GROUPS_SCHEMA, {
        R.QID: [f"q{i}" for i in range(4)], R.QUERY: ts[:4],
        R.POSITIVES: [[] if i == 2 and not positives else [R.passage(f"p{i}", ts[4 + i], "", 1.0)]
                      for i in range(4)],
        R.NEGATIVES: [[R.passage(f"n{i}", ts[i], "", negatives_score if i == 2 else 0.1)] for i in range(4)],
    }, rows_per_part=2)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), None])
def test_training_groups_with_bad_teacher_scores(value, world, tmp_path, no_ray, tally):
    groups = _groups(tmp_path / "groups", negatives_score=value)
    overrides = [t.format(model=world["model"], groups=groups, out=tmp_path / "t") for t in TRAIN]
    what = "no teacher score" if value is None else f"teacher score {value}"
    # Group 3 = row 1 of the second part file.
    with pytest.raises(InputError, match=rf"part-00001.parquet:1: qid 'q2', negative 'n2': {what}; expected a finite"):
        STEPS["train"].function()(load_config(TrainConfig, overrides=overrides + ["data.teacher_scores=true"]))
    tally.bad_input(f"teacher score {value} in training groups")


def test_training_group_without_positive(world, tmp_path, no_ray, tally):
    groups = _groups(tmp_path / "groups", positives=0)
    overrides = [t.format(model=world["model"], groups=groups, out=tmp_path / "t") for t in TRAIN]
    with pytest.raises(InputError, match=r"part-00001.parquet:1: group of qid 'q2' has no positive"):
        STEPS["train"].function()(load_config(TrainConfig, overrides=overrides))
    tally.bad_input("training group with no positive")


def test_collator_names_the_bad_score():
    """The loop's own check (the last line of defence, e.g. for groups edited during a run)."""
    from densekit.data.collate import TrainCollator

    rows = [{R.QID: "q9", R.QUERY: "x", R.POSITIVES: [R.passage("p", "t", "", 1.0)],
             R.NEGATIVES: [R.passage("n", "u", "", float("inf"))]}]
    with pytest.raises(InputError, match="groups-table: qid q9, pid n: teacher score is inf; expected a finite number"):
        TrainCollator(2, teacher_scores=True, source="groups-table")(rows)


@pytest.fixture(scope="module")
def broken_teacher(tmp_path_factory, tiny_model_dir):
    """A cross-encoder whose head bias is NaN: every score it gives is NaN."""
    import torch

    from densekit.models import build_model
    from densekit.models.spec import ModelSpec

    model = build_model(ModelSpec(kind="cross_encoder"), tiny_model_dir)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "head" in name and name.endswith("bias"):
                p.fill_(float("nan"))
    return model.save(tmp_path_factory.mktemp("teacher") / "nan-ce")


@pytest.mark.ray
def test_score_refuses_a_teacher_that_gives_nan(world, tmp_path, ray_session, broken_teacher, tally):
    cfg = load_config(ScoreConfig, overrides=[f"groups={world['groups']}", f"output={tmp_path / 's'}",
                                              f"teachers=[{{model: '{broken_teacher}'}}]",
                                              "resources.cpus_per_worker=0.5"])
    with pytest.raises(InputError) as e:
        STEPS["score"].function()(cfg)
    tally.bad_input("teacher producing NaN scores (score)")
    assert str(e.value).startswith(f"{broken_teacher}: the teacher gave a non-finite score (nan) to qid q0, pid p0")
    assert not is_complete(tmp_path / "s")


# --- ids, empty and odd text ---------------------------------------------------------------------


def test_qrels_with_unknown_ids(world, tmp_path, no_ray, tally):
    from densekit.data.importer import import_data

    lookups = [f"corpus={world['corpus']}", f"queries={world['queries']}", "format=trec_qrels"]
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q0 0 p0 1\nq1 0 p999 1\n")
    with pytest.raises(InputError, match=rf"{re.escape(str(qrels))}:2: pid 'p999' is not in the corpus table "
                                         r".*expected a known id"):
        import_data(load_config(ImportConfig, overrides=[*lookups, f"path={qrels}", f"output={tmp_path / 'a'}"]))
    tally.bad_input("qrels with an unknown pid (import)")
    qrels.write_text("q0 0 p0 1\nq7 0 p1 1\n")
    with pytest.raises(InputError, match=rf"{re.escape(str(qrels))}:2: qid 'q7' is not in the queries table "
                                         r".*expected a known id"):
        import_data(load_config(ImportConfig, overrides=[*lookups, f"path={qrels}", f"output={tmp_path / 'q'}"]))
    tally.bad_input("qrels with an unknown qid (import)")
    assert not is_complete(tmp_path / "q")
    qrels.write_text("q0 0 p0 1\nq1 0 p999 1\nq7 0 p1 1\n")
    import_data(load_config(ImportConfig, overrides=[*lookups, f"path={qrels}", f"output={tmp_path / 'b'}",
                                                     "on_error=skip"]))
    m = read_manifest(tmp_path / "b")
    assert (m["rows"], m["skipped"]) == (1, {"unknown_pid": 1, "unknown_qid": 1})
    tally.bad_input("qrels with an unknown qid (import, skipped and counted)")
    # mine: a judged positive the corpus does not hold.
    bad = table(tmp_path / "qrels_bad", R.QRELS_SCHEMA, {R.QID: ["q0"], R.PID: ["p999"], R.RELEVANCE: [1]})
    from densekit.pipelines.mine import mine

    with pytest.raises(InputError, match=r"corpus: passage 'p999' \(from the run or qrels\) is not in the corpus"):
        mine(load_config(MineConfig, overrides=[f"run={world['run']}", f"qrels={bad}", f"queries={world['queries']}",
                                                f"corpus={world['corpus']}", f"output={tmp_path / 'g'}"]))
    tally.bad_input("qrels with an unknown pid (mine)")
    assert not is_complete(tmp_path / "g")


def test_empty_corpus(world, tmp_path, no_ray, tally):
    from densekit.data.importer import import_data

    empty = tmp_path / "collection.tsv"
    empty.write_text("\n  \n")
    with pytest.raises(InputError, match=rf"{re.escape(str(empty))}: empty file; expected lines of id<TAB>text"):
        import_data(load_config(ImportConfig, overrides=[f"path={empty}", "format=msmarco_collection",
                                                         f"output={tmp_path / 'c'}"]))
    tally.bad_input("empty corpus file (import)")
    assert not (tmp_path / "c").exists()
    # An empty corpus table (another tool, or every row skipped upstream): encode keeps the schema
    # in one empty shard (without starting Ray); index refuses to build nothing and says why.
    corpus = table(tmp_path / "corpus", R.CORPUS_SCHEMA, {R.PID: [], R.TEXT: [], R.TITLE: []})
    emb = tmp_path / "emb"
    STEPS["encode"].function()(load_config(EncodeConfig, overrides=[f"model={world['model']}", f"input={corpus}",
                                                                    f"output={emb}"]))
    assert (read_manifest(emb)["count"], read_manifest(emb)["dim"]) == (0, 32)
    tally.bad_input("empty corpus table (encode)")
    with pytest.raises(InputError, match=rf"{re.escape(str(emb))}: holds no vectors; expected at least one "
                                         r"\(was the corpus empty\?\)"):
        STEPS["index"].function()(load_config(IndexConfig, overrides=[f"embeddings={emb}", f"output={tmp_path / 'ix'}"]))
    tally.bad_input("empty embeddings table (index)")
    assert not is_complete(tmp_path / "ix")


def test_invalid_utf8_and_control_characters(world, tmp_path, tally):
    from densekit.data.importer import import_data
    from densekit.pipelines.encode import encode_texts

    odd = "dense \x01retrieval\x07 of \x1b[31mpassage\x1b[0m encoders\x7f \u200bquery"
    src = tmp_path / "collection.tsv"
    src.write_bytes(b"p0\tdense retrieval\n" + b"p1\t" + odd.encode() + b"\n" + b"p2\tbad \xff\xfe bytes\n"
                    + b"p3\tnul \x00 byte\n" + b"p4\tthe corpus\n")
    with pytest.raises(InputError, match=rf"{re.escape(str(src))}:3: invalid UTF-8 at byte 8 of the line; "
                                         r"expected UTF-8 text"):
        import_data(load_config(ImportConfig, overrides=[f"path={src}", "format=msmarco_collection",
                                                         f"output={tmp_path / 'a'}"]))
    tally.bad_input("invalid UTF-8 (import)")
    import_data(load_config(ImportConfig, overrides=[f"path={src}", "format=msmarco_collection",
                                                     f"output={tmp_path / 'b'}", "on_error=skip"]))
    m = read_manifest(tmp_path / "b")
    assert m["skipped"] == {"bad_text": 1, "invalid_utf8": 1}  # the NUL byte too
    tally.bad_input("NUL byte in text (import, skipped and counted)")
    rows = read_table(tmp_path / "b").to_pydict()
    assert rows[R.PID] == ["p0", "p1", "p4"] and rows[R.TEXT][1] == odd  # control characters kept verbatim
    tally.bad_input("text with control characters")
    # The tokenizer drops control and format characters (BERT's clean_text): the vector is the
    # clean text's.
    clean = "".join(c for c in odd if not unicodedata.category(c).startswith("C"))
    got, ref = encode_texts(world["model"], [odd, clean])
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # BEIR JSON Lines: invalid UTF-8 names the line too.
    beir = tmp_path / "corpus.jsonl"
    beir.write_bytes(b'{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": "\xc3\x28"}\n')
    with pytest.raises(InputError, match=rf"{re.escape(str(beir))}:2: invalid UTF-8"):
        import_data(load_config(ImportConfig, overrides=[f"path={beir}", "format=beir_corpus",
                                                         f"output={tmp_path / 'j'}"]))
    tally.bad_input("invalid UTF-8 (BEIR JSON Lines)")


def test_ten_megabyte_document(world, tmp_path, tally):
    """Import keeps it whole; encode and score truncate it to the model's max length (the same
    vector / score as its first words alone), without tokenizing all 10 MB."""
    import torch

    from densekit.data.importer import import_data
    from densekit.models import build_model, load_model
    from densekit.models.spec import ModelSpec
    from densekit.pipelines.encode import encode_texts
    from densekit.pipelines.score import TeacherScorer

    rng = np.random.default_rng(0)
    words = rng.choice(WORDS, size=1_800_000)
    big = " ".join(words)
    assert len(big) > 10 * 2**20
    src = tmp_path / "collection.tsv"
    src.write_text(f"p0\tshort one\np1\t{big}\np2\tanother short one\n", encoding="utf-8")
    import_data(load_config(ImportConfig, overrides=[f"path={src}", "format=msmarco_collection",
                                                     f"output={tmp_path / 'c'}", "batch_bytes=1000000"]))
    got = read_table(tmp_path / "c")
    assert got.column(R.PID).to_pylist() == ["p0", "p1", "p2"] and got.column(R.TEXT)[1].as_py() == big
    tally.bad_input("10 MB document")

    head = " ".join(words[:2000])  # far more than the model's 128 positions
    vectors = encode_texts(world["model"], [big, head, "short one"])
    np.testing.assert_allclose(vectors[0], vectors[1], rtol=1e-5, atol=1e-6)
    assert load_model(world["model"]).tokenize_passages([big])["input_ids"].shape == (1, 128)

    torch.manual_seed(0)
    ce = build_model(ModelSpec(kind="cross_encoder"), world["model"]).save(tmp_path / "ce")
    scores = TeacherScorer(str(ce)).score(["dense retrieval"], [[{R.TEXT: big}, {R.TEXT: head}]])[0]
    assert np.isfinite(scores).all() and scores[0] == pytest.approx(scores[1], rel=1e-5, abs=1e-6)


# --- BEIR files: relevance, missing fields, duplicate ids, an empty corpus -------------------------


def _import(fmt: str, path: Path, out: Path, *extra: str):
    from densekit.data.importer import import_data

    return import_data(load_config(ImportConfig, overrides=[f"path={path}", f"format={fmt}", f"output={out}", *extra]))


def test_beir_qrels_with_negative_relevance_read_as_not_relevant(tmp_path, caplog, tally):
    """Decision (docs/reliability.md): a negative BEIR score (-1, Touché's -2) is a judgment of 'not
    relevant': stored as 0, as trec_eval counts every score <= 0; the log names the file and line."""
    qrels = tmp_path / "test.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t-1\nq2\td3\t-2\n")
    caplog.set_level("WARNING")
    _import("beir_qrels", qrels, tmp_path / "q")
    got = read_table(tmp_path / "q").to_pydict()
    assert list(zip(got[R.QID], got[R.PID], got[R.RELEVANCE])) == [("q1", "d1", 1), ("q1", "d2", 0), ("q2", "d3", 0)]
    assert f"{qrels}: 2 judgment(s) with a negative score (first on line 3) read as 0" in caplog.text
    tally.bad_input("BEIR qrels with relevance -1 (read as 0, not relevant)")


def test_beir_qrels_with_a_non_integer_relevance(tmp_path, no_ray, tally):
    qrels = tmp_path / "test.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0.5\n")
    with pytest.raises(InputError, match=rf"{re.escape(str(qrels))}:3: score '0.5' is not an integer"):
        _import("beir_qrels", qrels, tmp_path / "q")
    tally.bad_input("BEIR qrels with a non-integer relevance")
    assert not is_complete(tmp_path / "q")


def test_beir_queries_without_text(tmp_path, no_ray, tally):
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"_id": "q1", "text": "dense retrieval"}\n{"_id": "q2", "title": "no text"}\n')
    with pytest.raises(InputError, match=rf"{re.escape(str(queries))}:2: missing field 'text'; expected one JSON "
                                         r'object per line with "_id" and "text"'):
        _import("beir_queries", queries, tmp_path / "q")
    tally.bad_input("BEIR queries record without its text field")
    assert not is_complete(tmp_path / "q")


def test_beir_corpus_with_duplicate_ids(tmp_path, no_ray, tally):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b"}\n{"_id": "d1", "text": "c"}\n')
    with pytest.raises(InputError, match=rf"{re.escape(str(corpus))}:3: duplicate pid 'd1' \(first on line 1\); "
                                         r"expected unique ids"):
        _import("beir_corpus", corpus, tmp_path / "c")
    tally.bad_input("BEIR corpus with duplicate doc ids")
    assert not is_complete(tmp_path / "c")


def test_empty_beir_corpus(tmp_path, no_ray, tally):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("")
    with pytest.raises(InputError, match=rf"{re.escape(str(corpus))}: empty file; expected one JSON object per line"):
        _import("beir_corpus", corpus, tmp_path / "c")
    tally.bad_input("empty BEIR corpus.jsonl")
    assert not (tmp_path / "c").exists()


# --- method files and the command line ------------------------------------------------------------


def _method(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\noutput: {tmp_path / 'run'}\n" + body)
    return path


def test_method_with_an_unknown_stage_reference(tmp_path, no_ray, tally):
    from densekit.methods import run

    m = _method(tmp_path, "m", "stages:\n  emb: {step: generate}\n  ix: {step: index, set: {embeddings: '@nothere'}}\n")
    with pytest.raises(ConfigError, match=r"stage 'ix': embeddings=@nothere names no stage"):
        run([str(m)])
    tally.bad_input("method stage referring to an unknown stage")
    assert not (tmp_path / "run").exists()


def test_method_include_cycle(tmp_path, no_ray, tally):
    from densekit.methods import run

    a = _method(tmp_path, "a", "include: [b.yaml]\nstages:\n  x: {step: generate}\n")
    _method(tmp_path, "b", "include: [a.yaml]\nstages:\n  y: {step: generate}\n")
    with pytest.raises(ConfigError, match=r"b.yaml: include a.yaml includes itself \(a cycle\)"):
        run([str(a)])
    tally.bad_input("method include cycle")


def test_method_with_an_unknown_step(tmp_path, no_ray, tally):
    from densekit.methods import run

    m = _method(tmp_path, "m", "stages:\n  a: {step: encdoe}\n")
    with pytest.raises(ConfigError, match=r"stage 'a': unknown step 'encdoe'. Did you mean 'encode'\?"):
        run([str(m)])
    tally.bad_input("method stage with an unknown step name")


def test_unknown_step_on_the_command_line(capsys, tally):
    from densekit.cli import main

    assert main(["encdoe", "model=x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("densekit: unknown step 'encdoe'. Did you mean 'encode'?"), err
    assert "Traceback" not in err
    tally.bad_input("unknown step name (command line)")


def test_yaml_syntax_errors_name_the_file_and_line(tmp_path, no_ray, tally):
    from densekit.methods import run

    m = _method(tmp_path, "m", "stages:\n  a: {step: generate\n  b: [\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(m))}: not valid YAML: (.|\n)*line \d+"):
        run([str(m)])
    tally.bad_input("method file with a YAML syntax error")
    cfg = tmp_path / "encode.yaml"
    cfg.write_text("model: x\ninput: y\n  output: : z\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(cfg))}: not valid YAML: (.|\n)*line 3"):
        load_config(EncodeConfig, cfg, [])
    tally.bad_input("step config with a YAML syntax error")


# --- values no run can use: refused before Ray ----------------------------------------------------


def test_search_with_a_negative_k(world, tmp_path, no_ray, tally):
    with pytest.raises(ConfigError, match=r"k and batch_size must be >= 1"):
        cfg = load_config(SearchConfig, overrides=[f"index={world['index']}", f"query_embeddings={world['emb']}",
                                                   "k=-5", f"output={tmp_path / 's'}"])
        STEPS["search"].function()(cfg)
    tally.bad_input("search with a negative k")
    with pytest.raises(ConfigError, match=r"invalid value for 'k': Value 'ten'"):
        load_config(SearchConfig, overrides=[f"index={world['index']}", "k=ten", f"output={tmp_path / 's'}"])
    tally.bad_input("config value of the wrong type (k=ten)")
    assert not (tmp_path / "s").exists()


def test_mine_more_negatives_than_its_rank_window_holds(world, tmp_path, no_ray, tally):
    with pytest.raises(ConfigError, match=r"num_negatives=30 but ranks 5..20 hold at most 16 candidates; "
                                          r"expected num_negatives <= 16"):
        cfg = load_config(MineConfig, overrides=[f"run={world['run']}", f"qrels={world['qrels']}",
                                                 f"queries={world['queries']}", f"corpus={world['corpus']}",
                                                 "min_rank=5", "max_rank=20", "num_negatives=30",
                                                 f"output={tmp_path / 'g'}"])
        STEPS["mine"].function()(cfg)
    tally.bad_input("mine num_negatives larger than the candidates")
    assert not (tmp_path / "g").exists()


def test_encode_max_length_beyond_the_models_positions(world, tmp_path, no_ray, tally):
    base = [f"model={world['model']}", f"input={world['corpus']}", f"output={tmp_path / 'e'}"]
    with pytest.raises(ConfigError, match=rf"max_length=4096: {re.escape(str(world['model']))}/config.json says "
                                          r"the model has 128 positions; expected max_length <= 128"):
        STEPS["encode"].function()(load_config(EncodeConfig, overrides=[*base, "max_length=4096"]))
    tally.bad_input("encode max_length over the model's positions")
    with pytest.raises(ConfigError, match=r"max_length must be >= 1 \(or unset: the model's own\), got 0"):
        load_config(EncodeConfig, overrides=[*base, "max_length=0"])
    tally.bad_input("encode max_length 0")
    assert not is_complete(tmp_path / "e")
