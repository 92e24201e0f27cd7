"""Test-wide settings: Triton kernels run under the CPU interpreter unless a GPU is present,
and generated kernels, layouts and tuning results go to a private cache."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    old = os.environ.get("SPATTN_CACHE")
    os.environ["SPATTN_CACHE"] = str(tmp_path_factory.mktemp("spattn-cache"))
    yield
    if old is None:
        os.environ.pop("SPATTN_CACHE", None)
    else:
        os.environ["SPATTN_CACHE"] = old
