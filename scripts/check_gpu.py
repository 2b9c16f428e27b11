"""Everything the Triton kernels still need a GPU for, in one command.

    .venv/bin/python scripts/check_gpu.py                 # all steps below, in order
    .venv/bin/python scripts/check_gpu.py compile         # no GPU needed: AOT-compile for sm_90
    .venv/bin/python scripts/check_gpu.py tests large bench

Steps:

* ``compile``: compiles every kernel family (each mapping, single-tile and tiled rows, PPO and
  pg, masks, bf16) to a cubin for ``--arch`` (default 90, H100) with the installed triton and
  prints ptxas' register and spill counts. Needs no GPU: run it under each triton version the
  project supports (3.6 and 3.9) to catch front-end incompatibilities.
* ``tests``: ``tests/ops/test_kernels.py`` on CUDA tensors (compiled kernels, not the
  interpreter; bf16 then rounds to nearest and the test expects half a bf16 ulp).
* ``large``: LLM-sized rows (V up to 262144, including 131072) for pg, ppo and the entropy
  forward/backward at alpha in {1, 1.5, 2, 1.3}, fp32 and bf16, against the float64 reference,
  with every output buffer and the gradient buffer filled with NaN before the launch (so an
  element the kernel never writes fails), and the gradient written over the logits (aliasing).
* ``bench``: ``scripts/bench_ops.py --device cuda`` on DESIGN.md's shapes plus 2048x131072 and
  the PPO table's shapes; results land in ``benchmarks/results/``.

Exit status 1 if any step fails; a summary is printed at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "ops"))


# ------------------------------------------------------------------------------------------
# compile: no GPU needed
# ------------------------------------------------------------------------------------------


def _compile_cases():
    """(kernel, signature, constexprs, num_warps, label): each mapping, tiled and single-tile."""
    import torch

    from ops.kernels._rows import ENTMAX, ENTMAX15, SOFTMAX, SPARSEMAX, launch_config
    from ops.kernels.entropy import _entropy_backward_kernel, _entropy_forward_kernel
    from ops.kernels.policy_loss import _policy_loss_forward_kernel

    mappings = [(SOFTMAX, False, "softmax"), (SPARSEMAX, True, "sparsemax"),
                (ENTMAX15, True, "entmax15"), (ENTMAX, True, "entmax-newton"),
                (ENTMAX, False, "entmax-bisect")]
    # (SINGLE, BLOCK_N, BLOCK_V, num_warps) as launch_config picks them on a GPU; the tiled
    # configuration (long rows) first
    tilings = []
    for N, V in [(8192, 32768), (4096, 8192), (16384, 1024), (65536, 6), (256, 64)]:
        cfg = launch_config(N, V, torch.device("cuda"))
        tilings.append((cfg["SINGLE"], cfg["BLOCK_N"], cfg["BLOCK_V"], cfg["num_warps"],
                        f"{N}x{V}"))
    cases = []
    for dtype in ("fp32", "bf16"):
        for mapping, newton, mname in mappings:
            for single, block_n, block_v, warps, tname in tilings:
                if dtype == "bf16" and single:
                    continue
                for is_ppo in (True, False):
                    if not is_ppo and (dtype == "bf16" or single):
                        continue
                    sig = dict(logits_ptr=f"*{dtype}", mask_ptr="*u8", actions_ptr="*i64",
                               advantages_ptr="*fp32", old_log_prob_ptr="*fp32",
                               row_scale_ptr="*fp32", grad_ptr=f"*{dtype}", loss_ptr="*fp32",
                               entropy_ptr="*fp32", log_prob_ptr="*fp32", support_ptr="*i32",
                               ratio_ptr="*fp32", clipped_ptr="*i8", row_max_ptr="*fp32",
                               grad_sq_ptr="*fp32", N="i32", V="i32", stride_row="i32",
                               beta="fp32", clip_eps="fp32", alpha="fp32", temperature="fp32")
                    cx = dict(MAPPING=mapping, NEWTON=newton, IS_PPO=is_ppo, HAS_MASK=is_ppo,
                              NEED_GRAD=True, SINGLE=single, BLOCK_N=block_n, BLOCK_V=block_v,
                              MAX_ITERS=64)
                    label = f"loss {'ppo' if is_ppo else 'pg'} {mname} {tname} {dtype}"
                    cases.append((_policy_loss_forward_kernel, sig, cx, warps, label))
            if dtype == "fp32":
                for single, block_n, block_v, warps, tname in tilings[:3:2]:
                    sig = dict(logits_ptr="*fp32", mask_ptr="*u8", entropy_ptr="*fp32",
                               support_ptr="*i32", row_max_ptr="*fp32", stats_ptr="*fp32",
                               N="i32", V="i32", stride_row="i32", alpha="fp32",
                               temperature="fp32")
                    cx = dict(MAPPING=mapping, NEWTON=newton, HAS_MASK=True, SINGLE=single,
                              BLOCK_N=block_n, BLOCK_V=block_v, MAX_ITERS=64)
                    cases.append((_entropy_forward_kernel, sig, cx, warps,
                                  f"entropy fwd {mname} {tname}"))
                if newton or mapping == SOFTMAX:
                    sig = dict(logits_ptr="*fp32", mask_ptr="*u8", stats_ptr="*fp32",
                               entropy_ptr="*fp32", grad_H_ptr="*fp32", grad_ptr="*fp32",
                               N="i32", V="i32", stride_row="i32", alpha="fp32",
                               temperature="fp32")
                    _, block_n, block_v, warps, tname = tilings[0]
                    cx = dict(MAPPING=mapping, HAS_MASK=True, BLOCK_N=block_n, BLOCK_V=block_v)
                    cases.append((_entropy_backward_kernel, sig, cx, warps,
                                  f"entropy bwd {mname} {tname}"))
    return cases


def step_compile(args):
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    target = GPUTarget("cuda", args.arch, 32)
    print(f"triton {triton.__version__}, target sm_{args.arch}")
    ok = True
    for kernel, sig, cx, warps, label in _compile_cases():
        sig = dict(sig, **{k: "constexpr" for k in cx})
        t0 = time.time()
        try:
            out = triton.compile(ASTSource(kernel, sig, constexprs=cx), target=target,
                                 options=dict(num_warps=warps))
        except Exception:
            ok = False
            print(f"FAIL  {label}\n{traceback.format_exc()}")
            continue
        print(f"ok    {label:42s} {warps:2d} warps  {_ptxas_usage(bin_dir, out.asm['ptx'])}"
              f"  ({time.time() - t0:.1f} s)")
    return ok


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
                return f"{regs.group(1):>3s} regs, {spills.group(1)} B spill stores"
    return "(ptxas usage unavailable)"


# ------------------------------------------------------------------------------------------
# tests / large / bench: need CUDA
# ------------------------------------------------------------------------------------------


def _need_cuda():
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("this step needs a CUDA GPU (torch.cuda.is_available() is False)")
    return torch


def step_tests(args):
    _need_cuda()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "pytest", "-q", str(ROOT / "tests" / "ops" / "test_kernels.py")]
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode == 0


LARGE_SHAPES = [(8, 262144), (16, 131072), (64, 32768), (3, 9000), (4096, 6)]


def step_large(args):
    torch = _need_cuda()
    import test_kernels as tk

    from ops import reference
    from ops.kernels import _rows
    from ops.kernels import backend as kb

    def poisoned(shape, dtype, device):
        fill = float("nan") if dtype.is_floating_point else -77
        return torch.full(shape if isinstance(shape, tuple) else (shape,), fill, dtype=dtype,
                          device=device)

    _rows.empty = poisoned
    ok = True
    for N, V in LARGE_SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            for alpha in (1.0, 1.5, 2.0, 1.3):
                for loss in ("pg", "ppo", "entropy"):
                    label = f"{loss:7s} {N}x{V} {str(dtype)[6:]:8s} alpha={alpha}"
                    seed = int.from_bytes(os.urandom(4), "little")
                    t0 = time.time()
                    try:
                        _large_case(torch, tk, reference, kb, loss, N, V, dtype, alpha, seed)
                        print(f"ok    {label}  ({time.time() - t0:.1f} s)")
                    except Exception:
                        ok = False
                        print(f"FAIL  {label} seed={seed}\n{traceback.format_exc()}")
                    torch.cuda.empty_cache()
    return ok


def _large_case(torch, tk, reference, kb, loss, N, V, dtype, alpha, seed):
    mask_kind = "bool" if V % 2 else "neginf"
    T = 0.9
    case = tk.make_case(seed, N, V, dtype, mask_kind, alpha, T, True)
    c = case
    if loss == "entropy":
        H, support, saved = kb.entropy_forward(c["logits"], c["mask"], alpha, T)
        grad_H = torch.randn(N, device=tk.DEVICE)
        grad = kb.entropy_backward(saved, grad_H, alpha, T)
        refs = []
        for dt in (torch.float64, torch.float32):
            H_r, s_r, saved_r = reference.entropy_forward(c["logits"].to(dt), c["mask"], alpha, T)
            refs.append((H_r, s_r, reference.entropy_backward(saved_r, grad_H.to(dt), alpha, T)))
        (H64, s64, g64), (H32, s32, g32) = refs
        tk.assert_close("entropy", H, H64, H32, torch.float32, seed)
        tk.assert_support(support, s64, s32, seed)
        terms = grad_H.double().abs().cpu()[:, None] / T * (
            1.0 + H64.cpu()[:, None] if alpha == 1.0 else 1.0 / (alpha - 1.0))
        tk.assert_close("entropy grad", grad, g64, g32, dtype, seed, row_wise=True,
                        atol=8 * tk.EPS32 * terms)
        return
    beta = 0.2
    ref64, ref32 = tk.loss_oracles(c, loss, beta, alpha, T)
    z = c["logits"].clone()  # the gradient overwrites it: the memory-saving mode
    args = [c["mask"], c["actions"], c["advantages"]]
    args += [c["old_log_prob"], c["row_scale"], beta, 0.2] if loss == "ppo" else [c["row_scale"], beta]
    out = getattr(kb, loss)(z, *args, alpha, T, True, grad_out=z)
    assert out["grad"].data_ptr() == z.data_ptr()
    for key in ("loss_rows", "entropy", "log_prob"):
        tk.assert_close(key, out[key], ref64[key], ref32[key], torch.float32, seed)
    tk.assert_support(out["support"], ref64["support"], ref32["support"], seed)
    pol, ent = tk.grad_terms(ref64, c["advantages"], c["row_scale"], T, beta, alpha)
    tk.assert_close("grad", out["grad"], ref64["grad"], ref32["grad"], dtype, seed,
                    row_wise=True, atol=8 * tk.EPS32 * (pol + ent))
    for key, terms in (("grad_policy_sq", pol), ("grad_entropy_sq", ent)):
        tk.assert_close(key, out[key], ref64[key], ref32[key], torch.float32, seed,
                        atol=tk.sq_norm_atol(terms, V))
    # a fresh (poisoned) gradient buffer gives the same bits as the aliased one
    fresh = getattr(kb, loss)(c["logits"], *args, alpha, T, True)
    assert torch.equal(fresh["grad"], out["grad"])


def step_bench(args):
    _need_cuda()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["ENTROPY_RL_OPS_BACKEND"] = "auto"
    bench = [sys.executable, str(ROOT / "scripts" / "bench_ops.py"), "--device", "cuda"]
    runs = [bench + ["--shapes", "65536x6,16384x1024,8192x32768,2048x131072"],
            bench + ["--shapes", "8192x32768,2048x131072", "--losses", "ppo",
                     "--mappings", "softmax", "--impls", "fused"]]
    return all(subprocess.run(cmd, cwd=ROOT, env=env).returncode == 0 for cmd in runs)


STEPS = {"compile": step_compile, "tests": step_tests, "large": step_large, "bench": step_bench}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("steps", nargs="*", default=list(STEPS), choices=list(STEPS))
    parser.add_argument("--arch", type=int, default=90, help="compute capability for compile")
    args = parser.parse_args()
    results = {}
    for name in args.steps:
        print(f"=== {name}", flush=True)
        t0 = time.time()
        results[name] = bool(STEPS[name](args))
        print(f"=== {name}: {'ok' if results[name] else 'FAILED'} ({time.time() - t0:.0f} s)",
              flush=True)
    print("summary:", ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in results.items()))
    sys.exit(0 if all(results.values()) else 1)


if __name__ == "__main__":
    main()
