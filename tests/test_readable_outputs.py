"""Every table densekit writes is read as it is by pandas, pyarrow.dataset and Ray Data (its own
files there start with `_` or `.`, which they skip), and outputs of an earlier densekit (with
`manifest.json` and `config.yaml`) are still read, verified and guarded (issue #20)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from densekit.artifacts import (
    CONFIG,
    LEGACY_CONFIG,
    LEGACY_MANIFEST,
    MANIFEST,
    config_to_yaml,
    is_complete,
    output_owner,
    prepare_output,
    read_manifest,
    table_rows,
    write_manifest,
)
from densekit.cli import main
from densekit.config import GenerateConfig
from densekit.errors import ChangedArtifactError, ConfigError

ROOT = Path(__file__).resolve().parents[1]

METHOD = """\
name: readable
output: {out}
stages:
  task:
    step: generate
    config: {root}/configs/generate/tiny.yaml
    set: {{num_docs: 60, num_train_queries: 24, num_dev_queries: 8, num_topics: 4, num_concepts: 80, seed: 1}}
  corpus_emb:
    step: encode
    set: {{model: {model}, input: "@task/corpus", rows_per_shard: 25, resources: {{num_workers: 1}}}}
  index:
    step: index
    set: {{embeddings: "@corpus_emb"}}
  run:
    step: search
    set: {{index: "@index", queries: "@task/queries", model: {model}, k: 10, resources: {{num_workers: 1}}}}
  groups:
    step: mine
    set: {{run: "@run", qrels: "@task/qrels/train", queries: "@task/queries", corpus: "@task/corpus",
           max_rank: 10, num_negatives: 2, seed: 0}}
"""

_BUILT: dict[str, Path] = {}


@pytest.fixture
def outputs(ray_session, tiny_model_dir, tmp_path_factory) -> Path:
    """A small run: generated task, an import of it (BEIR round trip), embeddings in 3 parts, a
    Flat index, a search run and mined groups. Built once per session."""
    if "run" not in _BUILT:
        base = tmp_path_factory.mktemp("readable")
        out = base / "run"
        method = base / "readable.yaml"
        method.write_text(METHOD.format(out=out, root=ROOT, model=tiny_model_dir))
        assert main(["run", str(method)]) == 0
        assert main(["export", "format=beir", f"input={out / 'task'}", f"output={base / 'beir'}"]) == 0
        assert main(["import", "format=beir", f"path={base / 'beir'}", f"output={out / 'imported'}"]) == 0
        _BUILT["run"] = out
    return _BUILT["run"]


def tables(out: Path) -> dict[str, Path]:
    """Every table of the run, by a name: generate's and import's corpus, queries and qrels,
    encode's embeddings, search's run, mine's groups."""
    found = {}
    for manifest in sorted(out.rglob(MANIFEST)):
        d = manifest.parent
        if list(d.glob("*.parquet")) and "shards" not in d.parts:
            found[d.relative_to(out).as_posix()] = d
    return found


def test_every_table_reads_with_pandas_and_pyarrow(outputs):
    import pandas as pd
    import pyarrow.dataset as ds

    found = tables(outputs)
    kinds = {"task/corpus", "task/queries", "task/qrels/train", "task/qrels/dev", "imported/corpus",
             "imported/queries", "corpus_emb", "run", "groups"}
    assert kinds <= set(found), sorted(found)
    assert any(k.startswith("imported/qrels/") for k in found), sorted(found)
    assert len(list((outputs / "corpus_emb").glob("part-*.parquet"))) == 3  # 60 rows, 25 a shard
    for name, d in found.items():
        rows = read_manifest(d)["rows"]
        assert rows == table_rows(d) and rows > 0, name
        assert len(pd.read_parquet(d)) == rows, name
        assert ds.dataset(d).count_rows() == rows, name
        assert ds.dataset(d, format="parquet").to_table().num_rows == rows, name
        # Nothing but Parquet parts and densekit's `_`/`.` files beside them.
        others = [p.name for p in d.iterdir() if not p.name.endswith(".parquet") and p.name[0] not in "_."]
        assert not others, f"{name}: {others} would trip a reader"
    # The id column of the embeddings table as pandas sees it is densekit's order.
    emb = pd.read_parquet(outputs / "corpus_emb")
    assert emb["id"].tolist() == pd.read_parquet(outputs / "task" / "corpus")["pid"].tolist()


def test_every_table_reads_with_ray_data(outputs):
    import ray.data

    for name, d in tables(outputs).items():
        assert ray.data.read_parquet(str(d)).count() == read_manifest(d)["rows"], name


# --- outputs of an earlier densekit (manifest.json, config.yaml) ----------------------------------


