"""The backend contract (``ops._contract``) and what it guarantees the kernels.

* Both backends implement ``Backend`` in full; each autograd Function runs its backward on the
  backend its forward ran on.
* Per-row arguments (per-row beta included) reach the backends as contiguous (N,) tensors
  whatever their form (Python scalar, 0-d, stride-0 broadcast, a strided column, a transposed
  view), and the logits and mask
  in one row-major layout: every public op under the Triton backend (Triton's interpreter on
  CPU tensors, ``tests/conftest.py``) equals the torch backend for every form, and a hypothesis
  test draws forms, shapes, dtypes and mappings.
* Finite extreme logits (their differences overflow) give finite, correct results in both
  backends.
* ``grad_buffer=logits`` still reports a masked (-inf) taken action.
* ``soft_policy_loss`` / ``soft_value``: their ``q_values`` (the logits' shape) in every layout
  (contiguous, transposed, column-strided, stride-0 broadcast) reach the kernel in the logits'
  row-major layout.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ops_helpers import gen, rows

import ops
from ops import reference
from ops._contract import Algorithm, Backend, LossInput, mapping

kb = pytest.importorskip("ops.kernels.backend")

LEAD, V = (2, 3), 7
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float64: dict(atol=2e-5, rtol=2e-5),
       # the gradient is stored in the logits' dtype: the interpreter truncates where torch
       # rounds, one ulp of it
       torch.bfloat16: dict(atol=2e-5, rtol=2.0**-7), torch.float16: dict(atol=2e-5, rtol=2.0**-10)}


# ------------------------------------------------------------------------------------------
# The contract itself
# ------------------------------------------------------------------------------------------


def test_both_backends_implement_the_protocol():
    assert isinstance(reference, Backend) and isinstance(kb, Backend)


def test_mapping_decides_the_algorithm_once():
    assert mapping(1.0, 1.0).algorithm == Algorithm.SOFTMAX
    assert mapping(2.0, 0.5).algorithm == Algorithm.SPARSEMAX
    assert mapping(1.5, 1.0).algorithm == Algorithm.ENTMAX15
    assert (mapping(1.3, 1.0).algorithm, mapping(1.3, 1.0).newton) == (Algorithm.ENTMAX, True)
    assert (mapping(2.5, 1.0).algorithm, mapping(2.5, 1.0).newton) == (Algorithm.ENTMAX, False)


def test_loss_input_materialises_per_row_operands():
    z = torch.randn(6, 5)
    wide = torch.randn(6, 3)
    inp = LossInput(rows(z, None, 1.0, 1.0), torch.zeros(3, 2, dtype=torch.int32).t(),
                    torch.tensor(2.0).expand(6), wide[:, 1], 0.1, need_grad=True,
                    old_log_prob=wide[:, 0].double(), clip_eps=0.2)
    for t in (inp.actions, inp.advantages, inp.row_scale, inp.old_log_prob):
        assert t.shape == (6,) and t.is_contiguous() and t.stride() == (1,)
    assert inp.actions.dtype == torch.int64 and inp.old_log_prob.dtype == torch.float32
    assert torch.equal(inp.row_scale, wide[:, 1]) and bool((inp.advantages == 2).all())
    with pytest.raises(ValueError, match="old_log_prob and clip_eps"):
        LossInput(rows(z, None, 1.0, 1.0), torch.zeros(6, dtype=torch.long), torch.ones(6),
                  torch.ones(6), 0.1, need_grad=False, clip_eps=0.2)


def test_functions_keep_the_backend_of_their_forward(monkeypatch):
    """A forward under the kernels and a backward after the choice changed: the saved state
    goes back to the backend that made it."""
    z = torch.randn(4, 9, generator=gen("keep"))
    want = {}
    for alpha in (1.0, 1.5):
        leaf = z.clone().requires_grad_()
        (ops.entropy(leaf, alpha=alpha).sum() + ops.probs(leaf, alpha=alpha)[:, 0].sum()).backward()
        want[alpha] = leaf.grad
    for alpha in (1.0, 1.5):
        monkeypatch.setenv("ENTROPY_RL_OPS_BACKEND", "triton")
        leaf = z.clone().requires_grad_()
        total = ops.entropy(leaf, alpha=alpha).sum() + ops.probs(leaf, alpha=alpha)[:, 0].sum()
        monkeypatch.setenv("ENTROPY_RL_OPS_BACKEND", "torch")
        total.backward()
        torch.testing.assert_close(leaf.grad, want[alpha], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------
# Every form of every per-row argument, logits and mask: triton == torch
# ------------------------------------------------------------------------------------------


def per_row_form(values, form):
    """``values`` (the logits' leading shape) as ``form``: the same numbers (scalar forms: the
    first one)."""
    lead = tuple(values.shape)
    if form == "tensor":
        return values.clone()
    if form == "scalar":
        return values.reshape(-1)[0].item()
    if form == "0-d":
        return values.reshape(-1)[0].clone()
    if form == "broadcast":  # stride 0
        return values.reshape(-1)[:1].reshape((1,) * len(lead)).expand(lead)
    if form == "strided":  # a column of a wider tensor
        return torch.stack([torch.full_like(values, 99), values, -values], -1)[..., 1]
    if form == "transposed":  # non-contiguous
        return values.transpose(0, 1).contiguous().transpose(0, 1)
    raise AssertionError(form)


def logits_form(z, form):
    if form == "contiguous":
        return z.clone()
    if form == "transposed":  # leading dims swapped: rows not in memory order
        return z.transpose(0, 1).contiguous().transpose(0, 1)
    if form == "column-strided":  # every other column of a wider tensor
        return torch.stack([z, torch.full_like(z, 1e4)], -1).reshape(*z.shape[:-1], -1)[..., ::2]
    raise AssertionError(form)


def mask_form(mask, form):
    if form == "none":
        return None
    if form == "contiguous":
        return mask.clone()
    if form == "transposed":
        return mask.transpose(0, 1).contiguous().transpose(0, 1)
    if form == "broadcast":  # one mask row for every row: stride 0
        return mask[:1, :1].expand(mask.shape)
    raise AssertionError(form)


def base_case(key, lead=LEAD, n_act=V, dtype=torch.float32, alpha=1.0):
    g = gen(*key)
    z = (torch.randn(*lead, n_act, generator=g) * 2).to(dtype)
    mask = torch.rand(*lead, n_act, generator=g) < 0.75
    mask[..., 0] = True
    p = ops.probs(z.double().masked_fill(~mask, float("-inf")), alpha=alpha)
    actions = torch.multinomial(p.reshape(-1, n_act), 1, generator=g).reshape(lead)
    return dict(
        z=z, mask=mask, actions=actions,
        advantages=torch.randn(lead, generator=g),
        old_log_prob=p.gather(-1, actions[..., None])[..., 0].log().float()
        + 0.3 * torch.randn(lead, generator=g),
        weights=torch.rand(lead, generator=g) + 0.1,
        # per-row beta values; a case uses them only when a test puts them in "beta"
        beta_rows=torch.rand(lead, generator=g) * 0.5,
        q=torch.randn(*lead, n_act, generator=g) * 3,
    )


def run_public(op, args, alpha, temperature, beta=0.3, clip_eps=0.2):
    """One public op with a backward; its outputs and the logits' gradient, detached.
    ``args["beta"]``, when present, replaces ``beta`` (a per-row form)."""
    z = args["z"].detach().clone().requires_grad_()
    if op == "probs":
        out = ops.probs(z, alpha=alpha, temperature=temperature, mask=args["mask"])
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        res = [out]
    elif op == "entropy":
        out = ops.entropy(z, alpha=alpha, temperature=temperature, mask=args["mask"])
        (out * torch.linspace(-1, 2, out.numel()).reshape(out.shape)).sum().backward()
        res = [out]
    elif op == "soft":
        out = ops.soft_policy_loss(z, args["q"], beta=beta, alpha=alpha, temperature=temperature,
                                   mask=args["mask"], weights=args["weights"])
        out.loss.backward()
        assert out.log_prob is None
        res = [out.loss, out.entropy, out.support_size, out.grad_norm_policy,
               out.grad_norm_entropy]
    elif op == "soft_value":  # no gradient: the values only
        out = ops.soft_value(z, args["q"], beta=beta, alpha=alpha, temperature=temperature,
                             mask=args["mask"])
        assert not out.requires_grad
        return [out]
    else:
        extra = (args["old_log_prob"],) if op == "ppo" else ()
        kw = dict(clip_eps=clip_eps) if op == "ppo" else {}
        out = getattr(ops, f"{op}_loss")(z, args["actions"], args["advantages"], *extra,
                                         beta=args.get("beta", beta), alpha=alpha, temperature=temperature,
                                         mask=args["mask"], weights=args["weights"], **kw)
        out.loss.backward()
        res = [out.loss, out.entropy, out.log_prob, out.support_size, out.grad_norm_policy,
               out.grad_norm_entropy, out.loss_rows, out.grad_sq_policy, out.grad_sq_entropy]
        if op == "ppo":
            res += [out.ratio, out.clipped]
    return [r.detach() for r in res] + [z.grad]


def assert_backends_agree(monkeypatch, op, args, alpha, temperature, dtype=torch.float32):
    monkeypatch.setenv("ENTROPY_RL_OPS_BACKEND", "torch")
    want = run_public(op, args, alpha, temperature)
    monkeypatch.setenv("ENTROPY_RL_OPS_BACKEND", "triton")
    assert ops.backend_for(args["z"]) is kb
    got = run_public(op, args, alpha, temperature)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.dtype == w.dtype and g.shape == w.shape, (op, i)
        if not g.is_floating_point():
            assert torch.equal(g, w), (op, i, g, w)
            continue
        last = i == len(got) - 1 and op != "soft_value"  # the gradient, in the logits' dtype
        tol = TOL[dtype if last or op == "probs" else torch.float32]
        scale = float(w.abs().max()) if w.numel() else 0.0
        torch.testing.assert_close(g, w, atol=tol["atol"] * max(scale, 1.0), rtol=tol["rtol"],
                                   msg=lambda m, op=op, i=i: f"{op} output {i}: {m}")


@pytest.mark.parametrize(("name", "form"), [
    (name, form) for name in ("advantages", "old_log_prob", "weights", "actions", "beta")
    for form in ("scalar", "0-d", "broadcast", "strided", "transposed")
    # actions have the logits' leading shape: no scalar form
    if not (name == "actions" and form in ("scalar", "0-d"))])
def test_per_row_forms(monkeypatch, name, form):
    """The defect this guards: a scalar advantage read as a stride-0 view gave a loss of 1.2e34,
    a column of a (N, 3) tensor read the wrong rows."""
    args = base_case(("forms", name, form))
    args[name] = per_row_form(args["beta_rows" if name == "beta" else name], form)
    # a broadcast action is row 0's: allowed in every row
    args["mask"] = args["mask"].scatter(-1, args["actions"].reshape(*LEAD, 1), True)
    ops_ = ["ppo"] if name == "old_log_prob" else ["pg", "ppo"]
    if name == "weights":
        ops_ += ["soft"]
    for op in ops_:
        assert_backends_agree(monkeypatch, op, args, alpha=1.0 if op == "pg" else 1.5,
                              temperature=0.8)


@pytest.mark.parametrize("mask", ["none", "contiguous", "transposed", "broadcast"])
@pytest.mark.parametrize("logits", ["contiguous", "transposed", "column-strided"])
@pytest.mark.parametrize("op", ["probs", "entropy", "pg", "ppo", "soft", "soft_value"])
def test_logits_and_mask_layouts(monkeypatch, op, logits, mask):
    args = base_case(("layouts", op, logits, mask), alpha=2.0)
    args["z"] = logits_form(args["z"], logits)
    args["mask"] = mask_form(args["mask"], mask)
    if args["mask"] is not None:  # the taken actions stay allowed under the new mask
        allowed = args["mask"].float().argmax(-1)
        ok = args["mask"].gather(-1, args["actions"][..., None])[..., 0]
        args["actions"] = torch.where(ok, args["actions"], allowed)
    assert_backends_agree(monkeypatch, op, args,
                          alpha=2.0 if op in ("pg", "probs", "soft") else 1.0, temperature=1.3)


def q_form(q, form):
    """Action values (the logits' shape) in a layout: the same numbers (broadcast: one row's)."""
    if form == "contiguous":
        return q.clone()
    if form == "transposed":
        return q.transpose(0, 1).contiguous().transpose(0, 1)
    if form == "column-strided":
        return torch.stack([q, torch.full_like(q, 1e4)], -1).reshape(*q.shape[:-1], -1)[..., ::2]
    if form == "broadcast":  # one row of values for every row: stride 0
        return q[:1, :1].expand(q.shape)
    if form == "fp64":  # another float dtype than the logits'
        return q.double()
    raise AssertionError(form)


Q_FORMS = ["contiguous", "transposed", "column-strided", "broadcast", "fp64"]


@pytest.mark.parametrize("form", Q_FORMS)
@pytest.mark.parametrize("op", ["soft", "soft_value"])
def test_q_values_layouts(monkeypatch, op, form):
    """Also: masked actions hold NaN in q, which neither backend may read."""
    args = base_case(("q-forms", op, form), alpha=1.5)
    args["q"] = q_form(args["q"], form)
    if form == "contiguous":
        args["q"] = args["q"].masked_fill(~args["mask"], float("nan"))
    for alpha in (1.0, 1.5):
        assert_backends_agree(monkeypatch, op, args, alpha=alpha, temperature=0.8)


FORMS = ["tensor", "scalar", "0-d", "broadcast", "strided", "transposed"]


@settings(max_examples=20, deadline=None, derandomize=True, database=None)
@given(
    op=st.sampled_from(["probs", "entropy", "pg", "ppo", "soft", "soft_value"]),
    n_act=st.sampled_from([1, 2, 5, 16, 33, 256]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    alpha=st.sampled_from([1.0, 1.5, 2.0, 1.3, 2.5]),
    temperature=st.sampled_from([1.0, 0.6, 1.7]),
    forms=st.fixed_dictionaries({k: st.sampled_from(FORMS) for k in
                                 ("advantages", "old_log_prob", "weights", "beta")}),
    actions_form=st.sampled_from(["tensor", "broadcast", "strided", "transposed"]),
    logits=st.sampled_from(["contiguous", "transposed", "column-strided"]),
    mask=st.sampled_from(["none", "contiguous", "transposed"]),
    q=st.sampled_from(Q_FORMS),
    seed=st.integers(0, 2**16),
)
def test_forms_shapes_and_dtypes(op, n_act, dtype, alpha, temperature, forms, actions_form,
                                 logits, mask, q, seed):
    """Drawn: forms of every argument, V, dtype, mapping; leading shape (4, 4) (16 rows)."""
    lead = (4, 4)
    args = base_case(("hyp", seed), lead=lead, n_act=n_act, dtype=dtype, alpha=alpha)
    for k, form in forms.items():
        args[k] = per_row_form(args["beta_rows" if k == "beta" else k], form)
    args["actions"] = per_row_form(args["actions"], actions_form)
    # the broadcast action (row 0's) must be allowed everywhere: allow it
    args["mask"] = args["mask"].scatter(-1, args["actions"].reshape(*lead, 1), True)
    args["z"] = logits_form(args["z"], logits)
    args["mask"] = mask_form(args["mask"], mask)
    args["q"] = q_form(args["q"], q)
    with pytest.MonkeyPatch.context() as mp:
        assert_backends_agree(mp, op, args, alpha, temperature, dtype)


# ------------------------------------------------------------------------------------------
# Finite extremes: z - max z overflows
# ------------------------------------------------------------------------------------------


def _extreme_rows(dtype, n_act):
    """Row 0: one entry at +big, the rest at -big. Row 1: two at +big, one at 0, the rest at
    -big. ``big`` is 0.9 of the dtype's max, so differences overflow fp32 for bf16 / fp32 /
    fp64 logits (the compute dtype)."""
    big = 0.9 * torch.finfo(dtype).max
    z = torch.full((2, n_act), -big, dtype=torch.float64)
    z[0, 3] = big
    z[1, 1] = z[1, 4] = big
    z[1, 2] = 0.0
    return z.to(dtype), [1, 2]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_extreme_entropy_of_the_issue(monkeypatch, backend, temperature):
    """+-3e38 in a (2, 5000) fp32 batch: entropy was NaN in both backends."""
    monkeypatch.setenv("ENTROPY_RL_OPS_BACKEND", backend)
    z = torch.full((2, 5000), -3e38)
    z[:, 0] = 3e38
    H = ops.entropy(z, temperature=temperature)
    assert torch.equal(H.abs(), torch.zeros(2)), H


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0, 1.3])
def test_extreme_logits_every_op(monkeypatch, backend, dtype, alpha):
    monkeypatch.setenv("ENTROPY_RL_OPS_BACKEND", backend)
    z, k = _extreme_rows(dtype, 300)
    expected_p = torch.zeros(2, 300, dtype=torch.float64)
    expected_p[0, 3] = 1.0
    expected_p[1, [1, 4]] = 0.5
    expected_H = torch.tensor([ops.max_entropy(alpha, n) if n > 1 else 0.0 for n in k],
                              dtype=torch.float64)
    actions = torch.tensor([3, 4])
    A = torch.tensor([0.7, -1.3])
    for temperature in (1.0, 0.7):
        kw = dict(alpha=alpha, temperature=temperature)
        leaf = z.clone().requires_grad_()
        p = ops.probs(leaf, **kw)
        H = ops.entropy(leaf, **kw)
        (p[:, 1].sum() + H.sum()).backward()
        # p is stored in the logits' dtype (the interpreter truncates to bf16: one ulp)
        p_atol = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}.get(dtype, 1e-6)
        torch.testing.assert_close(p.double(), expected_p, atol=p_atol, rtol=0)
        torch.testing.assert_close(H.double(), expected_H, atol=1e-6, rtol=1e-5)
        assert bool(torch.isfinite(leaf.grad).all()), leaf.grad
        for ppo in (False, True):
            leaf = z.clone().requires_grad_()
            if ppo:
                out = ops.ppo_loss(leaf, actions, A, torch.tensor([-0.1, -0.6]), beta=0.2, **kw)
            else:
                out = ops.pg_loss(leaf, actions, A, beta=0.2, **kw)
            out.loss.backward()
            log_p = torch.tensor([0.0, math.log(0.5)], dtype=torch.float64)
            torch.testing.assert_close(out.log_prob.double(), log_p, atol=1e-6, rtol=0)
            assert math.isfinite(float(out.loss.detach())) and bool(torch.isfinite(leaf.grad).all())
            assert math.isfinite(float(out.grad_norm_policy))
            assert math.isfinite(float(out.grad_norm_entropy))
        # the soft loss and value: p is exact here, so <p, q> + 0.2 H is known
        q = torch.linspace(-2.0, 3.0, 300).repeat(2, 1)
        want = (expected_p * q.double()).sum(-1) + 0.2 * expected_H
        leaf = z.clone().requires_grad_()
        out = ops.soft_policy_loss(leaf, q, beta=0.2, **kw)
        out.loss.backward()
        assert bool(torch.isfinite(leaf.grad).all()), leaf.grad
        torch.testing.assert_close(out.loss.double(), -want.mean(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ops.soft_value(z, q, beta=0.2, **kw).double(), want,
                                   atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------
# grad_buffer=logits must not hide a masked action
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("alpha", [1.0, 1.5])
@pytest.mark.parametrize("ppo", [False, True], ids=["pg", "ppo"])
def test_grad_buffer_logits_still_reports_a_masked_action(monkeypatch, backend, alpha, ppo):
    """The check used to read the logits after the gradient had overwritten the -inf."""
    monkeypatch.setenv("ENTROPY_RL_OPS_BACKEND", backend)
    z = torch.randn(4, 6, generator=gen("masked-alias"))
    z[2, 3] = float("-inf")
    actions = torch.tensor([0, 1, 3, 2])
    leaf = z.clone().requires_grad_()
    logits = leaf * 1.0  # a network's output: not a leaf, so it may be overwritten
    args = (logits, actions, torch.ones(4)) + ((torch.full((4,), -1.0),) if ppo else ())
    fn = ops.ppo_loss if ppo else ops.pg_loss
    with pytest.raises(ValueError, match=r"actions\[2\] \(flat index\) = 3 is a masked action"):
        fn(*args, beta=0.1, alpha=alpha, grad_buffer=logits)
