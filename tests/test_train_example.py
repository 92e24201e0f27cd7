"""The training example runs and its loss falls (attention: the reference path on a CPU, the
kernels on a GPU; the kernels' gradients are tested against float64 autograd in tests/runtime)."""
import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
EXAMPLE = Path(__file__).parent.parent / "examples" / "train_tiny_llama.py"


def test_training_example_loss_falls(capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the interpreter takes seconds a step
    spec = importlib.util.spec_from_file_location("train_tiny_llama", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main(["--steps", "60"]) == 0
    out = capsys.readouterr().out
    path = "Triton kernels" if torch.cuda.is_available() else "reference attention"
    assert path in out and "loss fell from" in out
