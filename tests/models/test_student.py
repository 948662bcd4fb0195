"""Students from teacher layers hold exactly those layers' weights, and differ from the teacher
only by the removed layers; projected students match the teacher's size; both save to HF and
sentence-transformers directories."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import AutoModel

from densekit.models import ModelSpec, build_model, load_model
from densekit.models.student import layer_stack_path, student_from_model, student_from_teacher
from densekit.models.tiny import build_tiny_model


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("teachers")
    texts = data.passages + data.queries
    return {
        a: build_tiny_model(root / a, texts, arch=a, layers=4, hidden=32, seed=5)
        for a in ("bert", "distilbert", "roberta")
    }


def _skip_layers(transformer: nn.Module, keep: list[int]) -> nn.Module:
    """The teacher with its other layers skipped (an independent reference for the student)."""
    ref = copy.deepcopy(transformer)
    parent_path, _, attr = layer_stack_path(ref).rpartition(".")
    parent = ref.get_submodule(parent_path)
    setattr(parent, attr, nn.ModuleList([getattr(parent, attr)[i] for i in keep]))
    return ref


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_student_holds_exactly_the_kept_layers(teachers, data, arch):
    teacher = build_model(ModelSpec(pooling="cls", head_dim=16), teachers[arch]).eval()
    student = student_from_teacher(teacher, layers=[0, 3]).eval()
    t_tr, s_tr = teacher.query_tower.transformer, student.query_tower.transformer
    assert s_tr.config.num_hidden_layers == 2 and student.spec.layer_map == [0, 3]
    prefix = layer_stack_path(t_tr) + "."
    t_sd, s_sd = t_tr.state_dict(), s_tr.state_dict()
    for key, value in s_sd.items():
        src = key
        if key.startswith(prefix):
            i, rest = key[len(prefix) :].split(".", 1)
            src = f"{prefix}{[0, 3][int(i)]}.{rest}"
        assert value.shape == t_sd[src].shape, key
        assert torch.equal(value, t_sd[src]), key
    assert (
        len([k for k in s_sd if k.startswith(prefix)])
        == len([k for k in t_sd if k.startswith(prefix)]) // 2
    )
    for a, b in zip(student.query_tower.head.parameters(), teacher.query_tower.head.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()  # a copy, not shared
    # embeddings = the teacher run with layers 1 and 2 skipped
    enc = teacher.tokenize_passages(data.passages)
    ref = _skip_layers(t_tr, [0, 3]).eval()
    with torch.no_grad():
        expected = teacher.query_tower.head(ref(**enc).last_hidden_state[:, 0])
        torch.testing.assert_close(student.encode_passages(**enc), expected)
        assert not torch.allclose(teacher.encode_passages(**enc), expected, atol=1e-3)


def test_first_n_layers_and_kinds(teachers, data):
    for kind in ("colbert", "cross_encoder"):
        teacher = build_model(ModelSpec(kind=kind, colbert_dim=8), teachers["bert"]).eval()
        student = student_from_teacher(teacher, num_layers=2)
        assert (
            type(student) is type(teacher)
            and student.spec.layer_map == [0, 1]
            and student.num_layers == 2
        )
    with pytest.raises(ValueError, match=r"layers \[4\] out of range: the teacher has 4 layers"):
        student_from_teacher(teacher, layers=[0, 4])
    with pytest.raises(ValueError, match="strictly increasing"):
        student_from_teacher(teacher, layers=[3, 0])
    assert student_from_teacher(teacher, layers=[0, -1]).spec.layer_map == [0, 3]


def test_student_saves_for_hf_and_sentence_transformers(tmp_path, teachers, data):
    from sentence_transformers import SentenceTransformer

    build_model(
        ModelSpec(pooling="mean", normalize=True, similarity="cosine"), teachers["bert"]
    ).save(tmp_path / "teacher")
    student = student_from_teacher(tmp_path / "teacher", layers=[0, 3]).eval()
    assert student.spec.teacher == str(tmp_path / "teacher")
    student.save(tmp_path / "student")
    assert AutoModel.from_pretrained(str(tmp_path / "student")).config.num_hidden_layers == 2
    loaded = load_model(tmp_path / "student")
    assert loaded.spec.layer_map == [0, 3] and loaded.spec.pooling == "mean"
    with torch.no_grad():
        ours = loaded.encode_queries(**loaded.tokenize_queries(data.queries))
    st = SentenceTransformer(str(tmp_path / "student"), device="cpu").encode(
        data.queries, convert_to_tensor=True
    )
    torch.testing.assert_close(st, ours, atol=1e-5, rtol=1e-4)


def test_projected_student_from_another_model(tmp_path, teachers, data):
    from sentence_transformers import SentenceTransformer

    small = build_tiny_model(
        tmp_path / "small",
        [],
        layers=1,
        hidden=16,
        heads=2,
        intermediate=32,
        tokenizer_from=teachers["bert"],
    )
    teacher = build_model(ModelSpec(pooling="cls", head_dim=24), teachers["bert"])
    student = student_from_model(small, teacher).eval()
    assert student.dim == teacher.dim == 24 and student.query_tower.hidden_size == 16
    student.save(tmp_path / "student")
    with torch.no_grad():
        ours = student.encode_queries(**student.tokenize_queries(data.queries))
    assert ours.shape == (3, 24)
    st = SentenceTransformer(str(tmp_path / "student"), device="cpu").encode(
        data.queries, convert_to_tensor=True
    )
    torch.testing.assert_close(st, ours, atol=1e-5, rtol=1e-4)
