"""Everything the Triton kernels still need a GPU for, in one command that writes one JSON.

    python scripts/check_gpu.py                  # every step below, in order (~10 min on one H200)
    python scripts/check_gpu.py --quick          # smaller shapes and subsets: a smoke run
    python scripts/check_gpu.py compile          # no GPU needed: AOT-compile for sm_90
    python scripts/check_gpu.py warm cases big --out /tmp/check.json

Every comparison is against ``ops.reference`` in float64 (the public API with
``ENTROPY_RL_OPS_BACKEND=torch`` on float64 copies of the inputs), with the float32 reference's
own error as the allowance for ill-conditioned values, as in ``tests/ops/test_kernels.py``.
Every output buffer the kernels get is carved out of a larger NaN-filled buffer (integers:
-77): an element the kernel never writes stays NaN and fails the comparison, and the guard
regions on both sides are checked afterwards, so a write out of bounds shows.

Steps:

* ``compile``: runs representative calls (each mapping, single-tile and tiled rows, several rows
  per program, bool masks, pg / ppo / entropy / probs forward and backward, pg / ppo with a
  per-row beta tensor (the ``ROW_BETA`` variant), ``soft_policy_loss`` and ``soft_value``,
  fp32 / bf16 / fp16, ``need_grad=False``) with ``ops.kernels._rows.launch`` patched to record
  the real launches (kernel, arguments, constexprs, warps; launch configuration as on a GPU),
  then AOT-compiles exactly those variants for ``--arch`` (default 90) with the specialization
  triton's runtime would apply (triton's own binder: divisibility by 16 of pointers and ints,
  ints equal to 1), pointers taken as 16-byte aligned (CUDA's caching allocator), ints by
  value. Prints ptxas' registers and spills. No GPU needed: run it under each triton the
  project supports (3.6, 3.9).
* ``warm``: the steps below run once dry (``_rows.launch`` records each launch instead of
  running it; the kernel tests likewise, in a child process) and the distinct variants are
  compiled in ``--jobs`` processes into triton's cache for this GPU: the real launches then load
  them instead of compiling a few hundred variants one at a time.
* ``cases``: the bug classes one by one: per-row inputs (actions, advantages, old_log_prob,
  weights, a per-row beta) as Python scalars, 0-d tensors, stride-0 broadcasts, strided columns
  and non-contiguous views (beta also as a contiguous tensor); pg / ppo with a per-row beta and
  ``soft_policy_loss`` / ``soft_value`` (q-values NaN or -inf at masked actions) for every
  mapping, both mask kinds, fp32 and bf16, single-tile and tiled rows; extreme finite logits
  (+-3e38) at temperature 1 and 0.7; fp16; alpha > 2 (bisection); ``grad_buffer=logits`` with a
  masked taken action (must raise); tensors on a device other than the current one (needs two
  GPUs, else reported skipped).
* ``iterations``: per-row Newton / bisection iteration counts per alpha at 2048 x 131072 via
  ``ops.kernels.record_iterations()``; fails when a row reaches the search's cap.
* ``big``: bf16 logits with B x V > 2^31 (8200 x 262144) generated on the device, softmax and
  entmax-1.5, the gradient written over the logits; the last 8 rows (all past element 2^31)
  against a run on those rows alone (bit-identical per-row outputs; the same kernel variant:
  8 and 8200 rows specialize alike) and against the float64 reference.
* ``large``: LLM-sized rows (V up to 262144, odd and even) for pg, ppo, the entropy, probs and
  ``soft_policy_loss``, both mask kinds (bool and -inf) at every V, fp32 and bf16,
  ``need_grad=False`` too (and ``soft_value``), pg / ppo's gradient written over the logits
  (``grad_buffer=logits``) and bit-identical to a fresh buffer's. (The extreme-logits, fp16
  and bisection checks of ``cases`` include ``soft_policy_loss`` too.)
* ``tests``: the kernel tests on CUDA tensors (compiled kernels, not the interpreter):
  ``tests/ops/test_kernels.py``, the kernel tests of ``tests/ops/test_soft_ops.py`` and
  ``tests/ops/test_row_beta.py``'s ``ROW_BETA`` kernel test (``TEST_TARGETS``; those files'
  other tests run on the CPU in float64 and need no GPU).
* ``memcheck``: a subset of those tests under ``compute-sanitizer --tool memcheck`` when the
  tool works on the machine (with torch's caching allocator off, so an out-of-bounds access
  hits a real allocation boundary); skipped with the reason when it does not.
* ``bench``: ``scripts/bench_ops.py --device cuda``, fused against eager, on DESIGN.md's shapes
  plus 2048x131072 (no memory processes, no torch.compile: the run's budget; the whole table is
  ``scripts/bench_ops.py --device cuda`` on its own).

Each step gets a share of ``--budget`` (570 s; ``BUDGET_WEIGHTS``: a step's weight among the
steps still to run, so time a step leaves goes to the later ones) and, when it runs out, stops
and fails saying so; the JSON keeps every step's seconds, and ``cases`` / ``large`` count their
checks by op (``checked_by_op``: ``soft_policy_loss``, ``pg per-row beta``, ...).

The JSON (default ``benchmarks/results/check_gpu_<date>.json``) holds the machine, device names,
torch / triton / CUDA versions, each step's status (pass / fail / skip, a skip never counts as a
pass), its failures (op, mapping, dtype, shape, field, max error, tolerance) and its numbers.
Exit status 1 if any step fails. ``--device cpu`` runs the GPU steps' code on tiny shapes under
``TRITON_INTERPRET=1`` (how ``tests/scripts/test_check_gpu.py`` exercises this script).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

try:
    import ops
except ImportError:
    # Run as ``python scripts/check_gpu.py`` from a checkout that is not installed (the GPU
    # machine gets a bare copy of the working tree), Python puts scripts/, not the repository
    # root, on the path. Only then is the root added, so an installed ops always wins; the JSON
    # records which ops ran.
    sys.path.insert(0, str(ROOT))
    import ops
from ops import reference  # noqa: E402  (the oracle)
from rl.checkpoint import write_json  # noqa: E402

# relative shares of the time budget (the whole run must fit ~10 minutes on one H200)
# (per-row beta and the soft ops took cases from ~400 to ~670 checks of small shapes, large from
# ~580 to ~690, added three kernel tests to tests and five call kinds (~100 variants) to
# compile / warm: those gained weight; memcheck and bench, the last and most dispensable, gave
# it, and bench, last, also gets whatever the steps before it leave)
BUDGET_WEIGHTS = dict(compile=12, warm=19, cases=12, iterations=4, big=5, large=13, tests=15, memcheck=12,
                      bench=8)
KERNEL_TESTS = ROOT / "tests" / "ops" / "test_kernels.py"
# the tests step's (and memcheck's) targets: every kernel test (the soft ops' and per-row beta's
# CPU-only tests need no GPU and are left out)
TEST_TARGETS = [str(KERNEL_TESTS)] + [
    f"{ROOT / 'tests' / 'ops' / name}::{test}" for name, test in (
        ("test_soft_ops.py", "test_kernel_matches_reference"),
        ("test_soft_ops.py", "test_kernel_without_grad_and_public_api"),
        ("test_row_beta.py", "test_kernel_row_beta_matches_reference"))]
STEP_NAMES = ["compile", "warm", "cases", "iterations", "big", "large", "tests", "memcheck", "bench"]
EPS32 = 2.0**-23
INT_FILL = -77
BACKEND_ENV = "ENTROPY_RL_OPS_BACKEND"


# ==========================================================================================
# Shapes per profile: "full" (one H200, ~10 min), "quick" (GPU smoke run), "tiny" (CPU under
# the interpreter: the same code paths, shapes it can afford)
# ==========================================================================================

COMPILE_SHAPES = [(65536, 6), (2048, 1024), (2, 5000), (1, 40000)]
COMPILE_CALLS = ["ppo-fp32-mask", "pg-bf16", "pg-fp16-mask-nograd", "entropy-fp32-mask", "entropy-bf16",
                 "probs-fp32-mask", "probs-bf16-nograd", "pg-fp32-mask-rowbeta", "ppo-bf16-rowbeta",
                 "soft-fp32-mask", "soft-bf16", "softvalue-fp16-mask"]
PROFILES = {
    "full": dict(
        form_shape=(32, 1000), form_tiled=(8, 20000), extreme_shapes=[(8, 1000), (4, 20000)],
        fp16_shapes=[(64, 5000), (4, 40000)], bisect_shapes=[(64, 1000), (4, 40000)],
        iterations=(2048, 131072), big=(8200, 262144), big_rows=8,
        large=[(8, 262144), (16, 131072), (5, 262143), (64, 32768), (3, 9000), (4096, 6)],
        large_alphas=[1.0, 1.5, 2.0, 1.3], ng_shapes=[(16, 131072)],
        memcheck_k="5000 and fp32 or alias or extreme_rows or test_soft_ops and 300 and fp32-mask-T0.7-tiles"
                   " or row_beta and 1.3", alphas=[1.0, 1.5, 2.0, 1.3, 3.0],
        compile_alphas=[1.0, 2.0, 1.5, 1.3, 3.0], compile_shapes=COMPILE_SHAPES, compile_calls=COMPILE_CALLS,
    ),
    "quick": dict(
        form_shape=(16, 1000), form_tiled=(4, 20000), extreme_shapes=[(8, 1000), (4, 20000)],
        fp16_shapes=[(4, 40000)], bisect_shapes=[(4, 40000)],
        iterations=(2048, 131072), big=(8200, 262144), big_rows=8,
        large=[(8, 262144), (5, 262143), (4096, 6)], large_alphas=[1.0, 1.3],
        ng_shapes=[(16, 131072)],
        memcheck_k="test_loss_matches_reference and 5000 and fp32"
                   " or test_soft_ops and 300 and fp32-mask-T0.7",
        alphas=[1.0, 1.3, 3.0], compile_alphas=[1.0, 1.3],
        compile_shapes=COMPILE_SHAPES, compile_calls=COMPILE_CALLS,
    ),
    "tiny": dict(
        form_shape=(6, 40), form_tiled=(4, 300), extreme_shapes=[(6, 40)],
        fp16_shapes=[(4, 300)], bisect_shapes=[(4, 300)],
        iterations=(6, 300), big=(20, 300), big_rows=6,
        large=[(4, 301), (5, 256)], large_alphas=[1.0, 1.3], ng_shapes=[(4, 300)],
        memcheck_k="without_grad", alphas=[1.0, 1.3, 3.0], compile_alphas=[1.3],
        compile_shapes=[(1, 40000)],
        compile_calls=["ppo-fp32-mask", "entropy-bf16", "pg-fp32-mask-rowbeta", "soft-bf16"],
    ),
}


# ==========================================================================================
# Results
# ==========================================================================================


class Step:
    """One step's outcome: failures (each a dict saying exactly what differed), numbers, notes."""

    def __init__(self, name):
        self.name = name
        self.status = None  # "pass" | "fail" | "skip"
        self.failures: list[dict] = []
        self.numbers: dict = {}
        self.notes: list[str] = []
        self.checked = 0
        self.seconds = 0.0

    def fail(self, what, **detail):
        self.failures.append(dict(what=what, **detail))
        text = " ".join(f"{k}={v}" for k, v in detail.items())
        print(f"FAIL  {what}  {text}", flush=True)

    def skip(self, why):
        self.status = "skip"
        self.notes.append(why)
        print(f"SKIP  {self.name}: {why}", flush=True)

    def to_json(self):
        return dict(status=self.status, seconds=round(self.seconds, 1), checked=self.checked,
                    failures=self.failures, numbers=self.numbers, notes=self.notes)


