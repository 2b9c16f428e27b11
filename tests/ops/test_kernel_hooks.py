"""The two seams of ``ops.kernels`` that ``scripts/check_gpu.py`` builds on.

``ops.kernels._rows.launch`` is the one function every kernel launch goes through, and
``ops.kernels.record_iterations`` collects the threshold search's per-row iteration counts.
Run on CPU tensors under Triton's interpreter (``tests/conftest.py``).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

import ops  # noqa: E402
from ops.kernels import _rows, record_iterations  # noqa: E402


@pytest.fixture
def triton_backend(monkeypatch):
    monkeypatch.setenv("ENTROPY_RL_OPS_BACKEND", "triton")


def _inputs(N=5, V=37, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(N, V, generator=gen) * 2
    a = torch.randint(0, V, (N,), generator=gen)
    A = torch.randn(N, generator=gen)
    old = torch.randn(N, generator=gen) - 3
    return z, a, A, old


def _every_op(z, a, A, old, alpha):
    zg = z.clone().requires_grad_()
    ops.entropy(zg, alpha=alpha).sum().backward()
    zg = z.clone().requires_grad_()
    ops.probs(zg, alpha=alpha).pow(2).sum().backward()
    ops.pg_loss(z.clone().requires_grad_(), a, A, beta=0.1, alpha=alpha).loss.backward()
    ops.ppo_loss(z.clone().requires_grad_(), a, A, old, beta=0.1, alpha=alpha).loss.backward()


@pytest.mark.parametrize("alpha", [1.0, 1.5])
def test_every_launch_goes_through_launch(monkeypatch, triton_backend, alpha):
    seen = []
    real = _rows.launch

    def spy(kernel, grid, *args, **kwargs):
        seen.append(kernel.__name__ if hasattr(kernel, "__name__") else kernel.fn.__name__)
        return real(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(_rows, "launch", spy)
    z, a, A, old = _inputs()
    _every_op(z, a, A, old, alpha)
    names = set(seen)
    assert {"_entropy_forward_kernel", "_entropy_backward_kernel", "_probs_forward_kernel",
            "_probs_backward_kernel", "_policy_loss_forward_kernel"} <= names, names


def test_launch_is_the_only_way_kernels_run(monkeypatch, triton_backend):
    """With ``launch`` replaced by a no-op nothing is computed: no launcher bypasses it."""
    calls = []
    monkeypatch.setattr(_rows, "launch", lambda kernel, grid, *a, **k: calls.append(kernel))
    monkeypatch.setattr(_rows, "empty", lambda shape, dtype, device: torch.full(
        shape if isinstance(shape, tuple) else (shape,),
        float("nan") if dtype.is_floating_point else -7, dtype=dtype, device=device))
    z, a, A, _ = _inputs()
    with pytest.raises(ValueError, match="NaN"):  # the unwritten (NaN) row maxima
        ops.entropy(z, alpha=1.5)
    assert len(calls) == 1


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.3, 2.5])
def test_record_iterations(triton_backend, alpha):
    z, a, A, old = _inputs(N=6, V=300, seed=int(alpha * 10))
    z[0, 1:] = float("-inf")  # one allowed action: tau needs no search
    a[0] = 0
    with record_iterations() as records:
        _every_op(z, a, A, old, alpha)
    ops_seen = [r["op"] for r in records]
    assert sorted(ops_seen) == ["entropy", "pg", "ppo", "probs"], ops_seen
    for r in records:
        assert r["alpha"] == alpha and r["N"] == 6 and r["V"] == 300
        it = r["iterations"]
        assert it.dtype == torch.int32 and it.shape == (6,) and it.device == z.device
        assert it[0] == 0 and bool((it[1:] >= 1).all()) and bool((it <= 64).all()), it


def test_record_iterations_only_inside_the_block_and_not_for_softmax(triton_backend):
    z, a, A, old = _inputs()
    with record_iterations() as records:
        _every_op(z, a, A, old, 1.0)
    assert records == []
    with record_iterations() as records:
        pass
    ops.entropy(z, alpha=1.5)
    assert records == [] and _rows._recorders == []
