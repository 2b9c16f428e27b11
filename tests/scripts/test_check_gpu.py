"""``scripts/check_gpu.py`` without a GPU: its case builders, guard regions, comparisons, JSON
and the ``compile`` step (AOT for sm_90 under the installed triton; needs no GPU).

The GPU steps' own code runs here on tiny shapes with ``--device cpu`` (the kernels under
``TRITON_INTERPRET=1``, set by ``tests/conftest.py``), and every checker is shown to fail on a
planted difference.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_gpu.py"


@pytest.fixture(scope="module")
def cg():
    spec = importlib.util.spec_from_file_location("check_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ctx(cg, tmp_path, *extra):
    args = cg.parse_args(["--device", "cpu", "--out", str(tmp_path / "out.json"), "--seed", "5", *extra])
    return cg.Context(args, "tiny")


# ------------------------------------------------------------------------------------------
# Case builders
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_per_row_forms_have_the_intended_layout(cg, dtype):
    R, C = 5, 2
    values = (torch.arange(R * C) * 3 + 1).to(dtype).view(R, C)
    seen = {}
    for form in cg.FORMS:
        obj, dense = cg.as_form(values, form)
        seen[form] = obj
        assert dense.shape == (R, C)
        if form in ("tensor", "column", "view"):
            assert torch.equal(torch.as_tensor(obj), values) and torch.equal(dense, values)
        else:  # one value for every row
            assert torch.equal(dense, values[0, 0].expand(R, C))
    assert seen["tensor"].is_contiguous()
    assert isinstance(seen["python"], float if dtype.is_floating_point else int)
    assert isinstance(seen["0-d"], torch.Tensor) and seen["0-d"].dim() == 0
    assert seen["stride0"].shape == (R, C) and seen["stride0"].stride() == (0, 0)
    assert seen["column"].stride() == (3 * C, 3) and not seen["column"].is_contiguous()
    assert seen["view"].stride() == (1, R) and not seen["view"].is_contiguous()
    with pytest.raises(ValueError, match="form='diagonal' is not allowed"):
        cg.as_form(values, "diagonal")


def test_make_case_builds_masks_and_extreme_rows(cg):
    dev = torch.device("cpu")
    case = cg.make_case(3, (6, 40), torch.bfloat16, 1.5, 0.7, "bool", dev)
    assert case["logits"].dtype == torch.bfloat16 and case["mask"].dtype == torch.bool
    assert bool(case["mask"].gather(-1, case["actions"][:, None]).all())  # actions allowed
    assert bool(case["logits"][~case["mask"]].isnan().any())  # garbage the mask must hide
    assert float(case["weights"][3]) == 0.0
    case = cg.make_case(3, (6, 40), torch.float32, 1.0, 1.0, "neginf", dev)
    assert case["mask"] is None and bool((case["logits"] == float("-inf")).any())
    z = cg.make_case(3, (6, 40), torch.float32, 2.0, 1.0, None, dev, extreme=True)["logits"]
    assert float(z.max()) == pytest.approx(3e38, rel=1e-6)
    assert float(z.min()) == pytest.approx(-3e38, rel=1e-6)
    assert bool(torch.isfinite(z).all())
    with pytest.raises(ValueError, match="mask_kind='odd' is not allowed"):
        cg.make_case(3, (6, 40), torch.float32, 2.0, 1.0, "odd", dev)


# ------------------------------------------------------------------------------------------
# Guard regions and comparisons fail on planted differences
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int32, torch.int8])
def test_guards_detect_a_planted_out_of_bounds_write(cg, dtype):
    guards = cg.GuardedBuffers()
    a = guards.empty((3, 7), dtype, "cpu", name="grad")
    b = guards.empty(5, dtype, "cpu", name="entropy")
    assert a.data_ptr() % 16 == 0 and b.data_ptr() % 16 == 0  # as a fresh CUDA tensor
    assert bool(cg._is_fill(a).all())  # poisoned until written
    a.fill_(1)
    b.fill_(2)
    assert guards.check() == []
    b._base[b.storage_offset() + b.numel()] = 0  # one past the end of b
    found = guards.check()
    assert len(found) == 1 and found[0]["field"] == "entropy"
    assert "after" in found[0]["problem"] and found[0]["count"] == 1 and found[0]["offset"] == 5
    a._base[a.storage_offset() - 1] = 0  # just before a
    found = guards.check()
    before = [f for f in found if f["field"] == "grad"]
    assert before and "before" in before[0]["problem"] and before[0]["offset"] == -1


def test_compare_passes_rounding_and_fails_planted_differences(cg):
    g = torch.Generator().manual_seed(0)
    ref64 = torch.randn(4, 9, generator=g, dtype=torch.float64)
    ref32 = ref64.float().double()
    assert cg.compare("grad", ref64.float(), ref64, ref32, torch.float32, row_wise=True) is None
    assert cg.compare("grad", ref64.bfloat16(), ref64, ref32, torch.bfloat16, row_wise=True) is None
    bad = ref64.clone()
    bad[2, 3] += 1e-3
    found = cg.compare("grad", bad.float(), ref64, ref32, torch.float32, row_wise=True)
    assert found["field"] == "grad" and found["index"] == [2, 3] and found["count"] == 1
    assert found["max_error"] == pytest.approx(1e-3, rel=1e-3) and found["tolerance"] < 1e-4
    nan = ref64.clone()
    nan[1, 1] = float("nan")
    found = cg.compare("entropy", nan, ref64, ref32, torch.float32)
    assert found["problem"] == "finiteness differs" and found["index"] == [1, 1]
    log_p = torch.tensor([-1.0, float("-inf")], dtype=torch.float64)
    assert cg.compare("log_prob", log_p, log_p, log_p, torch.float32) is None
    found = cg.compare("log_prob", torch.tensor([-1.0, -50.0]), log_p, log_p, torch.float32)
    assert found["problem"] == "finiteness differs" and found["want"] == "-inf"
    # an oracle value past fp32's range is what an fp32 output must hold: inf
    huge = torch.tensor([-6e38], dtype=torch.float64)
    assert cg.compare("log_prob", torch.tensor([float("-inf")]), huge, huge, torch.float32) is None


def test_support_and_clipped_comparisons_fail_planted_differences(cg):
    s64 = torch.tensor([3, 1, 7])
    assert cg.compare_support(torch.tensor([3, 1, 7], dtype=torch.int32), s64, s64) is None
    assert cg.compare_support(torch.tensor([3, 2, 7]), s64, torch.tensor([3, 2, 7])) is None  # fp32's
    found = cg.compare_support(torch.tensor([3, 1, 8]), s64, s64)
    assert found["index"] == 2 and found["got"] == 8 and found["want"] == 7
    ratio = torch.tensor([1.5, 1.2 + 1e-7, 0.9], dtype=torch.float64)
    clipped = torch.tensor([True, False, False])
    assert cg.compare_clipped(torch.tensor([True, True, False]), clipped, ratio, 0.2) is None  # boundary
    found = cg.compare_clipped(torch.tensor([False, False, False]), clipped, ratio, 0.2)
    assert found["field"] == "clipped" and found["index"] == 0


def test_check_call_passes_the_kernels_and_fails_planted_bugs(cg, tmp_path, monkeypatch):
    """One real call (the kernels under the interpreter) passes; an output off by 1e-3 and a
    kernel writing one element past a buffer each fail, saying which field differed."""
    from ops.kernels import _rows

    ctx = _ctx(cg, tmp_path)
    case = cg.make_case(11, (6, 40), torch.float32, 1.5, 0.8, "bool", ctx.device)
    label = dict(mapping="entmax15", dtype="float32", shape=[6, 40])
    step = cg.Step("cases")
    assert cg.check_call(step, ctx, label, "pg", case, seed=11) is not None
    assert step.failures == [] and step.checked == 1

    real_entropy = cg.ops.entropy
    monkeypatch.setattr(cg.ops, "entropy", lambda *a, **k: real_entropy(*a, **k) + 1e-3
                        if os.environ.get(cg.BACKEND_ENV) == "triton" else real_entropy(*a, **k))
    cg.check_call(step, ctx, label, "entropy", case, seed=11)
    assert [f["field"] for f in step.failures] == ["entropy"]
    assert step.failures[0]["op"] == "entropy" and step.failures[0]["shape"] == [6, 40]
    monkeypatch.setattr(cg.ops, "entropy", real_entropy)

    real_launch = _rows.launch

    def overrun(kernel, grid, *args, **kwargs):
        out = real_launch(kernel, grid, *args, **kwargs)
        for t in args:  # one element past the end of every output carved from a guarded buffer
            if isinstance(t, torch.Tensor) and t._base is not None and t.dtype == torch.float32:
                end = t.storage_offset() + t.numel()
                if end < t._base.numel():
                    t._base.view(-1)[end] = 0.0
        return out

    monkeypatch.setattr(_rows, "launch", overrun)
    step = cg.Step("cases")
    cg.check_call(step, ctx, label, "pg", case, seed=11)
    assert any(f["what"] == "guard region written" for f in step.failures), step.failures


def test_row_beta_and_soft_ops_pass_and_broken_references_are_caught(cg, tmp_path, monkeypatch):
    """The calls added for per-row beta and the soft ops run on the kernels (interpreter) and
    pass against the float64 reference: pg / ppo with a per-row beta (contiguous, 0-d, stride-0,
    strided), soft_policy_loss and soft_value, both mask kinds, fp32 and bf16. A reference that
    gives every row the mean beta, or soft loss rows off by 1e-3, is caught, naming the field."""
    import dataclasses

    ctx = _ctx(cg, tmp_path)
    step = cg.Step("cases")
    kinds = [(torch.float32, "bool"), (torch.bfloat16, "neginf")]
    cg._row_beta_and_soft_cases(step, ctx, [(6, 40)], [1.5], kinds=kinds)
    assert step.failures == []
    assert step.numbers["checked_by_op"] == {"pg per-row beta": 2, "ppo per-row beta": 2,
                                             "soft_policy_loss": 2, "soft_value": 2}
    for form in ("0-d", "stride0", "column"):  # forms a kernel could misread as (N,) rows
        case = cg.make_case(12, (3, 2, 40), torch.float32, 1.3, 0.8, "bool", ctx.device)
        case["beta"], _ = cg.as_form(case["beta_rows"], form)
        cg.check_call(step, ctx, dict(form=f"beta:{form}"), "ppo", case, seed=12)
    assert step.failures == [] and step.numbers["checked_by_op"]["ppo per-row beta"] == 5

    case = cg.make_case(13, (6, 40), torch.float32, 1.0, 1.0, "bool", ctx.device)
    assert float(case["beta_rows"].std()) > 0.05  # distinct betas: a per-row mix-up shows
    real_pg, real_soft = cg.reference.pg, cg.reference.soft

    def mean_beta(*, inp):
        if isinstance(inp.beta, torch.Tensor):
            inp = dataclasses.replace(inp, beta=inp.beta.mean().expand_as(inp.beta).contiguous())
        return real_pg(inp=inp)

    monkeypatch.setattr(cg.reference, "pg", mean_beta)
    step = cg.Step("cases")
    cg.check_call(step, ctx, {}, "pg", dict(case, beta=case["beta_rows"]), seed=13)
    fields = {f["field"] for f in step.failures}
    assert {"loss", "grad"} <= fields and all(f["op"] == "pg" for f in step.failures), step.failures
    monkeypatch.setattr(cg.reference, "pg", real_pg)

    monkeypatch.setattr(cg.reference, "soft", lambda *, inp: (lambda r: r._replace(
        loss_rows=r.loss_rows + 1e-3))(real_soft(inp=inp)))
    step = cg.Step("cases")
    cg.check_call(step, ctx, {}, "soft_policy_loss", case, seed=13)
    cg.check_call(step, ctx, {}, "soft_value", case, need_grad=False, seed=13)
    assert [(f["op"], f["field"]) for f in step.failures] == [("soft_policy_loss", "loss"),
                                                            ("soft_value", "value")], step.failures


def test_warm_records_the_launches_of_the_later_steps_without_running_them(cg, tmp_path, monkeypatch):
    """warm runs the steps dry: every launch is recorded (arguments, constexprs, warps), none
    runs, and the seams are restored afterwards (on a GPU the variants then go to the compiler;
    under the interpreter there is nothing to compile: skipped)."""
    from ops.kernels import _rows

    ran = []
    monkeypatch.setattr(_rows, "launch", lambda *a, **k: ran.append(a))
    seams = (_rows.launch, _rows.empty)
    ctx = _ctx(cg, tmp_path)
    ctx.names = ["warm", "iterations", "big"]
    step = cg.Step("warm")
    cg.step_warm(step, ctx)
    assert ran == [] and (_rows.launch, _rows.empty) == seams and not ctx.dry
    launches = ctx.warm_launches
    assert {x["call"] for x in launches} == {"iterations", "big"}
    assert step.status == "skip" and step.numbers["launches"] == len(launches)  # CPU: nothing compiled
    kernels = {x["kernel"].split(":")[1] for x in launches}
    assert {"_policy_loss_forward_kernel", "_entropy_forward_kernel"} <= kernels
    first = launches[0]
    assert {"num_warps", "BLOCK_V"} <= set(first["kwargs"])
    assert {"tensor": "float32", "ptr_mod16": 0} in first["args"] and {"int": 300} in first["args"]
    assert step.failures == [] and step.numbers["dry big s"] >= 0


def test_time_budget_stops_a_step_and_fails_it(cg, tmp_path):
    ctx = _ctx(cg, tmp_path, "--budget", "0")
    results = cg.run_steps(ctx, ["iterations"])
    assert results["iterations"].status == "fail"
    assert "time budget" in results["iterations"].failures[0]["what"]


def test_memcheck_is_skipped_with_the_reason_when_the_tool_does_not_work(cg, tmp_path, monkeypatch):
    ctx = _ctx(cg, tmp_path)
    monkeypatch.setattr(cg, "find_sanitizer", lambda: None)
    step = cg.Step("memcheck")
    cg.step_memcheck(step, ctx)
    assert step.status == "skip" and "not found" in step.notes[0]
    monkeypatch.setattr(cg, "find_sanitizer", lambda: "/bin/false")  # a tool that fails its probe
    step = cg.Step("memcheck")
    cg.step_memcheck(step, ctx)
    assert step.status == "skip" and "does not work on this machine" in step.notes[0]


def test_junit_counts(cg, tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.ops.test_kernels" name="test_a"/>'
        '<testcase classname="tests.ops.test_kernels" name="test_b">'
        '<failure message="grad (seed=1)"/></testcase>'
        '<testcase classname="tests.ops.test_kernels" name="test_c"><skipped/></testcase>'
        '<testcase classname="tests.ops.test_kernels" name="test_d"/></testsuite></testsuites>')
    counts = cg._junit_counts(xml)
    assert (counts["tests"], counts["passed"], counts["failed"], counts["skipped"]) == (4, 2, 1, 1)
    assert counts["failed_tests"] == [dict(test="tests.ops.test_kernels::test_b", message="grad (seed=1)")]


# ------------------------------------------------------------------------------------------
# The JSON
# ------------------------------------------------------------------------------------------


def test_json_has_the_promised_fields(cg, tmp_path):
    out = tmp_path / "check.json"
    rc = cg.main(["iterations", "tests", "--device", "cpu", "--out", str(out), "--seed", "7"])
    report = json.loads(out.read_text())
    env = report["environment"]
    for key in ("machine", "platform", "python", "torch", "torch_cuda", "triton", "numpy", "gpus",
                "device", "seed", "ops"):
        assert key in env, key
    assert env["seed"] == 7 and env["triton"] == __import__("triton").__version__
    assert report["summary"] == {"iterations": report["steps"]["iterations"]["status"], "tests": "skip"}
    assert report["steps"]["tests"]["notes"] and report["steps"]["tests"]["status"] == "skip"
    it = report["steps"]["iterations"]
    for key in ("status", "seconds", "checked", "failures", "numbers", "notes"):
        assert key in it
    rows = [v for k, v in it["numbers"].items() if "entmax" in k or "sparsemax" in k]
    assert rows and all({"mean", "max", "at_cap", "cap"} <= set(v) for v in rows)
    assert report["passed"] == (it["status"] != "fail") and rc == (0 if report["passed"] else 1)


def test_bad_arguments_get_one_clear_error(cg, capsys):
    with pytest.raises(SystemExit):
        cg.parse_args(["compile", "warp"])
    assert "step 'warp' is not allowed" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# compile: AOT for sm_90 of the launches the ops really make (no GPU needed)
# ------------------------------------------------------------------------------------------


def _cuda_compiler_missing():
    """Why triton's CUDA compiler cannot run here, or None."""
    import triton

    try:
        from triton.backends import backends
    except ImportError as err:
        return f"triton.backends: {err}"
    if "nvidia" not in backends:
        return f"triton {triton.__version__} has no nvidia backend"
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        return f"triton {triton.__version__} ships no ptxas ({ptxas})"
    return None


