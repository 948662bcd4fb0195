"""Every method file under configs/methods loads and validates without its data (`densekit run
--dry-run`): the stages, their inputs and outputs are printed, nothing is written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from densekit.config import ConfigError
from densekit.methods import load_method, run

ROOT = Path(__file__).resolve().parents[2]
METHOD_FILES = sorted((ROOT / "configs" / "methods").glob("*.yaml")) + sorted((ROOT / "configs" / "methods" / "real").glob("*.yaml"))
SMALL = ("margin_mse", "query_align", "prod", "lead", "star_adore")


DOCUMENTS = ("prod", "lead", "star_adore")  # the methods whose papers report MS MARCO documents


def test_the_five_small_methods_and_their_full_versions_exist():
    names = {p.stem for p in METHOD_FILES}
    assert set(SMALL) <= names
    for m in SMALL:
        assert f"{m}_msmarco" in names, f"no full-scale config for {m}"
    for m in DOCUMENTS:
        assert f"{m}_msmarco_doc" in names, f"no MS MARCO documents config for {m}"


def _train_lengths(method) -> dict[str, int]:
    return {name: st.set["model"]["max_passage_length"] for name, st in method.stages.items()
            if st.step == "train" and "max_passage_length" in st.set.get("model", {})}


@pytest.mark.parametrize("name", DOCUMENTS)
def test_document_versions_run_the_passage_stages_over_the_documents(name):
    methods = ROOT / "configs" / "methods"
    passage, doc = load_method(methods / f"{name}_msmarco.yaml"), load_method(methods / f"{name}_msmarco_doc.yaml")
    # The same stages in the same order, into their own run folder.
    assert [(n, s.step) for n, s in doc.stages.items()] == [(n, s.step) for n, s in passage.stages.items()]
    assert doc.output != passage.output and doc.scale == "full" and doc.gpu_hours
    assert set(doc.results) == set(passage.results)
    # The data stages read the document files...
    assert Path(doc.stages["corpus"].config).name == "msmarco_docs.yaml"
    assert doc.stages["corpus"].set["path"].endswith("msmarco-docs.tsv")
    assert doc.stages["queries_dev"].set["path"].endswith("msmarco-docdev-queries.tsv")
    assert doc.stages["qrels_dev"].set["path"].endswith("msmarco-docdev-qrels.tsv")
    # ...every model that sets a passage length reads the document's first max_passage_length tokens
    # (PROD keeps its passage lengths, as its README does), and the passage file is untouched.
    doc_len, pas_len = _train_lengths(doc), _train_lengths(passage)
    assert doc_len and doc_len.keys() == pas_len.keys()
    assert all(doc_len[k] >= pas_len[k] for k in doc_len), (doc_len, pas_len)
    assert name == "prod" or all(doc_len[k] == doc.vars["max_passage_length"] for k in doc_len)
    assert Path(passage.stages["corpus"].config).name == "msmarco_passages.yaml"
    # The documents' official measure is MRR@100.
    assert any("mrr@100" in st.set.get("metrics", []) for st in doc.stages.values() if st.step == "evaluate")


def test_a_vars_override_swaps_an_included_file():
    # `include: ["${vars.data}"]` resolves with the overriding vars: the command line can point a
    # passage method at the document data.
    path = ROOT / "configs" / "methods" / "star_adore_msmarco.yaml"
    method = load_method(path, ["vars.data=msmarco_doc_data.yaml"])
    assert Path(method.stages["corpus"].config).name == "msmarco_docs.yaml"
    assert Path(load_method(path).stages["corpus"].config).name == "msmarco_passages.yaml"
    # A var only the swapped-in file declares is accepted with it, refused without it.
    assert load_method(path, ["vars.data=msmarco_doc_data.yaml", "vars.bm25_depth=50"])
    with pytest.raises(ConfigError, match="unknown var 'bm25_depth'"):
        load_method(path, ["vars.bm25_depth=50"])


@pytest.mark.parametrize("path", METHOD_FILES, ids=lambda p: p.stem)
def test_dry_run_without_data(path, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative data and run folders resolve to an empty directory
    out = tmp_path / "run"
    assert run([str(path), f"output={out}", "--dry-run"]) == 0
    text = capsys.readouterr().out
    method = load_method(path, [f"output={out}"])
    # Every stage is listed with its output under the run folder, in order.
    listed = re.findall(r"^\s*\d+\. (\w+): (\w+)", text, flags=re.M)
    assert listed == [(name, stage.step) for name, stage in method.stages.items()]
    for name in method.stages:
        assert f"out {out / name}\n" in text
    assert "unset" not in text, f"{path.name}: a stage leaves a required value unset"
    for label, ref in method.results.items():
        assert f"result {label}: {ref}" in text
    assert method.data or method.scale == "small", f"{path.name}: a full-scale file says what data it expects"
    if method.scale == "full" and method.results:
        # The full-scale methods (not the shared data file) also say what they cost.
        assert method.gpu_hours and method.gpu_hours > 0
        assert "estimated GPU hours" in text and "expects " in text
    assert not out.exists(), "--dry-run wrote into the run folder"


@pytest.mark.parametrize("path", [p for p in METHOD_FILES if "include:" in p.read_text()], ids=lambda p: p.stem)
def test_dry_run_from_the_repository_root(path, tmp_path, capsys, monkeypatch):
    # As the README runs them: `densekit run configs/methods/<file>.yaml` from the repository root.
    # A stage `config:` of a file included through another include must resolve from its own file.
    monkeypatch.chdir(ROOT)
    assert run([str(path.relative_to(ROOT)), f"output={tmp_path / 'run'}", "--dry-run"]) == 0
    for line in capsys.readouterr().out.splitlines():
        if "(config " in line:
            config = Path(line.split("(config ", 1)[1].rstrip(")"))
            # ... or a file an earlier stage writes into the run folder (a search's best_config.yaml).
            assert config.is_file() or config.is_relative_to(tmp_path / "run"), line


@pytest.mark.parametrize("name", SMALL)
def test_small_methods_share_the_common_stages_and_compare_with_the_baseline(name):
    path = ROOT / "configs" / "methods" / f"{name}.yaml"
    common = load_method(ROOT / "configs" / "methods" / "small_common.yaml")
    method = load_method(path)
    assert method.scale == "small" and method.output == common.output
    # The common stages come first, with the very same settings (so a shared run folder reuses them).
    assert list(method.stages)[: len(common.stages)] == list(common.stages)
    for stage in common.stages:
        assert method.stages[stage].set == common.stages[stage].set, stage
    assert method.results["baseline"] == "@baseline_eval"
    students = [label for label in method.results if label.endswith("_student")]
    assert students, f"{name}: results name no student"
    # The method's own stages are new (a name shared with another method would collide in the folder).
    own = [s for s in method.stages if s not in common.stages]
    assert own and all(s not in common.stages for s in own)


def test_small_methods_own_stage_names_do_not_collide():
    common = set(load_method(ROOT / "configs" / "methods" / "small_common.yaml").stages)
    seen: dict[str, str] = {}
    for name in SMALL:
        for stage in load_method(ROOT / "configs" / "methods" / f"{name}.yaml").stages:
            if stage in common:
                continue
            assert stage not in seen, f"stage {stage} in both {seen.get(stage)} and {name}"
            seen[stage] = name


def test_references_inside_a_list_of_mappings_are_resolved(tmp_path, capsys):
    # score's teachers: [{model: "@stage/model"}] (margin_mse, prod): the runner resolves it.
    out = tmp_path / "run"
    assert run([str(ROOT / "configs" / "methods" / "margin_mse.yaml"), f"output={out}", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert f"in  teachers[0].model = {out / 'mmse_ce'}/model" in text


def test_command_line_overrides_reach_the_included_stages():
    # `densekit run margin_mse.yaml stages.warmup.set.optim.lr=...`: warmup is defined in the
    # included small_common.yaml, and the override must change it there (not start a new stage).
    path = ROOT / "configs" / "methods" / "margin_mse.yaml"
    method = load_method(path, ["stages.warmup.set.optim.lr=0.5", "stages.mmse.set.optim.lr=0.25",
                                "stages.student_init.set.hidden=64", "vars.steps=7"])
    assert method.stages["warmup"].set["optim"]["lr"] == 0.5
    assert method.stages["warmup"].step == "train"
    assert method.stages["student_init"].set["hidden"] == 64
    assert method.stages["mmse"].set["optim"]["lr"] == 0.25
    plain = load_method(path)
    assert plain.stages["warmup"].set["optim"]["lr"] != 0.5
    assert method.vars["steps"] == 7
    # A stage no file defines is still refused, with the missing key named.
    with pytest.raises(Exception, match=r"stages\.nosuch"):
        load_method(path, ["stages.nosuch.set.x=1"])


def test_a_vars_override_reaches_a_file_included_two_levels_down():
    # query_align.yaml includes real_groups.yaml, which includes real_common.yaml: only the last
    # declares sentence_queries (the trainset's unjudged sentences), and the command line's value
    # must reach it (it was dropped at real_groups.yaml, which does not declare it).
    path = ROOT / "configs" / "methods" / "real" / "query_align.yaml"
    assert load_method(path).stages["train_data"].set["sentence_queries"] == 20000
    method = load_method(path, ["vars.sentence_queries=5000", "vars.teacher=all-mpnet-base-v2"])
    assert method.stages["train_data"].set["sentence_queries"] == 5000
    # A var two files declare still reaches both: the teacher of the shared and of the own stages.
    assert method.stages["teacher_emb_scifact"].set["model"].endswith("/all-mpnet-base-v2")
    assert method.stages["qa"].set["model"]["path"].endswith("/all-mpnet-base-v2")
    # A var no file of the method declares is a typo, not a silent no-op.
    with pytest.raises(ConfigError, match=r"vars.sentence_query: unknown var 'sentence_query'.*Did you mean 'sentence_queries'"):
        load_method(path, ["vars.sentence_query=5000"])


def test_a_stage_setting_can_be_removed_on_the_command_line():
    # Swap a stage's loss: `~stages.mmse.set.losses.margin_mse stages.mmse.set.losses.nll.weight=1`;
    # in an included file's stage too.
    path = ROOT / "configs" / "methods" / "margin_mse.yaml"
    method = load_method(path, ["~stages.mmse.set.losses.margin_mse", "stages.mmse.set.losses.nll.weight=1",
                                "~stages.baseline.set.losses.contrastive", "stages.baseline.set.losses.nll.weight=1"])
    assert method.stages["mmse"].set["losses"] == {"nll": {"weight": 1}}
    assert method.stages["baseline"].set["losses"] == {"nll": {"weight": 1}}
    assert "margin_mse" in load_method(path).stages["mmse"].set["losses"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_file_reached_through_two_includes_gives_its_stages_once(tmp_path):
    # tuned_teacher.yaml includes margin_mse.yaml and query_align.yaml, which both include
    # real_groups.yaml (a diamond): its stages come once, in their place, with both methods' own.
    tt = load_method(ROOT / "configs" / "methods" / "real" / "tuned_teacher.yaml")
    names = list(tt.stages)
    assert len(names) == len(set(names))
    for shared in ("train_data", "teacher_index_scifact", "hard_groups", "baseline"):
        assert shared in tt.stages
    assert names.index("hard_groups") < names.index("mm_twin") < names.index("qa_twin") < names.index("qa_tt")
    assert tt.stages["qa_tt"].set["data"]["teacher_embeddings"] == "@tt_train_queries"
    # The same diamond with files of its own: the shared stage once...
    _write(tmp_path / "common.yaml", "name: c\noutput: o\nvars: {lr: 0.1}\n"
           "stages: {prep: {step: import, config: prep.yaml, set: {lr: '${vars.lr}'}}}\n")
    _write(tmp_path / "a.yaml", "name: a\noutput: o\ninclude: [common.yaml]\nstages: {a: {step: train}}\n")
    _write(tmp_path / "b.yaml", "name: b\noutput: o\ninclude: [common.yaml]\nstages: {b: {step: train}}\n")
    top = load_method(_write(tmp_path / "top.yaml", "name: t\noutput: o\ninclude: [a.yaml, b.yaml]\n"))
    assert list(top.stages) == ["prep", "a", "b"]
    assert top.stages["prep"].config == str(tmp_path.resolve() / "prep.yaml")  # from its own file
    # (also when the shared file is included directly after a file that includes it)
    both = load_method(_write(tmp_path / "top1.yaml", "name: t\noutput: o\ninclude: [a.yaml, common.yaml]\n"))
    assert list(both.stages) == ["prep", "a"]
    # ...but a name two files define differently is still refused, naming both files,
    _write(tmp_path / "c.yaml", "name: c2\noutput: o\nstages: {prep: {step: import, set: {lr: 0.2}}}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: stage 'prep' is also defined in .*a\.yaml"):
        load_method(_write(tmp_path / "top2.yaml", "name: t\noutput: o\ninclude: [a.yaml, c.yaml]\n"))
    # and so is the same file reached with other vars (its stage would differ between the two):
    # the including file is told to choose the var.
    _write(tmp_path / "b2.yaml", "name: b2\noutput: o\ninclude: [common.yaml]\nvars: {lr: 0.3}\n"
           "stages: {b: {step: train}}\n")
    with pytest.raises(ConfigError, match=r"vars\.lr is 0\.1 in a\.yaml and 0\.3 in b2\.yaml; declare it in top3\.yaml"):
        load_method(_write(tmp_path / "top3.yaml", "name: t\noutput: o\ninclude: [a.yaml, b2.yaml]\n"))


def test_an_including_files_stages_use_the_included_files_vars(tmp_path):
    # tuned_teacher.yaml declares only its own vars; its qa_tt stage reads query_align.yaml's.
    tt = load_method(ROOT / "configs" / "methods" / "real" / "tuned_teacher.yaml")
    qa = load_method(ROOT / "configs" / "methods" / "real" / "query_align.yaml")
    assert tt.stages["qa_tt"].set["optim"]["max_steps"] == qa.vars["qa_steps"]
    _write(tmp_path / "common.yaml", "name: c\noutput: o\nvars: {lr: 0.1, steps: 5}\n"
           "stages: {prep: {step: import, set: {lr: '${vars.lr}'}}}\n")
    top = "name: t\noutput: o\ninclude: [common.yaml]\nstages: {a: {step: train, set: {s: '${vars.steps}', lr: '${vars.lr}'}}}\n"
    m = load_method(_write(tmp_path / "top.yaml", top))
    assert m.stages["a"].set == {"s": 5, "lr": 0.1} and m.vars == {"lr": 0.1, "steps": 5}
    # The command line's value reaches both files' stages; the including file's own value wins too.
    m = load_method(tmp_path / "top.yaml", ["vars.steps=7", "vars.lr=0.5"])
    assert m.stages["a"].set == {"s": 7, "lr": 0.5} and m.stages["prep"].set == {"lr": 0.5}
    m = load_method(_write(tmp_path / "top_own.yaml", top.replace("stages:", "vars: {lr: 0.2}\nstages:")))
    assert m.stages["a"].set["lr"] == 0.2 and m.stages["prep"].set == {"lr": 0.2}
    # Two includes that disagree on a var the including file leaves to them: it must choose.
    _write(tmp_path / "other.yaml", "name: o\noutput: o\nvars: {steps: 9}\nstages: {b: {step: train}}\n")
    bad = top.replace("[common.yaml]", "[common.yaml, other.yaml]")
    with pytest.raises(ConfigError, match=r"vars\.steps is 5 in common\.yaml and 9 in other\.yaml; declare it in top2\.yaml"):
        load_method(_write(tmp_path / "top2.yaml", bad))
    chosen = load_method(_write(tmp_path / "top3.yaml", bad.replace("stages:", "vars: {steps: 6}\nstages:")))
    assert chosen.stages["a"].set["s"] == 6
    # A var no file declares is still an error, naming the stage's key.
    with pytest.raises(ConfigError, match=r"top4\.yaml: stages\.a\.set\.s: .*vars\.nope"):
        load_method(_write(tmp_path / "top4.yaml", top.replace("vars.steps", "vars.nope")))


def test_an_edited_file_is_read_again_and_a_loaded_one_is_not_changed(tmp_path):
    # Method files and their includes are parsed once per content (a method's includes are read by
    # every file that includes them): an edit of the same size, in the same instant, must be seen.
    common = _write(tmp_path / "common.yaml", "name: c\noutput: o\nvars: {lr: 0.1}\n"
                    "stages: {prep: {step: import, set: {lr: '${vars.lr}', keep: 1}}}\n")
    top = _write(tmp_path / "top.yaml", "name: t\noutput: o\ninclude: [common.yaml]\n")
    assert load_method(top).stages["prep"].set == {"lr": 0.1, "keep": 1}
    common.write_text(common.read_text().replace("0.1", "0.7"))
    assert load_method(top).stages["prep"].set == {"lr": 0.7, "keep": 1}
    # Removing a setting on the command line, or changing what a load returned, leaves the next load whole.
    m = load_method(top, ["~stages.prep.set.keep"])
    assert m.stages["prep"].set == {"lr": 0.7}
    m.vars["lr"] = 9.0
    m.stages["prep"].set["lr"] = 9.0
    again = load_method(top)
    assert again.stages["prep"].set == {"lr": 0.7, "keep": 1} and again.vars == {"lr": 0.7}
