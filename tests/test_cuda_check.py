"""bench/cuda_check.py, the CUDA/bf16 check of the encode and train paths, runs its CPU variant here
so it cannot rot before a GPU is at hand: the same TextEncoder and TrainModule code, fp32."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("cuda_check", ROOT / "bench" / "cuda_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_variant_encodes_and_trains(capsys):
    rc = _script().main(["--device", "cpu", "--texts", "48", "--steps", "8", "--batch-size", "16", "--lr", "3e-3"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and result["ok"], result
    assert result["encode"]["fp32_texts_per_s"] > 0
    train = result["train"]
    assert train["steps"] == 8 and not train["non_finite_steps"]
    assert train["loss_last"] < train["loss_first"]


def test_asking_for_cuda_without_it_says_so(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    assert _script().main(["--device", "cuda"]) == 2
    assert "CUDA is not available" in json.loads(capsys.readouterr().out)["error"]
