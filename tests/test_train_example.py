"""The training example runs and its loss falls (attention: the reference path on a CPU, the
kernels on a GPU; the kernels' gradients are tested against float64 autograd in tests/runtime)."""
import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
EXAMPLE = Path(__file__).parent.parent / "examples" / "train_tiny_llama.py"


def load_example():
    spec = importlib.util.spec_from_file_location("train_tiny_llama", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def test_training_example_loss_falls(capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the interpreter takes seconds a step
    assert load_example().main(["--steps", "60"]) == 0
    out = capsys.readouterr().out
    path = "Triton kernels" if torch.cuda.is_available() else "reference attention"
    assert path in out and "loss fell from" in out


def test_training_example_on_packed_rows(capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    example = load_example()
    generator = torch.Generator().manual_seed(1)
    ids, positions, labels = example.packed_batch(3, 100, 8, 50, generator)
    starts = positions == 0
    assert ids.shape == positions.shape == labels.shape == (3, 100)
    assert bool(starts[:, 0].all()) and int(starts.sum()) > 3  # several documents per row
    assert torch.equal(labels == -100, starts) and torch.equal(labels[~starts], ids[~starts])
    assert example.main(["--steps", "60", "--packed"]) == 0
    out = capsys.readouterr().out
    assert "packed documents" in out and "loss fell from" in out