class OutOfTime(Exception):
    pass


class Context:
    def __init__(self, args, profile):
        self.args = args
        self.profile = PROFILES[profile]
        self.profile_name = profile
        self.device = torch.device(args.device)
        self.deadline = time.time() + args.budget
        self.step_deadline = self.deadline
        self.seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
        self.interpreted = self.device.type == "cpu"
        self.dry = False  # warm's dry run: launches recorded, nothing compared
        self.names = list(STEP_NAMES)
        self.warm_launches: list[dict] = []

    def left(self):
        """Seconds left to the running step (its share of the budget)."""
        return min(self.step_deadline, self.deadline) - time.time()

    def start_step(self, name, names):
        """The step's share of what is left: its weight among the steps still to run, so a
        step that finishes early leaves its time to the later ones."""
        rest = names[names.index(name):]
        share = BUDGET_WEIGHTS[name] / sum(BUDGET_WEIGHTS[n] for n in rest)
        self.step_deadline = time.time() + share * (self.deadline - time.time())

    def check_time(self, reserve=0.0):
        if self.left() < reserve:
            raise OutOfTime(f"this step's share of the time budget (--budget {self.args.budget:.0f} s) "
                            "ran out")


def mapping_name(alpha):
    alpha = float(alpha)
    if alpha == 1.0:
        return "softmax"
    if alpha == 2.0:
        return "sparsemax"
    if alpha == 1.5:
        return "entmax15"
    return f"entmax{alpha:g}-{'bisection' if alpha > 2 else 'newton'}"


def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


# ==========================================================================================
# Comparison against the float64 oracle
# ==========================================================================================


def out_rtol(dtype, interpreted):
    # relative rounding of a value stored in the dtype; the interpreter casts fp32 to bf16 by
    # truncation (one ulp), GPUs round to nearest (half an ulp)
    return {torch.float32: 1e-5, torch.bfloat16: 2.0**-7 if interpreted else 2.0**-8,
            torch.float16: 2.0**-10}[dtype]


def out_atol(dtype):
    return 2.0**-24 if dtype == torch.float16 else 0.0  # fp16 subnormal spacing


def compare(name, got, ref64, ref32, out_dtype, *, interpreted=False, row_wise=False, atol=0.0):
    """None if ``|got - ref64| <= tol`` everywhere, else a dict saying where and by how much.

    ``tol = rtol(out) |ref64| + atol(out) + 2e-6 scale + 4 |ref32 - ref64| + atol``: the output
    dtype's rounding, float32 accumulation over the row (``scale``: the row's largest value when
    ``row_wise``, else the tensor's) and the float32 reference's own error (where finite) for
    ill-conditioned values. Non-finite oracle entries (-inf log-probabilities) must match exactly.
    """
    got = got.detach().double().cpu()
    ref64 = ref64.detach().double().cpu()
    ref32 = ref32.detach().double().cpu() if ref32 is not None else ref64
    if got.shape != ref64.shape:
        return dict(field=name, problem=f"shape {tuple(got.shape)} != oracle {tuple(ref64.shape)}")
    # an oracle value beyond fp32's range is +-inf in any output dtype the kernels write
    ref64 = torch.where(torch.isfinite(ref64) & ~torch.isfinite(ref64.float()), ref64.float().double(), ref64)
    finite = torch.isfinite(ref64)
    differ = (torch.isfinite(got) != finite) | (~finite & (got != ref64) & ~(got.isnan() & ref64.isnan()))
    if bool(differ.any()):
        i = int(differ.reshape(-1).nonzero()[0])
        return dict(field=name, problem="finiteness differs", count=int(differ.sum()),
                    index=_index(i, got.shape), got=_num(got.reshape(-1)[i]),
                    want=_num(ref64.reshape(-1)[i]))
    got, ref64, ref32 = (torch.where(finite, t, 0.0) for t in (got, ref64, ref32))
    ref_err = (ref32 - ref64).abs()
    ref_err = torch.where(torch.isfinite(ref_err), ref_err, 0.0)
    if row_wise and got.dim() == 2:
        top = float(ref64.abs().max()) if ref64.numel() else 0.0
        scale = ref64.abs().amax(-1, keepdim=True).clamp(min=0.1 * top)
        ref_err = ref_err.amax(-1, keepdim=True)
    else:
        scale = ref64.abs().max() if ref64.numel() else ref64.new_zeros(())
        ref_err = ref_err.max() if ref_err.numel() else ref_err.new_zeros(())
    if callable(atol):
        atol = atol(ref64)
    tol = (out_rtol(out_dtype, interpreted) * ref64.abs() + out_atol(out_dtype) + 2e-6 * scale
           + 4 * ref_err + atol + 1e-12)
    tol = torch.broadcast_to(tol, got.shape)
    err = (got - ref64).abs()
    if got.numel() == 0 or bool((err <= tol).all()):
        return None
    i = int((err - tol).reshape(-1).argmax())
    return dict(field=name, problem="out of tolerance", count=int((err > tol).sum()),
                index=_index(i, got.shape), max_error=_num(err.reshape(-1)[i]),
                tolerance=_num(tol.reshape(-1)[i]), got=_num(got.reshape(-1)[i]),
                want=_num(ref64.reshape(-1)[i]))


def compare_support(got, ref64, ref32):
    """Support sizes: equal to the float64 or (an element on the threshold) float32 oracle's."""
    got, s64, s32 = (t.detach().cpu().long().reshape(-1) for t in (got, ref64, ref32))
    bad = (got != s64) & (got != s32)
    if not bool(bad.any()):
        return None
    i = int(bad.nonzero()[0])
    return dict(field="support_size", problem="differs", count=int(bad.sum()), index=i,
                got=int(got[i]), want=int(s64[i]))


def compare_clipped(got, ref64_clipped, ref64_ratio, clip_eps):
    """PPO's clipped flags: a ratio within rounding of a clip boundary may fall either way."""
    r = ref64_ratio.detach().double().cpu().reshape(-1)
    near = ((r - (1 + clip_eps)).abs() < 1e-5) | ((r - (1 - clip_eps)).abs() < 1e-5)
    differ = got.detach().cpu().reshape(-1) != ref64_clipped.detach().cpu().reshape(-1)
    bad = differ & ~near
    if not bool(bad.any()):
        return None
    i = int(bad.nonzero()[0])
    return dict(field="clipped", problem="differs", count=int(bad.sum()), index=i)


def _index(flat, shape):
    idx = []
    for n in reversed(shape):
        idx.append(flat % n)
        flat //= n
    return list(reversed(idx))


def _num(x):
    x = float(x)
    return x if math.isfinite(x) else str(x)


# ==========================================================================================
# Guarded output buffers: NaN-filled, carved out of larger NaN-filled buffers
# ==========================================================================================


