"""Test-wide settings: Triton kernels run under the CPU interpreter unless a GPU is present."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
