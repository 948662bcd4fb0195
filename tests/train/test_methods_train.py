"""Each method's training configuration runs through `densekit train` (Ray Train, 1 worker) for a
few steps on a small generated task: the loss terms the method names are computed, finite, logged
per checkpoint, and the student's weights change. (ADORE: tests/train/test_adore.py; contrastive:
test_train.py; whole methods: tests/methods/.)"""

from __future__ import annotations

import json
import math

import pytest

from densekit.artifacts import TableWriter, read_manifest, read_table, write_manifest
from densekit.config import TrainConfig, load_config
from densekit.data import records as R
from densekit.train import train
from densekit_testdata import needs_cxx

pytestmark = [pytest.mark.ray, pytest.mark.slow]

STEPS = 3


@pytest.fixture(scope="module")
def scored_groups(train_task, tmp_path_factory):
    """The task's groups with offline teacher scores (as `score` writes them): positive 2.0,
    negatives -1.0, -1.5, ... (Margin-MSE reads the scores from the groups)."""
    rows = read_table(train_task["groups"]).to_pylist()
    for row in rows:
        for p in row[R.POSITIVES]:
            p[R.SCORE] = 2.0
        for k, p in enumerate(row[R.NEGATIVES]):
            p[R.SCORE] = -1.0 - 0.5 * k
    out = tmp_path_factory.mktemp("scored") / "groups"
    with TableWriter(out, R.GROUPS_SCHEMA) as w:
        w.write({name: [r[name] for r in rows] for name in (R.QID, R.QUERY, R.POSITIVES, R.NEGATIVES)})
    write_manifest(out, "test")
    return out


# method -> (overrides, the loss terms its metrics must hold); STUDENT, GROUPS, SCORED stand for paths.
METHODS = {
    "margin_mse": (
        ["model.path=STUDENT", "model.pooling=mean", "data.train=SCORED", "data.group_size=2",
         "data.teacher_scores=true", "losses={margin_mse: {}}"],
        ["margin_mse"],
    ),
    "query_align": (
        ["model.path=STUDENT", "model.student_layers=[1]", "teacher.path=STUDENT", "data.train=GROUPS",
         "data.group_size=0", "losses={embedding_mse: {}}"],
        ["embedding_mse"],
    ),
    "prod_lwf": (  # PROD's CE -> DE stage: KD from a cross-encoder teacher plus LwF
        ["model.path=STUDENT", "model.pooling=mean", "teacher.path=STUDENT", "teacher.kind=cross_encoder",
         "data.train=GROUPS", "data.group_size=4",
         "losses={nll: {weight: 0.1}, kl_distill: {weight: 0.9, params: {temperature: 4.0}}, "
         "lwf: {weight: 1.0, params: {temperature: 4.0}}}"],
        ["nll", "kl_distill", "lwf"],
    ),
    "lead": (
        ["model.path=STUDENT", "model.pooling=mean", "teacher.path=STUDENT", "teacher.pooling=mean",
         "data.train=GROUPS", "data.group_size=4",
         "losses={nll: {weight: 1.0}, kl_distill: {weight: 1.0}, layer_distill: {weight: 1.0, params: "
         "{mapping: random, num_layers: 2, layer_temperature: 10.0, reweight: true}}}"],
        ["nll", "kl_distill", "layer_distill"],
    ),
    "star": (
        ["model.path=STUDENT", "model.pooling=mean", "data.train=GROUPS", "data.group_size=4",
         "losses={star_pairwise: {}}"],
        ["star_pairwise"],
    ),
}


def _fill(override: str, paths: dict) -> str:
    for name, path in paths.items():
        override = override.replace(name, str(path))
    return override


# PROD's CE -> DE with LwF (an online cross-encoder teacher, a frozen reference model, three losses)
# exercises the most of the train step and runs by default; the other four are `long` (~25 s each).
DEFAULT_RUN = "prod_lwf"


@pytest.mark.parametrize(
    "method", [m if m == DEFAULT_RUN else pytest.param(m, marks=pytest.mark.long) for m in METHODS]
)
def test_method_trains_a_few_steps(method, tmp_path, train_task, scored_groups, student_dir, ray_session):
    from densekit.models import load_model

    template, terms = METHODS[method]
    paths = {"STUDENT": student_dir, "GROUPS": train_task["groups"], "SCORED": scored_groups}
    out = tmp_path / method
    cfg = load_config(TrainConfig, None, [
        *(_fill(o, paths) for o in template),
        "optim.lr=5e-3", "optim.batch_size=8", f"optim.max_steps={STEPS}", "optim.warmup_steps=1",
        "checkpoint_every=1", "resources.num_workers=1", "resources.cpus_per_worker=1", f"output={out}",
    ])
    train(cfg)
    assert read_manifest(out)["steps"] == STEPS
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))
    for h in history:
        for term in terms:
            assert math.isfinite(h[f"loss/{term}"]), (term, h)
    before = load_model(student_dir).state_dict()
    after = load_model(out / "model").state_dict()
    changed = [k for k in after if k in before and before[k].shape == after[k].shape
               and not (before[k] == after[k]).all()]
    assert changed, "no weight of the student changed"