def _legacy_output(out: Path, cfg) -> Path:
    """An output as densekit wrote it before the `_` names: config.yaml listed in manifest.json."""
    out.mkdir(parents=True)
    (out / "data.txt").write_text("rows\n")
    (out / LEGACY_CONFIG).write_text(config_to_yaml(cfg))
    write_manifest(out, "generate")
    (out / MANIFEST).rename(out / LEGACY_MANIFEST)
    assert "config.yaml" in json.loads((out / LEGACY_MANIFEST).read_text())["files"]
    return out


def test_an_earlier_output_still_reads_verifies_and_is_guarded(tmp_path):
    cfg = GenerateConfig(output=str(tmp_path / "old"))
    out = _legacy_output(tmp_path / "old", cfg)
    assert is_complete(out) and read_manifest(out)["step"] == "generate"
    assert output_owner(out) == "generate"
    assert prepare_output(out, cfg) is False  # complete for this config: nothing to redo
    with pytest.raises(ConfigError, match="differs in: seed"):
        prepare_output(out, GenerateConfig(output=str(out), seed=5))
    (out / "data.txt").write_text("ROWS\n")
    with pytest.raises(ChangedArtifactError, match="does not match its sha256 in manifest.json"):
        read_manifest(out)
    # Rewritten: the new names only, nothing of the old ones left behind.
    assert prepare_output(out, GenerateConfig(output=str(out), seed=5), overwrite=True) is True
    write_manifest(out, "generate")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([".densekit-output", CONFIG, MANIFEST]), names


def test_an_earlier_partial_output_resumes_under_the_new_names(tmp_path):
    cfg = GenerateConfig(output=str(tmp_path / "old"))
    out = tmp_path / "old"
    out.mkdir()
    (out / LEGACY_CONFIG).write_text(config_to_yaml(cfg))  # an older densekit stopped part-way
    (out / "shard-0.parquet").write_text("done")
    assert prepare_output(out, cfg, keep_partial=True) is True
    assert (out / "shard-0.parquet").exists() and (out / CONFIG).exists() and not (out / LEGACY_CONFIG).exists()


def test_an_earlier_output_fingerprints_as_its_rewrite(tmp_path):
    """A method run compares its inputs by content: the same files under the new names are no change."""
    from densekit.stage_status import input_fingerprints

    cfg = GenerateConfig(output=str(tmp_path / "old"))
    old = _legacy_output(tmp_path / "old", cfg)
    new = tmp_path / "new"
    shutil.copytree(old, new)
    (new / LEGACY_CONFIG).rename(new / CONFIG)
    (new / LEGACY_MANIFEST).unlink()
    write_manifest(new, "generate")
    a, b = input_fingerprints({"x": str(old)}), input_fingerprints({"x": str(new)})
    assert a == b and a["x"].startswith("c1:")


# --- docs/reading-outputs.md: its snippets run on a real run folder -------------------------------


def test_reading_outputs_doc_snippets_run(outputs, tmp_path, monkeypatch, capsys):
    import re
    import shlex

    page = (ROOT / "docs" / "reading-outputs.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(\w+)\n(.*?)```", page, flags=re.S)
    assert [lang for lang, _ in blocks] == ["python", "bash", "python"], "the page's snippets changed: update this test"
    shutil.copytree(outputs, tmp_path / "runs" / "x", symlinks=True)
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # the commands name configs/... as from the repo
    monkeypatch.chdir(tmp_path)
    for lang, code in blocks:
        if lang == "bash":
            for line in code.strip().splitlines():
                assert main(shlex.split(line)[1:]) == 0, line
        else:
            namespace: dict = {}
            exec(compile(code, "reading-outputs.md", "exec"), namespace)
            if "corpus" in namespace:  # the first snippet: every table read whole
                assert len(namespace["corpus"]) == read_manifest("runs/x/task/corpus")["rows"]
                assert len(namespace["run"]) == read_manifest("runs/x/run")["rows"]
                assert namespace["emb"].num_rows == read_manifest("runs/x/corpus_emb")["rows"]
                assert namespace["groups"].count() == read_manifest("runs/x/groups")["rows"]
            else:
                assert len(namespace["ids"]) == len(namespace["vectors"]) == len(namespace["labels"])
                # The merged Flat index answers as brute force over the exported vectors.
                vectors, ids = namespace["vectors"], namespace["ids"]
                best = (vectors[:3] @ vectors.T).argmax(axis=1)
                assert [namespace["labels"][r] for r in namespace["rows"][:, 0]] == [ids[i] for i in best]
                assert namespace["trec_run"] and namespace["qrels"]
    assert "ndcg_cut_10" in capsys.readouterr().out