class GuardedBuffers:
    """Hands out tensors carved out of larger buffers filled with NaN (integers: -77, bool:
    True); ``check()`` then reports any guard element that changed: a write out of bounds.

    ``guard_bytes`` on each side; a multiple of 16 keeps the carved tensor 16-byte aligned, as
    CUDA's caching allocator aligns a fresh tensor (the pointer specialization a real launch
    gets).
    """

    def __init__(self, guard_bytes=256):
        self.guard_bytes = guard_bytes
        self.carved: list[tuple] = []

    def empty(self, shape, dtype, device, name=None):
        shape = tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else (int(shape),)
        numel = math.prod(shape)
        itemsize = torch.empty((), dtype=dtype).element_size()
        g = max(1, self.guard_bytes // itemsize)
        base = torch.full((numel + 2 * g,), _fill(dtype), dtype=dtype, device=device)
        view = base[g:g + numel].view(shape)
        self.carved.append((name or f"buffer{len(self.carved)}", base, g, numel, shape, dtype))
        return view

    def check(self):
        """A list of failures, one per buffer whose guard regions were written."""
        out = []
        for name, base, g, numel, shape, dtype in self.carved:
            for side, region, start in (("before", base[:g], -g), ("after", base[g + numel:], 0)):
                changed = ~_is_fill(region)
                if bool(changed.any()):
                    k = int(changed.nonzero()[0])
                    out.append(dict(field=name, problem=f"written out of bounds ({side} the buffer)",
                                    guard=True, buffer_shape=list(shape), buffer_dtype=dtype_name(dtype),
                                    count=int(changed.sum()),
                                    offset=start + k if side == "before" else numel + k))
        return out


def _fill(dtype):
    if dtype == torch.bool:
        return True
    return float("nan") if dtype.is_floating_point else INT_FILL


def _is_fill(t):
    if t.dtype == torch.bool:
        return t
    return torch.isnan(t) if t.dtype.is_floating_point else t == INT_FILL


@contextlib.contextmanager
def guarded_outputs(guards):
    """Every launcher output buffer (``ops.kernels._rows.empty``) comes from ``guards``."""
    from ops.kernels import _rows

    if not hasattr(_rows, "empty"):
        raise RuntimeError("ops.kernels._rows.empty (the launchers' output-buffer seam) is gone: "
                           "outputs cannot be poisoned and guarded")
    saved = _rows.empty
    _rows.empty = lambda shape, dtype, device: guards.empty(shape, dtype, device, name="output")
    try:
        yield guards
    finally:
        _rows.empty = saved


@contextlib.contextmanager
def backend(name):
    saved = os.environ.get(BACKEND_ENV)
    os.environ[BACKEND_ENV] = name
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(BACKEND_ENV, None)
        else:
            os.environ[BACKEND_ENV] = saved


# ==========================================================================================
# Inputs: random cases and per-row inputs in every form a caller may pass
# ==========================================================================================

FORMS = ["tensor", "python", "0-d", "stride0", "column", "view"]


def as_form(values, form):
    """``values`` (R, C) in the given form; returns ``(obj, dense)`` where ``dense`` is what the
    form means row by row (a scalar form broadcasts its first value).

    tensor: contiguous; python: a Python float / int; 0-d: a 0-d tensor; stride0: a 0-d tensor
    expanded to (R, C), strides (0, 0); column: the first column of an (R, C, 3) tensor, strides
    (3C, 3); view: the transpose of a contiguous (C, R), strides (1, R).
    """
    R, C = values.shape
    if form == "tensor":
        return values.contiguous(), values
    first = values.reshape(-1)[0]
    dense = first.expand(R, C).clone()
    if form == "python":
        return first.item(), dense
    if form == "0-d":
        return first.clone(), dense
    if form == "stride0":
        return first.clone().expand(R, C), dense
    if form == "column":
        wide = torch.stack([values, values * 3 + 1, values - 2], dim=-1)
        return wide[..., 0], values
    if form == "view":
        return values.t().contiguous().t(), values
    raise ValueError(f"form={form!r} is not allowed; allowed: {', '.join(FORMS)}")


def make_case(seed, shape, dtype, alpha, temperature, mask_kind, device, *, extreme=False, light=False):
    """Logits (row scales 0.3-4 and row offsets, so supports range from one action to most of V),
    a mask (bool: 30% of the masked entries hold NaN, which the mask must hide; neginf: -inf
    logits), actions (half sampled from the policy, half uniform over allowed actions: for
    alpha > 1 many lie outside the support), advantages, old log-probabilities around the
    current ones (both PPO branches), weights (one row weighted 0). Generated on ``device``.

    ``extreme``: the first rows hold finite logits at +-3e38 (fp32 / bf16 range): alternating
    signs, a tie at the top, 3e38 next to moderate values, -3e38 everywhere but one entry.
    ``light``: actions uniform over allowed ones and old log-probabilities -1 (no float64 policy
    computed: the shapes of the iteration counts).

    Also per-row entropy coefficients ``beta_rows`` in [0, 0.5) (one row 0; the case's ``beta``
    stays the float 0.37 unless a check puts a form of them there) and ``q_values`` for the soft
    ops (scale 3; at masked actions NaN with a bool mask, -inf with -inf logits: never read),
    drawn from a generator of their own so the other inputs do not depend on them.
    """
    *lead, V = shape
    N = math.prod(lead)
    g = torch.Generator(device=device).manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=g, device=device)  # noqa: E731
    randn = lambda *s: torch.randn(*s, generator=g, device=device)  # noqa: E731
    z = randn(N, V).mul_(0.3 + 3.7 * rand(N, 1)).add_(100.0 * randn(N, 1))
    if extreme:
        big = 3e38
        rows = min(N, 4)
        z[0] = torch.where(torch.arange(V, device=device) % 2 == 0, big, -big)
        if rows > 1:
            z[1, : max(1, V // 3)] = big
        if rows > 2:
            z[2, ::7] = big
            z[2, 1::7] = -big
        if rows > 3:
            z[3] = -big
            z[3, V // 2] = 0.0
    z = z.to(dtype)
    allowed = torch.ones(N, V, dtype=torch.bool, device=device)
    mask = None
    if mask_kind is not None and V > 1:
        allowed = rand(N, V) < 0.7
        allowed[torch.arange(N, device=device), torch.randint(0, V, (N,), generator=g, device=device)] = True
        allowed[0] = True  # one unmasked row
        if mask_kind == "bool":
            mask = allowed
            z = z.masked_fill(~allowed & (rand(N, V) < 0.3), float("nan"))
        elif mask_kind == "neginf":
            z = z.masked_fill(~allowed, float("-inf"))
        else:
            raise ValueError(f"mask_kind={mask_kind!r} is not allowed; allowed: None, 'bool', 'neginf'")
    uniform = torch.multinomial(allowed.float(), 1, generator=g).squeeze(-1)
    if light:
        p = None
        sampled = uniform
    else:
        with backend("torch"):
            p = ops.probs(z.double(), alpha=alpha, temperature=temperature, mask=mask)
        sampled = torch.multinomial(p, 1, generator=g).squeeze(-1)
    take_sampled = torch.arange(N, device=device) % 2 == 0
    if extreme:  # an action at -3e38 has log p below fp32's range: sample the extreme rows
        take_sampled |= torch.arange(N, device=device) < 4
    actions = torch.where(take_sampled, sampled, uniform)
    if p is None:
        old = torch.full((N,), -1.0, dtype=torch.float64, device=device)
    else:
        p_a = p.gather(-1, actions[:, None]).squeeze(-1)
        old = torch.where(p_a > 0, p_a.clamp(min=1e-30).log(), -3.0 + randn(N).double())
    weights = rand(N)
    weights[N // 2] = 0.0
    case = dict(logits=z.view(*lead, V), mask=None if mask is None else mask.view(*lead, V),
                actions=actions.view(*lead), advantages=randn(N).view(*lead),
                old_log_prob=(old.float() + 0.3 * randn(N)).view(*lead), weights=weights.view(*lead),
                alpha=float(alpha), temperature=float(temperature), beta=0.37, clip_eps=0.2)
    if not light:
        g2 = torch.Generator(device=device).manual_seed(seed + 2**31)
        beta_rows = torch.rand(N, generator=g2, device=device) * 0.5
        beta_rows[min(1, N - 1)] = 0.0
        q = torch.randn(N, V, generator=g2, device=device) * 3.0
        q = q.masked_fill(~allowed, float("nan") if mask_kind == "bool" else float("-inf"))
        case.update(beta_rows=beta_rows.view(*lead), q_values=q.view(*lead, V))
    return case


def run_op(op, case, *, need_grad=True, grad_buffer=None, leaf=None, grad_H=None):
    """One public call (``ops.pg_loss`` / ``ops.ppo_loss`` / ``ops.entropy`` / ``ops.probs`` /
    ``ops.soft_policy_loss`` / ``ops.soft_value``; ``case["beta"]`` a float or, for pg / ppo, a
    per-row tensor in any form) and its gradient (of ``sum grad_H * H`` for the entropy, of
    ``sum_ij grad_H_i (1 + sin j) p_ij`` for probs: a weight that varies along the row, as
    sum_j p_ij = 1 has gradient 0; none for ``soft_value``).

    Returns the outputs as a dict of tensors; ``grad`` is the logits' gradient (read from
    ``grad_buffer`` when one is given: it is written during the forward).
    """
    c = case
    if leaf is None:
        leaf = c["logits"].detach().clone()
    leaf.requires_grad_(need_grad)
    kw = dict(alpha=c["alpha"], temperature=c["temperature"], mask=c["mask"])
    if op == "probs":
        p = ops.probs(leaf, **kw)
        out = dict(probs=p.detach())
        if need_grad:
            cols = torch.arange(p.shape[-1], device=p.device, dtype=torch.float64)
            # the upstream gradient reaches the kernels in p's dtype: the oracle gets it rounded alike
            w = (grad_H.double()[..., None] * (1.0 + cols.sin())).to(c.get("upstream_dtype", p.dtype))
            (p * w.to(p.dtype)).sum().backward()
            out["grad"] = leaf.grad
        return out
    if op == "soft_value":  # no gradient: detached by definition
        return dict(value=ops.soft_value(leaf.detach(), c["q_values"], beta=c["beta"], **kw))
    if op == "soft_policy_loss":
        res = ops.soft_policy_loss(leaf, c["q_values"], beta=c["beta"], weights=c["weights"], **kw)
        out = dict(loss=res.loss.detach(), entropy=res.entropy, support_size=res.support_size,
                   grad_norm_policy=res.grad_norm_policy, grad_norm_entropy=res.grad_norm_entropy)
        if need_grad:
            res.loss.backward()
            out["grad"] = leaf.grad
        return out
    if op == "entropy":
        H = ops.entropy(leaf, **kw)
        out = dict(entropy=H.detach())
        if need_grad:
            (H * grad_H).sum().backward()
            out["grad"] = leaf.grad
        return out
    if op == "pg":
        res = ops.pg_loss(leaf, c["actions"], c["advantages"], beta=c["beta"], weights=c["weights"],
                          grad_buffer=grad_buffer, **kw)
    else:
        res = ops.ppo_loss(leaf, c["actions"], c["advantages"], c["old_log_prob"], beta=c["beta"],
                           clip_eps=c["clip_eps"], weights=c["weights"], grad_buffer=grad_buffer, **kw)
    out = dict(loss=res.loss.detach(), entropy=res.entropy, log_prob=res.log_prob,
               support_size=res.support_size, grad_norm_policy=res.grad_norm_policy,
               grad_norm_entropy=res.grad_norm_entropy)
    if op == "ppo":
        out.update(ratio=res.ratio, clipped=res.clipped)
    if need_grad:
        if grad_buffer is not None:
            out["grad"] = grad_buffer.detach().clone()
        else:
            res.loss.backward()
            out["grad"] = leaf.grad
    return out


def dense_case(case):
    """The case with every per-row input as a dense tensor of the leading shape (the oracle's)."""
    dense = dict(case)
    lead = case["logits"].shape[:-1]
    dev = case["logits"].device
    for key in ("actions", "advantages", "old_log_prob", "weights"):
        if case.get(key) is None:
            continue
        v = torch.as_tensor(case[key], device=dev)
        dense[key] = v.expand(lead).contiguous() if v.dim() == 0 else v.contiguous()
    if isinstance(case.get("beta"), torch.Tensor):  # a per-row beta; a float stays a float
        b = case["beta"].to(dev)
        dense["beta"] = b.expand(lead).contiguous() if b.dim() == 0 else b.contiguous()
    return dense


def oracles(op, case, need_grad, grad_H):
    """The reference (public API, torch backend) on float64 and on float32 copies."""
    out = []
    dense = dense_case(case)
    for dt in (torch.float64, torch.float32):
        c = dict(dense, logits=dense["logits"].to(dt), upstream_dtype=dense["logits"].dtype)
        for key in ("advantages", "old_log_prob", "weights", "beta", "q_values"):
            if isinstance(dense.get(key), torch.Tensor):
                c[key] = dense[key].to(dt)
        with backend("torch"):
            assert ops.backend_for(c["logits"]) is reference
            out.append(run_op(op, c, need_grad=need_grad,
                              grad_H=None if grad_H is None else grad_H.to(dt)))
    return out


def _grad_terms(op, case, ref64, grad_H):
    """Per-row magnitudes (N, 1) of the gradient's policy and entropy terms before they combine:
    each is rounded in fp32 and they may cancel, so the rounding allowed scales with them."""
    a, T = case["alpha"], case["temperature"]
    dense = dense_case(case)
    if op == "probs":  # d(w p_i)/dz = w p_i (e_i - p) / T (softmax), q_hat-weighted for alpha > 1
        return (4 * grad_H.double().reshape(-1).abs() / T)[:, None].cpu(), 0.0
    ent_factor = (1.0 + ref64["entropy"].double().reshape(-1)) if a == 1.0 else 1.0 / (a - 1.0)
    if op == "entropy":
        return (grad_H.double().reshape(-1).abs() / T * ent_factor)[:, None].cpu(), 0.0
    beta = dense["beta"]
    if isinstance(beta, torch.Tensor):
        beta = beta.double().reshape(-1)
    n = ref64["entropy"].numel()
    w = dense["weights"].double().reshape(-1) if dense.get("weights") is not None else torch.ones(
        n, dtype=torch.float64, device=ref64["entropy"].device)
    row_scale = w / w.sum() if float(w.sum()) > 0 else torch.zeros_like(w)
    if op == "soft_policy_loss":  # |s (q - <s_hat, q>)| <= 2 max |q| over the allowed actions
        q = dense["q_values"].double().reshape(n, -1)
        q_max = torch.where(torch.isfinite(q), q, 0.0).abs().amax(-1)
        pol = (2 * q_max * row_scale / T).abs()
        ent = (beta * row_scale / T * ent_factor).abs()
        return pol[:, None].cpu(), ent[:, None].cpu()
    c = dense["advantages"].double().reshape(-1)
    if op == "ppo":
        c = torch.where(ref64["clipped"].reshape(-1), 0.0, c * ref64["ratio"].double().reshape(-1))
    log_p_a = ref64["log_prob"].double().reshape(-1)
    if a != 1.0:
        c = c * torch.where(torch.isfinite(log_p_a), ((1 - a) * log_p_a).exp(), 0.0)
    pol = (2 * c * row_scale / T).abs()
    ent = (beta * row_scale / T * ent_factor).abs()
    return pol[:, None].cpu(), ent[:, None].cpu()


def check_outputs(op, case, got, ref64, ref32, grad_H, interpreted):
    """Every output of one call against the oracle; a list of failure dicts."""
    bad = []
    f32 = torch.float32
    dtype = case["logits"].dtype
    V = case["logits"].shape[-1]
    fields = {"entropy": ["entropy"], "probs": [], "soft_policy_loss": ["loss", "entropy"],
              "soft_value": ["value"]}.get(op, ["loss", "entropy", "log_prob"])
    if op == "ppo":
        fields.append("ratio")
    for key in fields:
        bad.append(compare(key, got[key], ref64[key], ref32[key], f32, interpreted=interpreted))
    if op == "probs":  # in the logits' dtype
        bad.append(compare("probs", got["probs"].reshape(-1, V), ref64["probs"].reshape(-1, V),
                           ref32["probs"].reshape(-1, V), dtype, interpreted=interpreted, row_wise=True))
    if op in ("pg", "ppo", "soft_policy_loss"):
        bad.append(compare_support(got["support_size"], ref64["support_size"], ref32["support_size"]))
    if op == "ppo":
        bad.append(compare_clipped(got["clipped"], ref64["clipped"], ref64["ratio"], case["clip_eps"]))
    if "grad" in ref64:
        if got.get("grad") is None:
            bad.append(dict(field="grad", problem="missing"))
        else:
            pol, ent = _grad_terms(op, case, ref64, grad_H)
            g, r64, r32 = (t["grad"].reshape(-1, V) for t in (got, ref64, ref32))
            bad.append(compare("grad", g, r64, r32, dtype, interpreted=interpreted, row_wise=True,
                               atol=8 * EPS32 * (pol + ent)))
            if case["mask"] is not None:  # a masked action's gradient is exactly 0
                nz = (g[~case["mask"].reshape(-1, V)] != 0)
                if bool(nz.any()):
                    bad.append(dict(field="grad", problem="nonzero at masked actions",
                                    count=int(nz.sum())))
            if op in ("pg", "ppo", "soft_policy_loss"):
                for key, terms in (("grad_norm_policy", pol), ("grad_norm_entropy", ent)):
                    d2 = float((V * (8 * EPS32 * terms) ** 2).sum())
                    bad.append(compare(f"{key}^2", got[key] ** 2, ref64[key] ** 2, ref32[key] ** 2, f32,
                                       interpreted=interpreted,
                                       atol=lambda ref, d2=d2: 2 * math.sqrt(abs(float(ref)) * d2) + d2))
    return [b for b in bad if b is not None]


def check_call(step, ctx, label, op, case, *, need_grad=True, grad_buffer=None, seed=None,
               may_reject=None):
    """Runs one public call on the kernels with guarded outputs and compares it with the
    oracle; records failures under ``label`` (op, mapping, dtype, shape, ...). Returns the
    kernel outputs (None when it did not run). ``may_reject``: a parameter name; one
    ValueError naming it (the input's form is not accepted) is a pass, not a failure."""
    ctx.check_time()
    step.checked += 1
    if not ctx.dry:  # what was checked, by op (the JSON's evidence that each op ran)
        by_op = step.numbers.setdefault("checked_by_op", {})
        key = op + (" per-row beta" if isinstance(case.get("beta"), torch.Tensor) else "")
        by_op[key] = by_op.get(key, 0) + 1
    dev = case["logits"].device
    N = math.prod(case["logits"].shape[:-1])
    grad_H = None
    if op in ("entropy", "probs") and need_grad:
        grad_H = torch.linspace(-1.0, 2.0, N, device=dev).view(case["logits"].shape[:-1])
    guards = GuardedBuffers()
    leaf = None
    if grad_buffer == "logits":
        leaf = guards.empty(case["logits"].shape, case["logits"].dtype, dev, name="logits/grad_buffer")
        leaf.copy_(case["logits"])
        grad_buffer = leaf
    elif grad_buffer == "carved":
        grad_buffer = guards.empty(case["logits"].shape, case["logits"].dtype, dev, name="grad_buffer")
    full = dict(label, op=op, seed=seed, need_grad=need_grad)
    if ctx.dry:
        with backend("triton"), contextlib.suppress(Exception):
            run_op(op, case, need_grad=need_grad, grad_buffer=grad_buffer, leaf=leaf, grad_H=grad_H)
        return None
    t0 = time.time()
    try:
        with backend("triton"), guarded_outputs(guards):
            got = run_op(op, case, need_grad=need_grad, grad_buffer=grad_buffer, leaf=leaf,
                         grad_H=grad_H)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    except OutOfTime:
        raise
    except ValueError as err:
        if may_reject and may_reject in str(err):
            rejected = step.numbers.setdefault("rejected_forms", {})
            rejected[f"{label.get('form')} ({op})"] = str(err)
            print(f"ok    {_label_text(full)}: rejected: {err}", flush=True)
            return None
        step.fail("kernel call raised", **full, error=f"ValueError: {err}",
                  traceback=traceback.format_exc(limit=-3))
        return None
    except Exception as err:
        step.fail("kernel call raised", **full, error=f"{type(err).__name__}: {err}",
                  traceback=traceback.format_exc(limit=-3))
        return None
    kernel_s = time.time() - t0
    problems = guards.check()
    ref64, ref32 = oracles(op, case, need_grad, grad_H)
    problems += check_outputs(op, case, got, ref64, ref32, grad_H, ctx.interpreted)
    for p in problems:
        what = "guard region written" if p.pop("guard", False) else "differs from the float64 reference"
        step.fail(what, **full, **p)
    if not problems:
        print(f"ok    {_label_text(full)}  ({kernel_s:.2f} s)", flush=True)
    return got


def _label_text(label):
    return " ".join(f"{k}={v}" for k, v in label.items() if v is not None)


def _seed(ctx, *parts):
    """A case's seed: the run's seed and the case's description (replayable with --seed)."""
    return (ctx.seed + zlib.crc32(repr(parts).encode())) % (2**31)


# ==========================================================================================
# Step: cases (the bug classes one by one)
# ==========================================================================================


def step_cases(step, ctx):
    prof = ctx.profile
    dev = ctx.device

    # 1. per-row inputs in every form: the kernels must never read ``ptr + rows`` of a scalar,
    #    stride-0, strided or non-contiguous tensor. Logits (R, 2, V); per-row inputs (R, 2).
    for N, V in (prof["form_shape"], prof["form_tiled"]):
        shape = (N // 2, 2, V)
        for alpha in (1.0, 1.5):
            for op in ("pg", "ppo"):
                keys = ["actions", "advantages", "weights", "beta"]
                keys += ["old_log_prob"] if op == "ppo" else []
                for key in keys:
                    # beta is a float in the other checks: its contiguous tensor form too
                    for form in FORMS if key == "beta" else FORMS[1:]:
                        seed = _seed(ctx, "form", N, V, alpha, op, key, form)
                        case = make_case(seed, shape, torch.float32, alpha, 0.8, "bool", dev)
                        if key == "actions" and form in ("python", "0-d", "stride0"):
                            # one action for every row: make it allowed (and finite) everywhere
                            a = int(case["actions"].reshape(-1)[0])
                            case["mask"][..., a] = True
                            case["logits"][..., a] = case["logits"][..., a].nan_to_num(0.0)
                        obj, _ = as_form(case["beta_rows" if key == "beta" else key], form)
                        case = dict(case, **{key: obj})
                        label = dict(mapping=mapping_name(alpha), dtype="float32", shape=list(shape),
                                     form=f"{key}:{form}")
                        check_call(step, ctx, label, op, case, seed=seed, may_reject=key)

    # 2. per-row beta (the ROW_BETA variant) and the soft ops, every mapping, both mask kinds,
    #    fp32 and bf16, single-tile and tiled rows
    _row_beta_and_soft_cases(step, ctx, (prof["form_shape"], prof["form_tiled"]), prof["alphas"])

    # 3. extreme finite logits (+-3e38) at temperature 1 and 0.7
    for N, V in prof["extreme_shapes"]:
        for dtype in (torch.float32, torch.bfloat16):
            for T in (1.0, 0.7):
                for alpha in prof["alphas"]:
                    for op in ("entropy", "probs", "pg", "ppo", "soft_policy_loss"):
                        seed = _seed(ctx, "extreme", N, V, dtype, T, alpha, op)
                        case = make_case(seed, (N, V), dtype, alpha, T, None, dev, extreme=True)
                        label = dict(mapping=mapping_name(alpha), dtype=dtype_name(dtype),
                                     shape=[N, V], temperature=T, logits="+-3e38")
                        check_call(step, ctx, label, op, case, seed=seed)

    # 4. fp16 logits; 5. alpha > 2 (bisection)
    for N, V in prof["fp16_shapes"]:
        for alpha in prof["alphas"]:
            for op in ("entropy", "probs", "pg", "ppo", "soft_policy_loss"):
                seed = _seed(ctx, "fp16", N, V, alpha, op)
                case = make_case(seed, (N, V), torch.float16, alpha, 1.3, "bool", dev)
                label = dict(mapping=mapping_name(alpha), dtype="float16", shape=[N, V])
                check_call(step, ctx, label, op, case, seed=seed)
    for N, V in prof["bisect_shapes"]:
        for alpha in (2.5, 3.0, 4.0):
            for dtype, mask_kind in ((torch.float32, "bool"), (torch.bfloat16, "neginf")):
                for op in ("entropy", "probs", "pg", "ppo", "soft_policy_loss"):
                    seed = _seed(ctx, "bisect", N, V, alpha, dtype, op)
                    case = make_case(seed, (N, V), dtype, alpha, 0.9, mask_kind, dev)
                    label = dict(mapping=mapping_name(alpha), dtype=dtype_name(dtype), shape=[N, V],
                                 mask=mask_kind)
                    check_call(step, ctx, label, op, case, seed=seed)

    # 6. grad_buffer=logits must not hide a masked taken action
    for mask_kind in ("neginf", "bool"):
        for alpha in (1.0, 1.5):
            for op in ("pg", "ppo"):
                _masked_action_case(step, ctx, op, alpha, mask_kind)

    # 7. tensors on a device other than the current one
    if dev.type == "cuda" and torch.cuda.device_count() > 1:
        other = torch.device("cuda", (torch.cuda.current_device() + 1) % torch.cuda.device_count())
        for alpha in (1.0, 1.5):
            for op in ("entropy", "probs", "pg", "ppo", "soft_policy_loss"):
                seed = _seed(ctx, "device", alpha, op)
                case = make_case(seed, (64, 5000), torch.float32, alpha, 1.0, "bool", other)
                label = dict(mapping=mapping_name(alpha), dtype="float32", shape=[64, 5000],
                             device=str(other), current=torch.cuda.current_device())
                check_call(step, ctx, label, op, case, seed=seed)
        step.numbers["other_device"] = str(other)
    else:
        n = torch.cuda.device_count() if dev.type == "cuda" else 0
        step.notes.append(f"skipped: tensors on a non-current device (needs two GPUs; {n} here)")
        step.numbers["other_device"] = "skipped"


ROW_BETA_SOFT_KINDS = [(torch.float32, "bool"), (torch.float32, "neginf"), (torch.bfloat16, "bool"),
                       (torch.bfloat16, "neginf")]


def _row_beta_and_soft_cases(step, ctx, shapes, alphas, kinds=ROW_BETA_SOFT_KINDS):
    """pg / ppo with a per-row beta (contiguous (N,) tensor; its other forms are in the forms
    check), ``soft_policy_loss`` (temperature 0.8) and ``soft_value`` (temperature 1.3) for
    each (N, V) in ``shapes``, alpha in ``alphas`` and (dtype, mask kind) in ``kinds``."""
    for N, V in shapes:
        for alpha in alphas:
            for dtype, mask_kind in kinds:
                for op in ("pg", "ppo", "soft_policy_loss", "soft_value"):
                    T = {"soft_policy_loss": 0.8, "soft_value": 1.3}.get(op, 1.0)
                    seed = _seed(ctx, "rowbeta-soft", N, V, alpha, dtype, mask_kind, op)
                    case = make_case(seed, (N, V), dtype, alpha, T, mask_kind, ctx.device)
                    label = dict(mapping=mapping_name(alpha), dtype=dtype_name(dtype), shape=[N, V],
                                 mask=mask_kind, temperature=T)
                    if op in ("pg", "ppo"):
                        case["beta"] = case["beta_rows"]
                        label["beta"] = "per-row"
                    check_call(step, ctx, label, op, case, need_grad=op != "soft_value", seed=seed)


def _masked_action_case(step, ctx, op, alpha, mask_kind):
    """A taken action masked (logit -inf, or mask False) with the gradient written over the
    logits: the op must raise the masked-action ValueError, not lose the evidence."""
    ctx.check_time()
    step.checked += 1
    seed = _seed(ctx, "masked", op, alpha, mask_kind)
    N, V = ctx.profile["form_shape"]
    case = make_case(seed, (N, V), torch.float32, alpha, 1.0, mask_kind, ctx.device)
    row = N // 2 + 1
    a = int(case["actions"][row])
    if mask_kind == "bool":
        case["mask"][row, a] = False
    else:
        case["logits"][row, a] = float("-inf")
    leaf = case["logits"].clone()
    label = dict(op=op, mapping=mapping_name(alpha), mask=mask_kind, shape=[N, V],
                 form="grad_buffer=logits, masked taken action", seed=seed)
    try:
        with backend("triton"):
            run_op(op, case, need_grad=True, grad_buffer=leaf, leaf=leaf)
    except ValueError as err:
        if "masked" in str(err) and "actions" in str(err):
            print(f"ok    {_label_text(label)}: raised {err}", flush=True)
            return
        step.fail("wrong error for a masked taken action", **label, error=str(err))
        return
    except Exception as err:
        step.fail("masked taken action: not a ValueError", **label,
                  error=f"{type(err).__name__}: {err}")
        return
    step.fail("masked taken action not reported (the gradient written over the logits hid it)",
              **label)


# ==========================================================================================
# Step: iterations of the threshold search
# ==========================================================================================


def step_iterations(step, ctx):
    kernels = importlib.import_module("ops.kernels")
    record = getattr(kernels, "record_iterations", None)
    if record is None:
        step.fail("ops.kernels.record_iterations is missing: the iteration counts cannot be read")
        return
    from ops.kernels import _rows

    cap = int(getattr(_rows, "MAX_ITERS", 64))
    N, V = ctx.profile["iterations"]
    for alpha in (1.1, 1.3, 1.5, 1.7, 2.0, 2.5, 3.0, 4.0):
        ctx.check_time()
        seed = _seed(ctx, "iterations", alpha)
        case = make_case(seed, (N, V), torch.float32, alpha, 1.0, None, ctx.device, light=True)
        z = case["logits"]
        with backend("triton"), record() as recs:
            ops.entropy(z, alpha=alpha)
            ops.pg_loss(z, case["actions"], case["advantages"], beta=0.1, alpha=alpha)
        step.checked += 1
        if not recs:
            step.fail("record_iterations recorded no launch", alpha=alpha, shape=[N, V])
            continue
        for rec in recs:
            it = rec["iterations"].detach().cpu().long()
            cap_here = int(rec.get("max_iters", cap))
            q = torch.quantile(it.double(), torch.tensor([0.5, 0.99], dtype=torch.float64)).tolist()
            nums = dict(mean=round(float(it.double().mean()), 2), median=q[0], p99=q[1],
                        max=int(it.max()), at_cap=int((it >= cap_here).sum()), cap=cap_here)
            step.numbers[f"{rec['op']} {mapping_name(alpha)} {N}x{V}"] = nums
            print(f"      {rec['op']:8s} alpha={alpha:<4g} iterations {nums}", flush=True)
            if nums["at_cap"]:
                step.fail("threshold search ran to its cap", op=rec["op"], alpha=alpha,
                          mapping=mapping_name(alpha), shape=[N, V], rows_at_cap=nums["at_cap"],
                          cap=cap_here, first_row=int((it >= cap_here).nonzero()[0]))


# ==========================================================================================
# Step: big (B x V > 2^31 elements)
# ==========================================================================================


def step_big(step, ctx):
    N, V = ctx.profile["big"]
    k = ctx.profile["big_rows"]
    dev = ctx.device
    step.numbers.update(shape=[N, V], elements=N * V, past_int32=N * V > 2**31,
                        first_row_past_2_31=(2**31) // V, rows_checked=[N - k, N - 1])
    g = torch.Generator(device=dev).manual_seed(_seed(ctx, "big"))
    for alpha in (1.0, 1.5):
        ctx.check_time(30)
        step.checked += 1
        label = dict(op="pg+entropy", mapping=mapping_name(alpha), dtype="bfloat16", shape=[N, V],
                     rows=f"last {k}")
        try:
            _big_case(step, ctx, g, N, V, k, alpha, label)
        except OutOfTime:
            raise
        except Exception as err:
            step.fail("kernel call raised", **label, error=f"{type(err).__name__}: {err}",
                      traceback=traceback.format_exc(limit=-3))
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def _big_case(step, ctx, g, N, V, k, alpha, label):
    """Full batch, then its last k rows alone: per-row outputs bit-identical, the gradient equal
    up to the 1/rows factor of the mean, both against the float64 reference on those rows."""
    dev = ctx.device
    z = torch.randn(N, V, generator=g, device=dev, dtype=torch.bfloat16).mul_(3.0)
    rows = torch.arange(N, device=dev)
    # half the rows take their most probable action (in the support under every alpha)
    actions = torch.where(rows % 2 == 0, z.argmax(-1), torch.randint(0, V, (N,), generator=g, device=dev))
    adv = torch.randn(N, generator=g, device=dev)
    tail = z[N - k:].clone()
    with backend("triton"):
        H = ops.entropy(z, alpha=alpha)[N - k:].clone()
        # the gradient written over the logits during the forward: no second logits-sized buffer
        z.requires_grad_(True)
        out = ops.pg_loss(z, actions, adv, beta=0.1, alpha=alpha, grad_buffer=z)
        lp, sup = out.log_prob[N - k:].clone(), out.support_size[N - k:].clone()
        grad_rows = z.detach()[N - k:].clone()
        del out, z
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        buf = tail.clone()
        leaf = tail.clone().requires_grad_(True)
        alone = ops.pg_loss(leaf, actions[N - k:], adv[N - k:], beta=0.1, alpha=alpha, grad_buffer=buf)
        H_alone = ops.entropy(tail, alpha=alpha)
    # per-row outputs must not depend on the rows around them: bit-identical
    for name, a, b in (("entropy", H, H_alone), ("log_prob", lp, alone.log_prob),
                       ("support_size", sup, alone.support_size)):
        if not torch.equal(a, b):
            i = int((a != b).nonzero()[0])
            step.fail("last rows differ from a run on those rows alone", **label, field=name,
                      row=N - k + i, got=_num(a[i]), alone=_num(b[i]))
    # the loss is a mean: grad_full * N and grad_alone * k are the same per-row gradient
    full, ref = grad_rows.double() * N, buf.double() * k
    p = compare("grad x rows", full, ref, None, torch.bfloat16, interpreted=ctx.interpreted,
                row_wise=True, atol=2.0**-8 * ref.abs().amax(-1, keepdim=True).cpu())
    if p:
        step.fail("last rows' gradient differs from a run on those rows alone", **label, **p)
    # the rows alone against the float64 reference
    case = dict(logits=tail, mask=None, actions=actions[N - k:], advantages=adv[N - k:],
                old_log_prob=None, weights=None, alpha=alpha, temperature=1.0, beta=0.1, clip_eps=0.2)
    ref64, ref32 = oracles("pg", case, True, None)
    got = dict(loss=alone.loss, entropy=H, log_prob=lp, support_size=sup,
               grad_norm_policy=alone.grad_norm_policy, grad_norm_entropy=alone.grad_norm_entropy,
               grad=buf)
    for prob in check_outputs("pg", case, got, ref64, ref32, None, ctx.interpreted):
        step.fail("last rows differ from the float64 reference", **label, **prob)
    print(f"ok    big {_label_text(label)}", flush=True)


# ==========================================================================================
# Step: large (LLM-sized rows)
# ==========================================================================================


def step_large(step, ctx):
    prof = ctx.profile
    dev = ctx.device
    for N, V in prof["large"]:
        for dtype in (torch.float32, torch.bfloat16):
            for alpha in prof["large_alphas"]:
                for mask_kind in ("bool", "neginf"):
                    for op in ("pg", "ppo", "entropy", "probs", "soft_policy_loss"):
                        seed = _seed(ctx, "large", N, V, dtype, alpha, mask_kind, op)
                        case = make_case(seed, (N, V), dtype, alpha, 0.9, mask_kind, dev)
                        label = dict(mapping=mapping_name(alpha), dtype=dtype_name(dtype), shape=[N, V],
                                     mask=mask_kind)
                        if op in ("entropy", "probs", "soft_policy_loss"):
                            check_call(step, ctx, label, op, case, seed=seed)
                            continue
                        aliased = check_call(step, ctx, dict(label, grad_buffer="logits"), op, case,
                                             grad_buffer="logits", seed=seed)
                        fresh = check_call(step, ctx, label, op, case, seed=seed)
                        if aliased is not None and fresh is not None and not torch.equal(
                                aliased["grad"], fresh["grad"]):
                            step.fail("gradient over the logits differs from a fresh buffer's", op=op,
                                      **label, seed=seed)
                        if dev.type == "cuda":
                            torch.cuda.empty_cache()
    # need_grad=False at large V: statistics only (and the soft value)
    for N, V in prof["ng_shapes"]:
        for alpha in prof["large_alphas"]:
            for op in ("pg", "ppo", "soft_policy_loss", "soft_value"):
                seed = _seed(ctx, "nograd", N, V, alpha, op)
                case = make_case(seed, (N, V), torch.bfloat16, alpha, 1.0, "bool", dev)
                label = dict(mapping=mapping_name(alpha), dtype="bfloat16", shape=[N, V], mask="bool")
                check_call(step, ctx, label, op, case, need_grad=False, seed=seed)


# ==========================================================================================
# Step: compile (no GPU needed)
# ==========================================================================================


def _compile_calls(profile):
    """(op, dtype, shape, alpha, masked, need_grad, row_beta) of the representative calls
    (``row_beta``: pg / ppo with a per-row beta tensor, the ROW_BETA variant). The shapes give
    the launch configurations a GPU picks for real sizes: several rows per program (65536 x 6,
    2048 x 1024), one single-tile row per program (2 x 5000), tiled rows (1 x 40000; one row: the
    runtime turns an int equal to 1 into a constant)."""
    kinds = {"ppo-fp32-mask": ("ppo", torch.float32, True, True, False),
             "pg-bf16": ("pg", torch.bfloat16, False, True, False),
             "pg-fp16-mask-nograd": ("pg", torch.float16, True, False, False),
             "entropy-fp32-mask": ("entropy", torch.float32, True, True, False),
             "entropy-bf16": ("entropy", torch.bfloat16, False, True, False),
             "probs-fp32-mask": ("probs", torch.float32, True, True, False),
             "probs-bf16-nograd": ("probs", torch.bfloat16, False, False, False),
             "pg-fp32-mask-rowbeta": ("pg", torch.float32, True, True, True),
             "ppo-bf16-rowbeta": ("ppo", torch.bfloat16, False, True, True),
             "soft-fp32-mask": ("soft_policy_loss", torch.float32, True, True, False),
             "soft-bf16": ("soft_policy_loss", torch.bfloat16, False, True, False),
             "softvalue-fp16-mask": ("soft_value", torch.float16, True, False, False)}
    calls = []
    for alpha in profile["compile_alphas"]:
        for shape in profile["compile_shapes"]:
            for kind in profile["compile_calls"]:
                op, dtype, masked, need_grad, row_beta = kinds[kind]
                calls.append((op, dtype, shape, alpha, masked, need_grad, row_beta))
    return calls


def _describe_arg(a):
    if isinstance(a, torch.Tensor):
        # the pointer's alignment is what the runtime specializes on (16 bytes: "D")
        return {"tensor": dtype_name(a.dtype), "ptr_mod16": a.data_ptr() % 16}
    if isinstance(a, bool):
        return {"bool": a}
    if isinstance(a, int):
        return {"int": a}
    if isinstance(a, float):
        return {"float": a}
    if a is None:
        return {"none": True}
    raise TypeError(f"unexpected launch argument {type(a).__name__}")


def _patch_everywhere(name, replacement, prefix="ops"):
    """Replaces the function ``name`` in every loaded module under ``prefix`` that holds it
    (modules import it by name); returns what to restore."""
    import pkgutil

    import ops.kernels

    for info in pkgutil.iter_modules(ops.kernels.__path__):
        importlib.import_module(f"ops.kernels.{info.name}")
    original = getattr(importlib.import_module("ops.kernels._rows" if name == "launch_config"
                                               else "ops._validate"), name)
    patched = []
    for mod_name, mod in list(sys.modules.items()):
        if (mod_name == prefix or mod_name.startswith(prefix + ".")) and getattr(mod, name, None) is original:
            setattr(mod, name, replacement)
            patched.append((mod, name, original))
    return patched


@contextlib.contextmanager
def recording_launches(launches, call=lambda: "?", zeros=True):
    """Inside: every kernel launch (``ops.kernels._rows.launch``) is appended to ``launches``
    (kernel, grid, arguments, constexprs, warps) instead of running; the row checks after a
    launch are off (its outputs were never written) and, with ``zeros``, the launchers' output
    buffers are zero-filled. What runs around the launches (validation, the reference, the
    caller's own code) runs as usual, so the launches are exactly those of a real run."""
    from ops.kernels import _rows

    if not hasattr(_rows, "launch"):
        raise RuntimeError("ops.kernels._rows.launch (the launch seam) is missing: "
                           "launches cannot be recorded")

    def recorder(kernel, grid, *args, **kwargs):
        fn = getattr(kernel, "fn", kernel)
        launches.append(dict(kernel=f"{fn.__module__}:{fn.__name__}", grid=list(grid),
                             args=[_describe_arg(a) for a in args], kwargs=dict(kwargs), call=call()))

    saved = (_rows.launch, _rows.empty)
    restore = _patch_everywhere("check_row_max", lambda row_max: None)
    _rows.launch = recorder
    if zeros:
        _rows.empty = lambda shape, dtype, device: torch.zeros(shape, dtype=dtype, device=device)
    try:
        yield launches
    finally:
        _rows.launch, _rows.empty = saved
        for mod, name, original in restore:
            setattr(mod, name, original)


def _record_launches(out_path, profile):
    """Child process of ``compile`` (TRITON_INTERPRET=1, CPU tensors): the representative calls
    with their launches recorded, not run, and the launch configuration a CUDA device gets."""
    from ops.kernels import _rows

    original = _rows.launch_config

    def on_gpu(N, V, device, *rest, **kw):
        return original(N, V, torch.device("cuda"), *rest, **kw)

    patched = _patch_everywhere("launch_config", on_gpu)
    launches = []
    current = ["?"]
    g = torch.Generator().manual_seed(0)
    with backend("triton"), recording_launches(launches, call=lambda: current[0]):
        for op, dtype, (N, V), alpha, masked, need_grad, row_beta in _compile_calls(PROFILES[profile]):
            current[0] = f"{op} {mapping_name(alpha)} {N}x{V} {dtype_name(dtype)}" + (
                " mask" if masked else "") + ("" if need_grad else " need_grad=False") + (
                " per-row beta" if row_beta else "")
            z = torch.randn(N, V, generator=g).to(dtype).requires_grad_(need_grad)
            mask = torch.rand(N, V, generator=g) < 0.8 if masked else None
            actions = torch.zeros(N, dtype=torch.long)
            if mask is not None:
                mask[:, 0] = True
            kw = dict(alpha=alpha, mask=mask)
            beta = torch.full((N,), 0.1) if row_beta else 0.1
            if op == "soft_value":
                ops.soft_value(z.detach(), torch.randn(N, V, generator=g), beta=0.1, **kw)
            elif op == "soft_policy_loss":
                out = ops.soft_policy_loss(z, torch.randn(N, V, generator=g), beta=0.1, **kw)
                if need_grad:
                    out.loss.backward()
            elif op == "entropy":
                H = ops.entropy(z, **kw)
                if need_grad:
                    H.sum().backward()
            elif op == "probs":
                p = ops.probs(z, **kw)
                if need_grad:
                    (p * torch.rand(N, V, generator=g)).sum().backward()
            elif op == "pg":
                ops.pg_loss(z, actions, torch.ones(N), beta=beta, **kw)
            else:
                ops.ppo_loss(z, actions, torch.ones(N), torch.zeros(N), beta=beta, **kw)
    for launch in launches:  # CPU tensors: take the alignment of CUDA's caching allocator
        for a in launch["args"]:
            if "tensor" in a:
                a["ptr_mod16"] = 0
    Path(out_path).write_text(json.dumps(dict(launches=launches, launch_config_patched=len(patched))))


class _JsonLines(list):
    """A list that also appends each item to a file as one JSON line (kept if the process is
    killed at a timeout)."""

    def __init__(self, path):
        super().__init__()
        self.file = open(path, "a")  # noqa: SIM115 - open for the process' lifetime

    def append(self, item):
        super().append(item)
        self.file.write(json.dumps(item) + "\n")
        self.file.flush()


def _record_pytest(out_path, pytest_args):
    """Child process of ``warm``: the kernel tests with their launches recorded, not run."""
    import pytest

    with recording_launches(_JsonLines(out_path), zeros=False):
        pytest.main(pytest_args)


def _mock_arg(desc):
    from triton.runtime.jit import MockTensor

    class Pointer(MockTensor):
        """A tensor argument as the runtime's binder sees it: a dtype and an address."""

        def __init__(self, dtype, ptr_mod16):
            super().__init__(dtype)
            self.ptr_mod16 = ptr_mod16

        def data_ptr(self):
            return self.ptr_mod16

    if "tensor" in desc:
        return Pointer(getattr(torch, desc["tensor"]), desc.get("ptr_mod16", 0))
    if "none" in desc:
        return None
    return next(iter(desc.values()))


def _compile_one(launch, arch, usage=True):
    """AOT-compiles one recorded launch with the runtime's own binder (worker process)."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime import jit as tjit

    t0 = time.time()
    module, name = launch["kernel"].split(":")
    kernel = getattr(importlib.import_module(module), name)
    target = GPUTarget("cuda", arch, 32)
    be = make_backend(target)
    args = [_mock_arg(a) for a in launch["args"]]
    kwargs = dict(launch["kwargs"])
    # what JITFunction.run does before it specializes: the same options, binder and packing (so
    # that the result lands under the runtime's own cache key)
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        kwargs["debug"] = kwargs.get("debug", getattr(kernel, "debug", None)) or knobs.runtime.debug
        for name in ("instrumentation_mode", "fpsan_homomorphic_casts"):
            if hasattr(knobs.compilation, name):
                kwargs[name] = getattr(knobs.compilation, name)
    binder = tjit.create_function_from_signature(kernel.signature, kernel.params, be)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(be, kwargs, bound, specialization, options)
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                              options=options.__dict__)
    names = list(kernel.arg_names) if hasattr(kernel, "arg_names") else [p.name for p in kernel.params]
    divisible = sorted(names[k[0]] for k, v in attrs.items() if ["tt.divisibility", 16] in v)
    equal_1 = sorted(names[k[0]] for k, v in constexprs.items()
                     if not kernel.params[k[0]].is_constexpr and v == 1)
    regs = _ptxas_usage(Path(triton.__file__).parent / "backends" / "nvidia" / "bin",
                        compiled.asm["ptx"]) if usage else {}
    return dict(seconds=round(time.time() - t0, 1), divisible_by_16=divisible, equal_to_1=equal_1,
                **regs)


def _ptxas_usage(bin_dir, ptx):
    """Registers and spill stores per thread, from ptxas -v on the PTX triton produced (the
    bundled ptxas that accepts the PTX version: triton 3.9 ships two)."""
    arch = re.search(r"^\.target (\S+)", ptx, re.M).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        for name in ("ptxas", "ptxas-blackwell"):
            if not (bin_dir / name).exists():
                continue
            res = subprocess.run([str(bin_dir / name), "-v", f"-arch={arch}", str(src), "-o",
                                  str(Path(tmp) / "k.cubin")], capture_output=True, text=True)
            regs = re.search(r"Used (\d+) registers", res.stderr)
            spills = re.search(r"(\d+) bytes spill stores", res.stderr)
            if res.returncode == 0 and regs and spills:
                return dict(registers=int(regs.group(1)), spill_store_bytes=int(spills.group(1)))
    return dict(registers=None, spill_store_bytes=None)


def _variant_key(launch):
    return json.dumps([launch["kernel"], launch["args"], sorted(launch["kwargs"].items())])


def _child_env(base=None, **extra):
    """The environment of a child process: it imports the same ops as this one."""
    env = dict(os.environ if base is None else base, **extra)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(ops.__file__).resolve().parents[1])] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def compile_launches(step, ctx, launches, arch, usage, late_ok=False):
    """AOT-compiles the distinct variants among ``launches`` in ``--jobs`` processes (into
    triton's cache, where a later launch of the same variant finds it); one table row each.
    A variant not reached in the step's time fails it, unless ``late_ok`` (warm: the launch
    compiles it then)."""
    variants = {}
    for launch in launches:
        variants.setdefault(_variant_key(launch), launch)
    items = list(variants.items())
    step.numbers["launches"] = len(launches)
    step.numbers["variants"] = len(variants)
    print(f"      {len(launches)} launches, {len(variants)} distinct variants, sm_{arch}", flush=True)
    results = {}
    jobs = max(1, min(ctx.args.jobs, len(variants)))
    if jobs == 1:
        for key, launch in items:
            if ctx.left() < 5:
                break
            results[key] = _compile_guarded(launch, arch, usage)
    elif items:
        import concurrent.futures as cf
        import multiprocessing as mp

        with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_compile_guarded, launch, arch, usage): key for key, launch in items}
            try:
                for fut in cf.as_completed(futures, timeout=max(1.0, ctx.left() - 5)):
                    results[futures[fut]] = fut.result()
            except cf.TimeoutError:
                pool.shutdown(wait=False, cancel_futures=True)
    table = []
    late = [key for key, _ in items if key not in results]
    if late and late_ok:
        step.numbers["not compiled in time"] = len(late)
        step.notes.append(f"{len(late)} of {len(items)} variants not compiled in this step's time: "
                          "their first launch compiles them")
        items = [(k, v) for k, v in items if k in results]
    for key, launch in items:
        r = results.get(key, dict(error="not compiled: the time budget ran out"))
        kw = launch["kwargs"]
        name = launch["kernel"].split(":")[1]
        table.append(dict(kernel=name, call=launch["call"], constexprs=kw, **r))
        step.checked += 1
        if "error" in r:
            step.fail("compile failed", kernel=name, call=launch["call"],
                      constexprs=" ".join(f"{k}={v}" for k, v in kw.items()), error=r["error"])
        elif usage:
            print(f"ok    {name:28s} {launch['call']:42s} {kw.get('num_warps', '?'):>2} warps "
                  f"{r['registers']} regs {r['spill_store_bytes']} B spills ({r['seconds']} s)", flush=True)
    return table


def step_compile(step, ctx):
    import triton

    step.numbers["triton"] = triton.__version__
    step.numbers["arch"] = f"sm_{ctx.args.arch}"
    step.numbers["calls"] = len(_compile_calls(ctx.profile))
    with tempfile.TemporaryDirectory() as tmp:
        rec = Path(tmp) / "launches.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--record-launches", str(rec),
               "--record-profile", ctx.profile_name]
        res = run_group(cmd, env=_child_env(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES=""), cwd=ROOT,
                        timeout=max(30, ctx.left()))
        if res.returncode != 0:
            step.fail("recording the launches failed", output=res.stderr[-3000:])
            return
        recorded = json.loads(rec.read_text())
    if not recorded["launch_config_patched"]:
        step.fail("launch_config not found in ops.kernels: the recorded launch configurations "
                  "would be the interpreter's, not a GPU's")
        return
    print(f"triton {triton.__version__}, target sm_{ctx.args.arch}", flush=True)
    table = compile_launches(step, ctx, recorded["launches"], ctx.args.arch, usage=True)
    step.numbers["variants_table"] = table
    spills = [r["spill_store_bytes"] for r in table if r.get("spill_store_bytes") is not None]
    step.numbers["max_spill_store_bytes"] = max(spills) if spills else None


WARMED = ["cases", "iterations", "big", "large"]


def step_warm(step, ctx):
    """Triton compiles a variant on its first launch, one at a time and for seconds each: the
    later steps launch a few hundred. Here they run once with every launch recorded instead of
    run (``recording_launches``), the kernel tests likewise in a child process, and the distinct
    variants are compiled in ``--jobs`` processes into triton's cache for this GPU, where the
    real launches then find them. A variant that fails to compile here fails this step."""
    launches = []
    current = ["?"]
    ctx.dry = True
    try:
        for name in [n for n in WARMED if n in ctx.names]:
            t0 = time.time()
            current[0] = name
            # quiet: the dry run's comparisons see unwritten outputs and mean nothing
            with recording_launches(launches, call=lambda: current[0]), \
                    contextlib.redirect_stdout(io.StringIO()):
                try:
                    STEPS[name](Step(name), ctx)
                except OutOfTime:  # compile what was recorded
                    step.notes.append(f"dry run of {name} stopped: out of this step's time")
                    break
                except Exception as err:  # the real step reports it
                    step.notes.append(f"dry run of {name} stopped early: {type(err).__name__}: {err}")
            step.numbers[f"dry {name} s"] = round(time.time() - t0, 1)
    finally:
        ctx.dry = False
    if {"tests", "memcheck"} & set(ctx.names):
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            rec = Path(tmp) / "launches.jsonl"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--record-pytest", str(rec)]
            try:
                res = run_group(cmd, env=_child_env(_cuda_env()), cwd=ROOT, timeout=max(10, ctx.left() * 0.4))
                if not rec.exists():
                    step.notes.append("dry run of the kernel tests recorded nothing: " + res.stderr[-1500:])
            except subprocess.TimeoutExpired:
                step.notes.append("dry run of the kernel tests did not finish in time (its launches "
                                  "so far are compiled)")
            if rec.exists():
                tested = [json.loads(line) for line in rec.read_text().splitlines() if line.strip()]
                step.numbers["test launches"] = len(tested)
                launches += tested
        step.numbers["dry tests s"] = round(time.time() - t0, 1)
    ctx.warm_launches = launches
    if ctx.device.type != "cuda":
        step.numbers["launches"] = len(launches)
        step.skip(f"recorded {len(launches)} launches; the interpreter compiles nothing")
        return
    major, minor = torch.cuda.get_device_capability(ctx.device)
    compile_launches(step, ctx, launches, 10 * major + minor, usage=False, late_ok=True)


def _compile_guarded(launch, arch, usage=True):
    try:
        return _compile_one(launch, arch, usage)
    except Exception as err:
        return dict(error=f"{type(err).__name__}: {err}"[:4000])


# ==========================================================================================
# Steps that run other programs: tests, memcheck, bench
# ==========================================================================================


def run_group(cmd, *, timeout, capture=True, **kw):
    """``subprocess.run`` in its own process group, the whole group killed at the timeout
    (compute-sanitizer and pytest start children that would otherwise keep the GPU busy)."""
    import signal

    out = subprocess.PIPE if capture else None
    with subprocess.Popen(cmd, stdout=out, stderr=out, text=True, start_new_session=True, **kw) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            raise subprocess.TimeoutExpired(cmd, timeout, output=stdout, stderr=stderr) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout or "", stderr or "")


def _cuda_env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.pop(BACKEND_ENV, None)
    return env


def _pytest(step, ctx, cmd_prefix, extra, env, timeout):
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = cmd_prefix + [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            f"--junitxml={xml}", *TEST_TARGETS] + extra
        print("      " + " ".join(cmd), flush=True)
        try:
            res = run_group(cmd, cwd=ROOT, env=env, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            step.fail("did not finish in time", seconds=round(timeout),
                      output_tail=(err.stdout or "")[-2000:])
            return None
        counts = _junit_counts(xml)
    failed = counts.pop("failed_tests", [])
    step.numbers.update(counts)
    print(res.stdout[-3000:], flush=True)
    for case in failed:
        step.fail("test failed", **case)
    return res


def _junit_counts(xml):
    import xml.etree.ElementTree as ET

    if not xml.exists():
        return dict(collected=0)
    root = ET.parse(xml).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    tests = failures = errors = skipped = 0
    failed = []
    for s in suites:
        tests += int(s.get("tests", 0))
        failures += int(s.get("failures", 0))
        errors += int(s.get("errors", 0))
        skipped += int(s.get("skipped", 0))
        for tc in s.iter("testcase"):
            for bad in list(tc.findall("failure")) + list(tc.findall("error")):
                failed.append(dict(test=f"{tc.get('classname')}::{tc.get('name')}",
                                   message=(bad.get("message") or "")[:1500]))
    return dict(tests=tests, passed=tests - failures - errors - skipped, failed=failures,
                errors=errors, skipped=skipped, failed_tests=failed)


def step_tests(step, ctx):
    res = _pytest(step, ctx, [], [], _cuda_env(), timeout=max(10, ctx.left()))
    if res is not None and res.returncode not in (0, 1) and not step.failures:
        step.fail("pytest failed to run", returncode=res.returncode,
                  output=res.stdout[-2000:] + res.stderr[-2000:])
    if res is not None and step.numbers.get("tests", 0) == 0:
        step.fail("no test ran", output=res.stdout[-2000:] + res.stderr[-2000:])


def find_sanitizer():
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    roots += sorted(str(p) for p in Path("/usr/local").glob("cuda-*"))
    for root in filter(None, roots):
        for cand in (Path(root) / "bin" / "compute-sanitizer",
                     Path(root) / "compute-sanitizer" / "compute-sanitizer"):
            if cand.exists():
                return str(cand)
    return None


def step_memcheck(step, ctx):
    tool = find_sanitizer()
    if tool is None:
        step.skip("compute-sanitizer not found (PATH, CUDA_HOME, /usr/local/cuda*)")
        return
    step.numbers["tool"] = tool
    env = _cuda_env()
    # the caching allocator hands out slices of big blocks: an access past a tensor's end stays
    # inside the block and memcheck cannot see it; plain cudaMalloc per tensor makes it visible
    env["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1"
    base = [tool, "--tool", "memcheck", "--error-exitcode", "86", "--target-processes", "all"]
    probe = base + [sys.executable, "-c",
                    "import torch; x = torch.ones(1000, device='cuda'); print(float((x * 2).sum()))"]
    try:
        res = run_group(probe, env=env, timeout=max(10, ctx.left() * 0.4))
    except subprocess.TimeoutExpired:
        step.skip("compute-sanitizer did not finish a 1000-element torch probe in time")
        return
    out = res.stdout + res.stderr
    if res.returncode != 0 or "2000.0" not in out:
        step.skip(f"compute-sanitizer does not work on this machine (probe exit {res.returncode}): "
                  + out[-800:].strip())
        return
    res = _pytest(step, ctx, base, ["-x", "-k", ctx.profile["memcheck_k"]], env,
                  timeout=max(10, ctx.left()))
    if res is None:
        return
    out = res.stdout + res.stderr
    summary = re.findall(r"ERROR SUMMARY: (\d+) error", out)
    step.numbers["memcheck_errors"] = sum(int(s) for s in summary)
    if res.returncode == 86 or step.numbers["memcheck_errors"]:
        first = re.search(r"=========\s+(Invalid .*?)\n(?:.*\n){0,6}", out)
        step.fail("memcheck reported errors", errors=step.numbers["memcheck_errors"],
                  first=first.group(0)[:2000] if first else out[-2000:])
    elif step.numbers.get("tests", 0) == 0:
        step.fail("no test ran under memcheck", output=out[-2000:])


def step_bench(step, ctx):
    env = _cuda_env()
    env[BACKEND_ENV] = "auto"
    bench = [sys.executable, str(ROOT / "scripts" / "bench_ops.py"), "--device", "cuda"]
    # within the run's budget: the fused ops against eager PyTorch on DESIGN.md's shapes and
    # 2048 x 131072, without the per-case memory processes and torch.compile's compile times
    # (the whole table: scripts/bench_ops.py --device cuda on its own)
    runs = [bench + ["--shapes", "65536x6,16384x1024,8192x32768,2048x131072", "--impls", "fused,eager",
                     "--reps", "5", "--no-memory"]]
    if ctx.profile_name == "quick":
        runs = [bench + ["--shapes", "8192x32768,2048x131072", "--impls", "fused", "--reps", "3",
                         "--no-memory"]]
    results_dir = ROOT / "benchmarks" / "results"
    before = set(results_dir.glob("*.json")) if results_dir.exists() else set()
    for i, cmd in enumerate(runs):
        print("      " + " ".join(cmd), flush=True)
        try:
            res = run_group(cmd, cwd=ROOT, env=env, timeout=max(10, ctx.left()), capture=False)
        except subprocess.TimeoutExpired:
            step.fail("bench did not finish in time", run=i, command=" ".join(cmd[1:]))
            return
        if res.returncode != 0:
            step.fail("bench failed", run=i, returncode=res.returncode, command=" ".join(cmd[1:]))
    after = set(results_dir.glob("*.json")) if results_dir.exists() else set()
    step.numbers["result_files"] = sorted(str(p.relative_to(ROOT)) for p in after - before)


# ==========================================================================================
# Driver
# ==========================================================================================

STEPS = {"compile": step_compile, "warm": step_warm, "cases": step_cases, "iterations": step_iterations,
         "big": step_big, "large": step_large, "tests": step_tests, "memcheck": step_memcheck,
         "bench": step_bench}
NEEDS_CUDA = {"tests", "memcheck", "bench"}


def environment(ctx):
    import numpy

    info = dict(
        machine=platform.node(), platform=platform.platform(), processor=platform.processor(),
        cpu_count=os.cpu_count(), python=sys.version.split()[0], torch=torch.__version__,
        torch_cuda=torch.version.cuda, numpy=numpy.__version__, ops=str(Path(ops.__file__).resolve()),
        device=str(ctx.device), seed=ctx.seed, profile=ctx.profile_name,
    )
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as err:  # the steps that need it report the failure
        info["triton"] = f"not importable: {err}"
    if torch.cuda.is_available():
        info["gpus"] = [dict(index=i, name=torch.cuda.get_device_name(i),
                             capability=".".join(map(str, torch.cuda.get_device_capability(i))),
                             memory_gib=round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1))
                        for i in range(torch.cuda.device_count())]
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, IndexError):
            info["driver"] = None
    else:
        info["gpus"] = []
    return info


def run_steps(ctx, names):
    results = {}
    for name in names:
        step = Step(name)
        print(f"=== {name}", flush=True)
        t0 = time.time()
        ctx.start_step(name, names)
        try:
            if name in NEEDS_CUDA and ctx.device.type != "cuda":
                step.skip(f"needs CUDA (--device {ctx.device})")
            elif name in NEEDS_CUDA and not torch.cuda.is_available():
                step.skip("needs CUDA: torch.cuda.is_available() is False")
            elif ctx.deadline - time.time() < 5:
                step.fail("not run: the time budget ran out before this step")
            else:
                STEPS[name](step, ctx)
        except OutOfTime as err:
            step.fail(f"stopped: {err}", checked_before=step.checked)
        except Exception as err:
            step.fail("step raised", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        step.seconds = time.time() - t0
        if step.status is None:
            step.status = "fail" if step.failures else "pass"
        print(f"=== {name}: {step.status.upper()} ({step.checked} checked, {len(step.failures)} "
              f"failures, {step.seconds:.0f} s)", flush=True)
        results[name] = step
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("steps", nargs="*", default=[], metavar="STEP",
                        help=f"steps to run (default: all): {', '.join(STEP_NAMES)}")
    parser.add_argument("--quick", action="store_true", help="smaller shapes and subsets (a smoke run)")
    parser.add_argument("--device", default="cuda",
                        help="cuda (default), cuda:N, or cpu (tiny shapes under TRITON_INTERPRET=1)")
    parser.add_argument("--out", default=None,
                        help="JSON path (default: benchmarks/results/check_gpu_<date>.json)")
    parser.add_argument("--arch", type=int, default=90, help="compute capability for compile (default 90)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    parser.add_argument("--budget", type=float, default=570.0, help="seconds for the whole run")
    parser.add_argument("--seed", type=int, default=None, help="replay a run's seed (printed in the JSON)")
    parser.add_argument("--record-launches", default=None, help=argparse.SUPPRESS)  # compile's child
    parser.add_argument("--record-profile", default="full", choices=list(PROFILES), help=argparse.SUPPRESS)
    parser.add_argument("--record-pytest", default=None, help=argparse.SUPPRESS)  # warm's child
    args = parser.parse_args(argv)
    bad = [s for s in args.steps if s not in STEPS]
    if bad:
        parser.error(f"step {bad[0]!r} is not allowed; allowed: {', '.join(STEP_NAMES)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.record_launches:
        _record_launches(args.record_launches, args.record_profile)
        return 0
    if args.record_pytest:
        _record_pytest(args.record_pytest, ["-q", "--tb=no", "-p", "no:cacheprovider", *TEST_TARGETS])
        return 0
    names = args.steps or list(STEP_NAMES)
    device = torch.device(args.device)
    if device.type == "cpu":
        # the kernels' interpreter; read by triton when ops.kernels decorates them
        os.environ["TRITON_INTERPRET"] = "1"
    elif device.type == "cuda":
        os.environ.pop("TRITON_INTERPRET", None)
        gpu_steps = [n for n in names if n != "compile"]
        if gpu_steps and not torch.cuda.is_available():
            raise SystemExit(f"steps {', '.join(gpu_steps)} need a CUDA GPU (torch.cuda.is_available() is "
                             "False); run `compile` alone, or --device cpu for the tiny CPU version")
    else:
        raise SystemExit(f"--device {args.device!r} is not allowed; allowed: cuda, cuda:N, cpu")
    profile = "tiny" if device.type == "cpu" else "quick" if args.quick else "full"
    ctx = Context(args, profile)
    ctx.names = names
    t0 = time.time()
    env = environment(ctx)
    results = run_steps(ctx, names)
    report = dict(
        script="scripts/check_gpu.py", argv=sys.argv[1:] if argv is None else list(argv),
        started=datetime.datetime.fromtimestamp(t0, datetime.timezone.utc).isoformat(timespec="seconds"),
        seconds=round(time.time() - t0, 1), environment=env,
        passed=all(s.status != "fail" for s in results.values()),
        summary={n: s.status for n, s in results.items()},
        steps={n: s.to_json() for n, s in results.items()},
    )
    out = Path(args.out) if args.out else (
        ROOT / "benchmarks" / "results" / f"check_gpu_{datetime.date.today().isoformat()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report, indent=1)
    print("summary:", ", ".join(f"{n} {s.status}" for n, s in results.items()), f"-> {out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