@pytest.fixture
def teacher_query_emb(train_task, student_dir, tmp_path, ray_session):
    """The "teacher's" (the tiny student's own) `encode` of the training queries."""
    from densekit.config import EncodeConfig
    from densekit.pipelines.encode import encode

    out = tmp_path / "teacher-queries"
    encode(load_config(EncodeConfig, None, [
        f"model={student_dir}", f"input={train_task['queries']}", f"output={out}", "resources.num_workers=1",
    ]))
    return out


def test_query_align_reads_cached_teacher_embeddings(tmp_path, train_task, student_dir, teacher_query_emb):
    """data.teacher_embeddings (the teacher's `encode` of the training queries) gives the same
    embedding_mse, step for step, as running the teacher online: the same batches, the same targets."""
    common = [
        f"model.path={student_dir}", "model.student_layers=[1]", f"data.train={train_task['groups']}",
        "data.group_size=0", "losses={embedding_mse: {}}", "optim.lr=5e-3", "optim.batch_size=8",
        f"optim.max_steps={STEPS}", "optim.warmup_steps=1", "checkpoint_every=1",
        "resources.num_workers=1", "resources.cpus_per_worker=1",
    ]
    curves = {}
    for name, extra in (("online", [f"teacher.path={student_dir}"]),
                        ("cached", [f"data.teacher_embeddings={teacher_query_emb}"])):
        train(load_config(TrainConfig, None, [*common, *extra, f"output={tmp_path / name}"]))
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        curves[name] = [json.loads(line)["loss/embedding_mse"] for line in lines]
    assert len(curves["cached"]) == STEPS
    assert curves["cached"][0] > 0
    assert curves["cached"] == pytest.approx(curves["online"], rel=1e-4)


def test_cached_teacher_embeddings_are_checked_before_training(tmp_path, train_task, student_dir, teacher_query_emb):
    """Both a teacher and cached embeddings, or cached embeddings with a loss that needs scores,
    are refused before Ray Train starts; so is a table that is not an embeddings table."""
    from densekit.errors import ConfigError, InputError

    base = [f"model.path={student_dir}", f"data.train={train_task['groups']}", f"output={tmp_path / 'o'}"]
    with pytest.raises(ConfigError, match="not both"):
        train(load_config(TrainConfig, None, [*base, "data.group_size=0", "losses={embedding_mse: {}}",
                                              f"teacher.path={student_dir}",
                                              f"data.teacher_embeddings={teacher_query_emb}"]))
    with pytest.raises(ConfigError, match="only embedding_mse"):
        train(load_config(TrainConfig, None, [*base, "data.group_size=4", "losses={kl_distill: {}}",
                                              f"data.teacher_embeddings={teacher_query_emb}"]))
    with pytest.raises(InputError, match="embedding"):
        train(load_config(TrainConfig, None, [*base, "data.group_size=0", "losses={embedding_mse: {}}",
                                              f"data.teacher_embeddings={train_task['queries']}"]))
    assert not (tmp_path / "o").exists()


def test_a_rerun_reads_the_online_teachers_embeddings_from_teacher_cache(tmp_path, train_task, student_dir, ray_session):
    """LEAD's online teacher (per-layer views too) with `teacher_cache`: the first run computes and
    keeps each batch's teacher embeddings, a second run with the same batches reads every one of
    them (it computes none and writes nothing) and trains to the same losses, step for step."""
    template, terms = METHODS["lead"]
    paths = {"STUDENT": student_dir, "GROUPS": train_task["groups"]}
    cache = tmp_path / "cache"
    histories, files = {}, {}
    for name in ("first", "again"):
        train(load_config(TrainConfig, None, [
            *(_fill(o, paths) for o in template), f"teacher_cache={cache}",
            "optim.lr=5e-3", "optim.batch_size=8", f"optim.max_steps={STEPS}", "optim.warmup_steps=1",
            "checkpoint_every=1", "resources.num_workers=1", "resources.cpus_per_worker=1",
            f"output={tmp_path / name}",
        ]))  # fmt: skip
        histories[name] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        files[name] = {p: p.stat().st_mtime_ns for p in cache.rglob("*.pt")}
    per_step = 2  # one query and one passage tower batch a step
    assert [h["teacher_cache_computed"] for h in histories["first"]] == [per_step * s for s in range(1, STEPS + 1)]
    assert [h["teacher_cache_read"] for h in histories["again"]] == [per_step * s for s in range(1, STEPS + 1)]
    assert all(h["teacher_cache_computed"] == 0 for h in histories["again"])
    assert len(files["first"]) == per_step * STEPS and files["again"] == files["first"]
    for a, b in zip(histories["first"], histories["again"]):
        for term in ["loss", *(f"loss/{t}" for t in terms)]:
            assert b[term] == pytest.approx(a[term], rel=1e-6, abs=1e-9), (term, a[term], b[term])