def test_compile_step_compiles_recorded_variants_for_sm90(tmp_path):
    why = _cuda_compiler_missing()
    if why:
        pytest.skip(f"triton's CUDA compiler cannot run here: {why}")
    out = tmp_path / "compile.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, str(SCRIPT), "compile", "--device", "cpu", "--jobs", "2",
                          "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    step = json.loads(out.read_text())["steps"]["compile"]
    assert step["status"] == "pass" and step["failures"] == []
    nums = step["numbers"]
    assert nums["arch"] == "sm_90" and nums["variants"] == len(nums["variants_table"]) >= 3
    kernels = {row["kernel"] for row in nums["variants_table"]}
    assert {"_policy_loss_forward_kernel", "_entropy_forward_kernel", "_entropy_backward_kernel",
            "_soft_loss_forward_kernel"} <= kernels
    # the per-row beta variant is among them, reported as such
    assert any(row["constexprs"].get("ROW_BETA") and "per-row beta" in row["call"]
               for row in nums["variants_table"])
    for row in nums["variants_table"]:
        assert isinstance(row["registers"], int) and row["registers"] > 0, row
        # the runtime's specialization: 16-byte aligned pointers, one row -> N constant
        assert "logits_ptr" in row["divisible_by_16"] and "N" in row["equal_to_1"], row
        # the launch configuration a GPU picks for a 40000-wide row: 4096-wide tiles
        assert row["constexprs"]["BLOCK_V"] == 4096 and row["constexprs"]["num_warps"] > 1
    assert math.isfinite(step["seconds"])
