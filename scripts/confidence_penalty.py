"""Confidence penalty (Pereyra et al. 2017) on scikit-learn's digits through ops.pg_loss.

Cross-entropy with a confidence penalty is the policy-gradient loss with advantage 1
(DESIGN.md section 1): per example ``-log p_y - beta H(p)``, i.e.
``ops.pg_loss(logits, y, advantages=1, beta=beta)``. Pereyra et al. report that penalizing
low-entropy (over-confident) predictions regularizes: better test error and likelihood.
We sweep beta and measure, on held-out data, test error, negative log-likelihood, the mean
predictive entropy and the expected calibration error (ECE: 15 equal-width confidence
bins, |accuracy - confidence| weighted by bin size; Guo et al. 2017).

An MLP (64-256-256-10, ReLU) trained to convergence on 50% of digits overfits and
becomes over-confident, which is the regime the penalty targets.

    .venv/bin/python scripts/confidence_penalty.py --out docs/experiments/confidence_penalty
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import ops
from rl.analysis.stats import mean_ci
from rl.checkpoint import write_json

ECE_BINS = 15


def load_digits_split(seed: int, train_fraction: float):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x / 16.0, y, train_size=train_fraction, stratify=y, random_state=seed
    )
    as_t = torch.as_tensor
    return (as_t(x_train, dtype=torch.float32), as_t(y_train),
            as_t(x_test, dtype=torch.float32), as_t(y_test))


def make_mlp(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10))


def expected_calibration_error(p: torch.Tensor, y: torch.Tensor, bins: int = ECE_BINS):
    """Top-label ECE and the per-bin (confidence, accuracy, count) for a reliability plot."""
    confidence, prediction = p.max(-1)
    correct = (prediction == y).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=p.dtype)
    ece, table = 0.0, []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        count = int(in_bin.sum())
        if count:
            gap = abs(float(correct[in_bin].mean()) - float(confidence[in_bin].mean()))
            ece += count / len(y) * gap
            table.append((float(confidence[in_bin].mean()), float(correct[in_bin].mean()), count))
    return ece, table


def train_one(beta, seed, args):
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = load_digits_split(seed, args.train_fraction)
    model = make_mlp(args.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(seed)
    ones = torch.ones(args.batch)
    for _ in range(args.epochs):
        perm = torch.randperm(len(y_train), generator=gen)
        for i in range(0, len(perm) - args.batch + 1, args.batch):  # drop the ragged tail
            idx = perm[i:i + args.batch]
            # cross-entropy - beta * H: the policy-gradient loss with advantage 1
            out = ops.pg_loss(model(x_train[idx]), y_train[idx], ones, beta=beta)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        logits = model(x_test).double()
        p = ops.probs(logits)
        train_p = ops.probs(model(x_train).double())
    ece, reliability = expected_calibration_error(p, y_test)
    nll = float(-p[torch.arange(len(y_test)), y_test].clamp_min(1e-300).log().mean())
    return dict(
        beta=beta, seed=seed,
        test_error=float((p.argmax(-1) != y_test).double().mean()),
        train_error=float((train_p.argmax(-1) != y_train).double().mean()),
        test_nll=nll, ece=ece,
        mean_confidence=float(p.max(-1).values.mean()),
        mean_entropy=float(ops.entropy(logits).mean()),
    ), reliability


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/experiments/confidence_penalty"))
    parser.add_argument("--betas", type=float, nargs="+",
                        default=[0.0, 0.01, 0.03, 0.1, 0.3, 1.0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--train-fraction", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if any(b < 0 for b in args.betas):
        raise ValueError(f"--betas must be >= 0; got {args.betas}")
    if args.seeds < 1 or args.epochs < 1:
        raise ValueError(f"--seeds and --epochs must be >= 1; got {args.seeds}, {args.epochs}")
    if not 0 < args.train_fraction < 1:
        raise ValueError(f"--train-fraction must be in (0, 1); got {args.train_fraction}")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    runs, reliability = [], {}
    for beta in args.betas:
        for seed in range(args.seeds):
            run, rel = train_one(beta, seed, args)
            runs.append(run)
            reliability.setdefault(beta, []).extend(rel)
            print(f"beta={beta:<5} seed={seed} test error {run['test_error']:.4f} "
                  f"NLL {run['test_nll']:.4f} ECE {run['ece']:.4f} "
                  f"H {run['mean_entropy']:.3f}", flush=True)

    import pandas as pd

    df = pd.DataFrame(runs)
    df.to_csv(args.out / "runs.csv", index=False)
    metrics = ["test_error", "test_nll", "ece", "mean_confidence", "mean_entropy", "train_error"]
    summary = []
    for beta, g in df.groupby("beta"):
        row = {"beta": beta, "seeds": len(g)}
        for m in metrics:
            mean, lo, hi = mean_ci(g[m])
            row.update({m: mean, f"{m}_lo": lo, f"{m}_hi": hi})
        summary.append(row)
    summary = pd.DataFrame(summary)
    summary.to_csv(args.out / "summary.csv", index=False)
    lines = ["| beta | test error (%) | test NLL | ECE (%) | mean confidence | mean entropy (nats) "
             "| train error (%) |", "|---|---|---|---|---|---|---|"]

    def cell(r, m, scale=1.0, fmt=".2f"):
        return (f"{r[m] * scale:{fmt}} [{r[m + '_lo'] * scale:{fmt}}, "
                f"{r[m + '_hi'] * scale:{fmt}}]")

    for _, r in summary.iterrows():
        lines.append(f"| {r.beta:g} | {cell(r, 'test_error', 100)} | "
                     f"{cell(r, 'test_nll', 1, '.3f')} | {cell(r, 'ece', 100)} | "
                     f"{cell(r, 'mean_confidence', 1, '.3f')} | "
                     f"{cell(r, 'mean_entropy', 1, '.3f')} | {cell(r, 'train_error', 100)} |")
    (args.out / "summary.md").write_text(
        f"Mean over {args.seeds} seeds (split and init), [95% bootstrap CI].\n\n"
        + "\n".join(lines) + "\n")
    _plot(args.out, summary, reliability)
    meta = dict(command=" ".join(["scripts/confidence_penalty.py", *(argv or sys.argv[1:])]),
                args={k: str(v) for k, v in vars(args).items()},
                seconds=round(time.time() - t0, 1), torch=torch.__version__)
    write_json(args.out / "meta.json", meta)
    print(f"wrote {args.out} in {meta['seconds']} s")


def _plot(out: Path, summary, reliability):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    # beta = 0 cannot sit on a log axis: place it one decade left of the smallest beta > 0.
    positive = summary.beta[summary.beta > 0]
    zero_at = positive.min() / 10 if len(positive) else 1e-3
    x = summary.beta.where(summary.beta > 0, zero_at)
    panels = [("test_error", 100, "test error (%)"), ("test_nll", 1, "test NLL (nats)"),
              ("ece", 100, "expected calibration error (%)")]
    for ax, (m, scale, label) in zip(axes, panels, strict=False):
        ax.plot(x, summary[m] * scale, "-o", color="tab:blue", label="mean over seeds")
        ax.fill_between(x, summary[f"{m}_lo"] * scale, summary[f"{m}_hi"] * scale,
                        color="tab:blue", alpha=0.2, label="95% bootstrap CI")
        ax.set_xscale("log")
        ticks = [zero_at, *positive]
        ax.set_xticks(ticks, ["0", *[f"{b:g}" for b in positive]], rotation=45)
        ax.minorticks_off()
        ax.set_xlabel("confidence penalty beta")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    ax = axes[3]
    ax.plot([0, 1], [0, 1], "k:", label="perfect calibration")
    betas = sorted(reliability)
    best = float(summary.loc[summary.ece.idxmin(), "beta"])
    shown = dict.fromkeys([0.0, best, max(betas)])  # ordered, without repeats
    for beta, color in zip(shown, ("tab:red", "tab:green", "tab:purple"), strict=False):
        if beta not in reliability:
            continue
        conf, acc, count = (np.array(v) for v in zip(*reliability[beta], strict=True))
        order = np.argsort(conf)
        ax.plot(conf[order], acc[order], "o", ms=3, alpha=0.5, color=color,
                label=f"beta={beta:g}" + (" (lowest ECE)" if beta == best else ""))
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("accuracy in confidence bin")
    ax.set_title("reliability (bins of every seed)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle("Confidence penalty on digits: loss = cross-entropy - beta H(p) "
                 "(ops.pg_loss, advantages = 1)", fontsize=11)
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(out / f"confidence_penalty.{ext}", dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