@pytest.mark.long
def test_a_loss_at_weight_0_is_off_and_its_teacher_is_never_run(tmp_path, train_task, student_dir, ray_session):
    """LEAD's terms with the teacher's two at weight 0 (a labels-only twin): the teacher is never
    run (its teacher_cache stays empty), the off terms are not logged, and the run trains to the
    same losses, step for step, as the same config with no teacher at all, which the config
    check now accepts (no loss that needs one is on)."""
    template, _ = METHODS["lead"]
    paths = {"STUDENT": student_dir, "GROUPS": train_task["groups"]}
    off = "losses={nll: {weight: 1.0}, kl_distill: {weight: 0}, layer_distill: {weight: 0.0, params: " \
          "{mapping: random, num_layers: 2, layer_temperature: 10.0, reweight: true}}}"
    common = ["optim.lr=5e-3", "optim.batch_size=8", f"optim.max_steps={STEPS}", "optim.warmup_steps=1",
              "checkpoint_every=1", "resources.num_workers=1", "resources.cpus_per_worker=1"]
    cache = tmp_path / "cache"
    base = [_fill(o, paths) for o in template if not o.startswith("losses=")]
    runs = {
        "with_teacher": [*base, off, f"teacher_cache={cache}"],
        "no_teacher": [*(o for o in base if not o.startswith("teacher.")), off],
    }
    histories = {}
    for name, overrides in runs.items():
        train(load_config(TrainConfig, None, [*overrides, *common, f"output={tmp_path / name}"]))
        histories[name] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert not cache.exists() or not any(cache.rglob("*.pt")), "the teacher ran"
    for a, b in zip(histories["with_teacher"], histories["no_teacher"], strict=True):
        assert "loss/nll" in a and "loss/kl_distill" not in a and "loss/layer_distill" not in a, a
        assert "teacher_cache_computed" not in a, a
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["loss/nll"] == pytest.approx(b["loss/nll"], rel=1e-6)


@needs_cxx
@pytest.mark.long  # ~45 s a method here; tests/models/test_compiled.py checks the compiled teacher by default
@pytest.mark.parametrize("method", ["lead", "prod_lwf"])
def test_a_compiled_teacher_trains_to_the_same_losses(method, tmp_path, train_task, student_dir, ray_session):
    """compile_teacher=true (the frozen teacher's transformers compiled, weights frozen): the same
    losses, step for step, as the eager teacher; LEAD reads the teacher's per-layer views too, PROD
    a cross-encoder teacher's scores."""
    template, terms = METHODS[method]
    paths = {"STUDENT": student_dir, "GROUPS": train_task["groups"]}
    histories = {}
    for compiled in (False, True):
        out = tmp_path / f"compiled_{compiled}"
        train(load_config(TrainConfig, None, [
            *(_fill(o, paths) for o in template), f"compile_teacher={str(compiled).lower()}",
            "optim.lr=5e-3", "optim.batch_size=8", f"optim.max_steps={STEPS}", "optim.warmup_steps=1",
            "checkpoint_every=1", "resources.num_workers=1", "resources.cpus_per_worker=1", f"output={out}",
        ]))  # fmt: skip
        histories[compiled] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(histories[True]) == STEPS
    assert [h["teacher_compiled"] for h in histories[True]] == [1.0] * STEPS  # compiled, no fallback
    assert all("teacher_compiled" not in h for h in histories[False])
    for a, b in zip(histories[False], histories[True], strict=True):
        for term in ["loss", *(f"loss/{t}" for t in terms)]:
            assert b[term] == pytest.approx(a[term], rel=1e-4, abs=1e-6), (term, a[term], b[term])
