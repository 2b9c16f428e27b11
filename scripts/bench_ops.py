"""Forward+backward time and peak extra memory of the fused losses against their peers.

For each (loss, mapping, shape, dtype) it times ``loss.backward()`` of
``mean(-A log pi(a) - beta H)`` (pg), the PPO clipped surrogate with entropy (ppo) or the soft
actor loss ``mean(-<p, q> - beta H)`` with fixed action values q (soft):

* ``fused``: ``ops.pg_loss`` / ``ops.ppo_loss`` / ``ops.soft_policy_loss`` (the Triton kernels
  on CUDA, the PyTorch closed forms on the CPU);
* ``fused_rows`` (only when asked, ``--impls fused,fused_rows``): the same with beta given per
  row (a tensor of BETA, the path a population of runs takes; on CUDA the ROW_BETA variant);
* ``eager``: the same loss as a PyTorch composite, differentiated by autograd through the
  mapping (``log_softmax`` for softmax; the ``entmax`` package's sparsemax / entmax15 for
  alpha > 1, the implementation users would otherwise pick);
* ``compile``: that composite under ``torch.compile``.

Peak memory is the extra memory one fwd+bwd needs beyond its inputs: on CUDA from
``torch.cuda.max_memory_allocated``, on the CPU from the process's resident high-water mark
(reset before the step) in a fresh subprocess per case. Both exclude the returned gradient.
Results go to ``benchmarks/results/ops_<device>_<date>.json`` with the machine and
device names.

    python scripts/bench_ops.py                       # CPU, every shape and dtype
    python scripts/bench_ops.py --device cuda         # GPU, every case
    python scripts/bench_ops.py --shapes 16384x1024 --dtypes fp32 --impls fused,eager
    python scripts/bench_ops.py --losses soft             # the soft actor loss only
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import ops
from rl.analysis.machine import machine_info
from rl.checkpoint import write_json

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MAPPINGS = {"softmax": 1.0, "entmax15": 1.5, "sparsemax": 2.0}
BETA, CLIP = 0.01, 0.2


def parse_shape(s: str) -> tuple[int, int]:
    b, v = s.lower().split("x")
    return int(b), int(v)


def make_inputs(shape, dtype, device, alpha, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, V = shape
    logits = (torch.randn(B, V, generator=g) * 2).to(device=device, dtype=dtype)
    with torch.no_grad():
        actions = ops.sample(logits.float(), alpha=alpha)
        old = logits.float() + 0.1 * torch.randn(B, V, generator=g).to(device)
        old_lp = ops.probs(old, alpha=alpha).gather(-1, actions[:, None]).squeeze(-1)
        # an old policy never gives 0 to an action it sampled: keep the log finite
        old_log_prob = old_lp.clamp(min=1e-6).log()
    advantages = torch.randn(B, generator=g).to(device)
    # the soft loss's action values (a critic's output: float32, the logits' shape)
    q_values = (3 * torch.randn(B, V, generator=g)).to(device)
    return logits, actions, advantages, old_log_prob, q_values


def _composite_probs(z, alpha):
    if alpha == 1.0:
        return None
    import entmax

    return entmax.sparsemax(z, dim=-1) if alpha == 2.0 else entmax.entmax15(z, dim=-1)


def composite_loss(kind, alpha):
    """The loss written the obvious way, differentiated by autograd through the mapping."""

    def loss(logits, actions, advantages, old_log_prob, q_values):
        z = logits.float()
        idx = actions.unsqueeze(-1)
        if alpha == 1.0:
            log_p = torch.log_softmax(z, dim=-1)
            H = -(log_p.exp() * log_p).sum(-1)
            p_a = None
            log_p_a = log_p.gather(-1, idx).squeeze(-1)
        else:
            p = _composite_probs(z, alpha)
            H = (1 - p.pow(alpha).sum(-1)) / (alpha * (alpha - 1))
            p_a = p.gather(-1, idx).squeeze(-1)
            log_p_a = p_a.clamp(min=1e-30).log()
        if kind == "pg":
            return (-advantages * log_p_a - BETA * H).mean()
        if kind == "soft":
            p = log_p.exp() if alpha == 1.0 else p
            return (-(p * q_values).sum(-1) - BETA * H).mean()
        ratio = torch.exp(log_p_a - old_log_prob) if p_a is None else p_a / old_log_prob.exp()
        surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - CLIP, 1 + CLIP) * advantages)
        return (-surrogate - BETA * H).mean()

    return loss


def fused_loss(kind, alpha, per_row_beta=False):
    def loss(logits, actions, advantages, old_log_prob, q_values):
        beta = torch.full_like(advantages, BETA) if per_row_beta else BETA
        if kind == "pg":
            return ops.pg_loss(logits, actions, advantages, beta=beta, alpha=alpha).loss
        if kind == "soft":
            return ops.soft_policy_loss(logits, q_values, beta=BETA, alpha=alpha).loss
        return ops.ppo_loss(logits, actions, advantages, old_log_prob, beta=beta,
                            clip_eps=CLIP, alpha=alpha).loss

    return loss


def build(impl, kind, alpha):
    if impl in ("fused", "fused_rows"):
        return fused_loss(kind, alpha, per_row_beta=impl == "fused_rows")
    fn = composite_loss(kind, alpha)
    if impl == "compile":
        fn = torch.compile(fn, dynamic=False)
    return fn


def _step(fn, inputs):
    logits = inputs[0].detach().requires_grad_()
    fn(logits, *inputs[1:]).backward()
    return logits.grad


def time_case(fn, inputs, device, reps, max_seconds, min_reps=3):
    _step(fn, inputs)  # warm-up (and compilation)
    if device == "cuda":
        try:
            from triton.testing import do_bench

            return do_bench(lambda: _step(fn, inputs), return_mode="median"), "triton.testing.do_bench"
        except ImportError:
            pass
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            _step(fn, inputs)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times), "cuda events"
    times, t_end = [], time.perf_counter() + max_seconds
    for _ in range(reps):
        t0 = time.perf_counter()
        _step(fn, inputs)
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() > t_end and len(times) >= min_reps:
            break
    return statistics.median(times), "time.perf_counter"


def time_interleaved(fns, inputs, reps, max_seconds, min_reps=3):
    """CPU: median ms per implementation, their steps interleaved rep by rep.

    On a shared, noisy machine the load drifts over minutes; alternating the implementations
    puts each ratio under the same load, which timing them one after the other does not.
    Returns ``{impl: ms or an exception}``.
    """
    times, failed = {impl: [] for impl in fns}, {}
    for impl, fn in fns.items():
        try:
            _step(fn, inputs)  # warm-up (and compilation)
        except Exception as err:  # a peer that cannot run this case
            failed[impl] = err
    live = [impl for impl in fns if impl not in failed]
    t_end = time.perf_counter() + max_seconds * max(len(live), 1)
    for r in range(reps):
        for impl in list(live):
            try:
                t0 = time.perf_counter()
                _step(fns[impl], inputs)
                times[impl].append((time.perf_counter() - t0) * 1e3)
            except Exception as err:
                failed[impl] = err
                live.remove(impl)
        if time.perf_counter() > t_end and r + 1 >= min_reps:
            break
    return {impl: failed.get(impl) or statistics.median(times[impl]) for impl in fns}


def _status_bytes(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss():
    # Writing 5 to clear_refs resets the high-water mark VmHWM to the current RSS (Linux >= 4.0),
    # so the peak of the step is not hidden by the peak of building its inputs.
    Path("/proc/self/clear_refs").write_text("5")


def memory_case(impl, kind, mapping, shape, dtype_name, device):
    """Peak extra bytes of one fwd+bwd (CPU: measured in a fresh subprocess)."""
    alpha = MAPPINGS[mapping]
    if device == "cuda":
        inputs = make_inputs(shape, DTYPES[dtype_name], device, alpha)
        fn = build(impl, kind, alpha)
        _step(fn, inputs)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        grad = _step(fn, inputs)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base - grad.numel() * grad.element_size()
        return max(extra, 0)
    cmd = [sys.executable, __file__, "--_memory", impl, kind, mapping,
           f"{shape[0]}x{shape[1]}", dtype_name]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr else "failed")
    return int(out.stdout.strip().splitlines()[-1])


def _release_freed_heap():
    # glibc keeps freed small blocks resident; trimming returns them to the OS so that the
    # measured step cannot silently reuse the warm-up's memory (it would look free).
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _memory_child(impl, kind, mapping, shape, dtype_name):
    torch.set_num_threads(1)
    alpha = MAPPINGS[mapping]
    inputs = make_inputs(parse_shape(shape), DTYPES[dtype_name], "cpu", alpha)
    fn = build(impl, kind, alpha)
    # a warm-up step loads lazy kernels; torch.compile's runs on the full inputs (a compile for
    # another shape would recompile inside the measured step), the others' on a slice
    _step(fn, inputs if impl == "compile" else [t[:64] for t in inputs])
    gc.collect()
    _release_freed_heap()
    logits = inputs[0].detach().requires_grad_()
    _reset_peak_rss()
    base = _status_bytes("VmRSS")
    fn(logits, *inputs[1:]).backward()
    grad_bytes = logits.grad.numel() * logits.grad.element_size()
    print(max(_status_bytes("VmHWM") - base - grad_bytes, 0))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        choices=["cpu", "cuda"])
    parser.add_argument("--shapes", default="65536x6,16384x1024,8192x32768")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--losses", default="pg,ppo,soft")
    parser.add_argument("--mappings", default="softmax,entmax15,sparsemax")
    parser.add_argument("--impls", default="fused,eager,compile")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--max-seconds", type=float, default=20.0, help="CPU time cap per case")
    parser.add_argument("--min-reps", type=int, default=3,
                        help="CPU: repeats kept even past --max-seconds (1 bounds huge cases)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--_memory", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._memory:
        _memory_child(*args._memory)
        return
    torch.set_num_threads(args.threads)
    device = args.device
    out = Path(args.out) if args.out else (
        ROOT / "benchmarks" / "results" / f"ops_{device}_{dt.date.today().isoformat()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    header = {"benchmark": "bench_ops", "date": dt.datetime.now(dt.timezone.utc).isoformat(),
              "device": device, **machine_info(device, ("triton",) if device == "cuda" else ()),
              "beta": BETA, "clip_eps": CLIP,
              "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
    rows = []
    for shape in map(parse_shape, args.shapes.split(",")):
        for dtype_name in args.dtypes.split(","):
            for kind in args.losses.split(","):
                for mapping in args.mappings.split(","):
                    alpha = MAPPINGS[mapping]
                    inputs = make_inputs(shape, DTYPES[dtype_name], device, alpha)
                    impls = args.impls.split(",")
                    if device == "cpu":
                        cpu_ms = time_interleaved({i: build(i, kind, alpha) for i in impls},
                                                  inputs, args.reps, args.max_seconds,
                                                  args.min_reps)
                    for impl in impls:
                        row = {"loss": kind, "mapping": mapping, "alpha": alpha,
                               "shape": list(shape), "dtype": dtype_name, "impl": impl}
                        try:
                            if device == "cpu":
                                if isinstance(cpu_ms[impl], Exception):
                                    raise cpu_ms[impl]
                                row["ms"] = cpu_ms[impl]
                                row["timer"] = "time.perf_counter, interleaved, median"
                            else:
                                row["ms"], row["timer"] = time_case(
                                    build(impl, kind, alpha), inputs, device, args.reps,
                                    args.max_seconds, args.min_reps)
                            if not args.no_memory:
                                row["peak_extra_bytes"] = memory_case(impl, kind, mapping, shape,
                                                                      dtype_name, device)
                                row["peak_extra_x_logits"] = row["peak_extra_bytes"] / (
                                    shape[0] * shape[1] * inputs[0].element_size())
                        except Exception as err:  # a peer that cannot run this case
                            row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
                        if device == "cuda" and "ms" in row:
                            # the byte floor: read the logits once, write the gradient once
                            # (soft: and read the action values once)
                            nbytes = 2 * shape[0] * shape[1] * inputs[0].element_size()
                            if kind == "soft":
                                nbytes += shape[0] * shape[1] * inputs[4].element_size()
                            row["floor_bytes"] = nbytes
                            row["GBps"] = nbytes / (row["ms"] * 1e-3) / 1e9
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                        # rewritten after every case: a long run stopped early keeps its rows
                        write_json(out, {**header, "rows": rows}, indent=1)
                    del inputs
    write_json(out, {**header, "rows": rows}, indent=1)
    print(f"wrote {out}")
    print(markdown_table(rows))


def markdown_table(rows):
    """One line per case: ms of each implementation, the fused speed-up and memory."""
    cases = {}
    for r in rows:
        key = (r["loss"], r["mapping"], "x".join(map(str, r["shape"])), r["dtype"])
        cases.setdefault(key, {})[r["impl"]] = r
    lines = ["| loss | mapping | B x V | dtype | fused ms | eager ms | compile ms | eager / fused | "
             "extra mem (x logits): fused | eager | compile |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def ms(r):
        return f"{r['ms']:.2f}" if r and "ms" in r else ("err" if r else "-")

    def mem(r):
        return f"{r['peak_extra_x_logits']:.2f}" if r and "peak_extra_x_logits" in r else "-"

    for (kind, mapping, shape, dtype), impls in cases.items():
        f, e, c = impls.get("fused"), impls.get("eager"), impls.get("compile")
        speed = f"{e['ms'] / f['ms']:.2f}x" if f and e and "ms" in f and "ms" in e else "-"
        lines.append(f"| {kind} | {mapping} | {shape} | {dtype} | {ms(f)} | {ms(e)} | {ms(c)} | "
                     f"{speed} | {mem(f)} | {mem(e)} | {mem(c)} |")
    if any("fused_rows" in impls for impls in cases.values()):
        lines += ["", "| loss | mapping | B x V | dtype | fused ms | fused, per-row beta ms |",
                  "|---|---|---|---|---|---|"]
        for (kind, mapping, shape, dtype), impls in cases.items():
            lines.append(f"| {kind} | {mapping} | {shape} | {dtype} | {ms(impls.get('fused'))} | "
                         f"{ms(impls.get('fused_rows'))} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
