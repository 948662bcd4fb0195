"""`densekit build` (minimal, for the quickstart): a loadable encoder whose tokenizer knows the
task's words, a student sharing the teacher's tokenizer, and config errors before any work."""

from __future__ import annotations

import pyarrow as pa
import pytest

from densekit.artifacts import TableWriter, is_complete, write_manifest
from densekit.config import BuildConfig, load_config
from densekit.data import records as R
from densekit.errors import ConfigError
from densekit.pipelines.build import build

TEXTS = ["kibour tetrar stanru veti", "paisplaim zoki brunpour gaisbral", "lezai valche permu"]


def test_build_teacher_and_student(tmp_path):
    table = tmp_path / "corpus"
    with TableWriter(table, R.CORPUS_SCHEMA) as w:
        w.write(pa.table({R.PID: ["a", "b", "c"], R.TEXT: TEXTS, R.TITLE: ["", "zusku", ""]}, schema=R.CORPUS_SCHEMA))
    write_manifest(table, "test")
    build(load_config(BuildConfig, None, [f"texts=[{table}]", "layers=2", "hidden=32", f"output={tmp_path / 't'}"]))
    build(load_config(BuildConfig, None, [f"tokenizer_from={tmp_path / 't'}", "layers=1", "hidden=16",
                                          f"output={tmp_path / 's'}"]))
    from transformers import AutoModel, AutoTokenizer

    for name, layers, hidden in (("t", 2, 32), ("s", 1, 16)):
        assert is_complete(tmp_path / name)
        model = AutoModel.from_pretrained(str(tmp_path / name))
        assert (model.config.num_hidden_layers, model.config.hidden_size) == (layers, hidden)
    tok_t = AutoTokenizer.from_pretrained(str(tmp_path / "t"))
    tok_s = AutoTokenizer.from_pretrained(str(tmp_path / "s"))
    assert tok_t.get_vocab() == tok_s.get_vocab()
    for text in TEXTS + ["zusku"]:  # titles train the tokenizer too
        ids = tok_t(text)["input_ids"]
        assert tok_t.unk_token_id not in ids


@pytest.mark.parametrize("overrides, message", [
    (["output=x"], "either texts"),
    (["output=x", "texts=[a]", "tokenizer_from=b"], "either texts"),
    (["output=x", "texts=[a]", "hidden=30", "heads=4"], "divide"),
    (["output=x", "texts=[a]", "arch=bret"], "Did you mean 'bert'"),
])
def test_bad_configs(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(BuildConfig, None, overrides)
