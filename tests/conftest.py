"""Test-session setup shared by every test directory.

Without a GPU the Triton kernels run under Triton's interpreter, which triton reads from
``TRITON_INTERPRET`` when ``@triton.jit`` decorates a kernel, i.e. when ``ops.kernels`` is
first imported. pytest imports this file before any test module, so setting it here is early
enough. It only changes how Triton kernels run: ``import ops`` never imports triton, and the
default backend on CPU tensors stays PyTorch. ``setdefault`` leaves an explicit choice alone.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
