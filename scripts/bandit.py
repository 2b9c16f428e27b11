"""Regularization error of soft vs sparse policies as the number of actions grows.

On a bandit with rewards r, the entropy-regularized optimum
``p*(beta) = argmax_p <p, r> + beta H(p)`` is the mapping applied to ``r / beta``
(DESIGN.md section 1: ``p = argmax <p, z> + H(p)``), so ``ops.probs(r / beta, alpha)``
is the exact optimum for Shannon (alpha=1), Tsallis-1.5 and Gini (alpha=2) entropies.
Its regularization error ``max(r) - <p*, r>`` is at most ``beta * max H`` (p* beats the
greedy one-hot): ``beta log|A|`` for softmax, which grows without bound, against
``beta (1 - |A|^(1-alpha)) / (alpha (alpha-1))`` for alpha > 1, bounded by
``beta / (alpha (alpha-1))`` (Lee, Choi, Oh 2018; Nachum, Chow, Ghavamzadeh 2018).

Two bandits:

* distractors: a good arm (r=1), a bad arm (r=0.5) and K copies of the bad arm,
  |A| = K + 2 -- the bandit version of the DistractorActions env wrapper;
* random: |A| arms with r ~ U(0, 1), averaged over draws.

"Learned" points check that minimizing ``ops.pg_loss`` by gradient descent (exact policy
gradient over the support, see `learn`) reaches the closed-form optimum.

    .venv/bin/python scripts/bandit.py --out docs/experiments/bandit
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

import ops
from rl.checkpoint import write_json

MAPPINGS = {1.0: "softmax", 1.5: "entmax-1.5", 2.0: "sparsemax"}
COLORS = {1.0: "tab:blue", 1.5: "tab:orange", 2.0: "tab:green"}


def optimum(r: torch.Tensor, beta: float, alpha: float) -> torch.Tensor:
    """Exact argmax_p <p, r> + beta H_alpha(p) (float64)."""
    return ops.probs(r.double() / beta, alpha=alpha)


def objective(p: torch.Tensor, r: torch.Tensor, beta: float, alpha: float) -> float:
    """<p, r> + beta H_alpha(p), with H the mapping's own entropy (DESIGN.md table)."""
    p = p.double()
    if alpha == 1.0:
        h = -(p[p > 0] * p[p > 0].log()).sum()
    else:
        h = (1 - (p**alpha).sum()) / (alpha * (alpha - 1))
    return float((p * r.double()).sum() + beta * h)


def distractor_rewards(num_actions: int) -> torch.Tensor:
    r = torch.full((num_actions,), 0.5, dtype=torch.float64)
    r[0] = 1.0
    return r


def regularization_error(r: torch.Tensor, p: torch.Tensor) -> float:
    return float(r.max() - (p.double() * r).sum())


def learn(r, beta, alpha, steps, lr, seed, init_std):
    """Minimize ops.pg_loss by exact policy gradient; return the final policy.

    Every action in the current support is one row, weighted by p_a (detached), with
    advantage r_a - <p, r>: the weighted mean of ``-A log p_a - beta H`` then has the
    gradient of ``-(<p, r> + beta H(p))`` (policy-gradient theorem), so its minimum is
    the regularized optimum. Actions outside the support have p_a = 0 and weight 0.
    Starting logits: N(0, init_std^2); init_std = 0 starts from the uniform policy. An
    alpha > 1 policy has zero gradient w.r.t. actions outside its support, so a random
    start that excludes the best arm can stay stuck without it.
    """
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(r.numel(), generator=gen, dtype=torch.float64)
    logits = (init_std * noise).requires_grad_()
    opt = torch.optim.Adam([logits], lr=lr)
    for step in range(steps):
        with torch.no_grad():
            p = ops.probs(logits, alpha=alpha)
            actions = torch.nonzero(p > 0).squeeze(-1)
            advantages = r[actions] - (p * r).sum()
        rows = logits.expand(actions.numel(), -1)
        out = ops.pg_loss(rows, actions, advantages, beta=beta, alpha=alpha, weights=p[actions])
        for group in opt.param_groups:  # linear decay to settle on the optimum
            group["lr"] = lr * (1 - step / steps)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    with torch.no_grad():
        return ops.probs(logits, alpha=alpha)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/experiments/bandit"))
    parser.add_argument("--betas", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    parser.add_argument(
        "--sizes", type=int, nargs="+",
        default=[2, 3, 5, 10, 30, 100, 300, 1000, 3000, 10000],
    )
    parser.add_argument("--draws", type=int, default=50, help="random bandits per size")
    parser.add_argument("--learn-sizes", type=int, nargs="+", default=[2, 12, 102, 1002])
    parser.add_argument("--learn-steps", type=int, default=1000)
    parser.add_argument("--learn-lr", type=float, default=0.1)
    parser.add_argument("--init-std", type=float, default=0.1,
                        help="second learning run starts from N(0, init_std^2) logits")
    parser.add_argument("--random-start-sizes", type=int, nargs="+", default=[2, 12, 102],
                        help="sizes of the second (random start) learning run; each step of "
                             "the exact gradient costs |support| x |A|")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("betas",):
        if any(b <= 0 for b in getattr(args, name)):
            raise ValueError(f"--{name} must be > 0; got {getattr(args, name)}")
    all_sizes = args.sizes + args.learn_sizes + args.random_start_sizes
    if any(n < 2 for n in all_sizes):
        raise ValueError(f"--sizes/--learn-sizes/--random-start-sizes must be >= 2; got {all_sizes}")
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    rows = []
    gen = torch.Generator().manual_seed(args.seed)
    for beta in args.betas:
        for n in args.sizes:
            for alpha, name in MAPPINGS.items():
                bound = beta * float(ops.max_entropy(alpha, n))
                r = distractor_rewards(n)
                p = optimum(r, beta, alpha)
                rows.append(dict(bandit="distractors", beta=beta, num_actions=n, alpha=alpha,
                                 mapping=name, error=regularization_error(r, p),
                                 error_std=0.0, support=int((p > 0).sum()), bound=bound,
                                 p_best=float(p[0])))
                errs, supports = [], []
                for _ in range(args.draws):
                    r = torch.rand(n, generator=gen, dtype=torch.float64)
                    p = optimum(r, beta, alpha)
                    errs.append(regularization_error(r, p))
                    supports.append(int((p > 0).sum()))
                rows.append(dict(bandit="random", beta=beta, num_actions=n, alpha=alpha,
                                 mapping=name, error=float(np.mean(errs)),
                                 error_std=float(np.std(errs)), support=float(np.mean(supports)),
                                 bound=bound, p_best=float("nan")))

    learned = []
    beta = args.betas[0]
    for init_std, sizes in ((0.0, args.learn_sizes), (args.init_std, args.random_start_sizes)):
        for n in sizes:
            r = distractor_rewards(n)
            for alpha, name in MAPPINGS.items():
                p_star = optimum(r, beta, alpha)
                p = learn(r, beta, alpha, args.learn_steps, lr=args.learn_lr,
                          seed=args.seed + n, init_std=init_std)
                d = dict(
                    bandit="distractors", beta=beta, init_std=init_std, num_actions=n,
                    alpha=alpha, mapping=name,
                    error_closed_form=regularization_error(r, p_star),
                    error_learned=regularization_error(r, p),
                    tv_distance=0.5 * float((p - p_star).abs().sum()),
                    objective_gap=objective(p_star, r, beta, alpha)
                    - objective(p, r, beta, alpha),
                    support_closed_form=int((p_star > 0).sum()),
                    support_learned=int((p > 0).sum()),
                )
                learned.append(d)
                print(f"learned init_std={init_std} {name:10s} |A|={n:5d}: error "
                      f"{d['error_learned']:.4f} (closed form {d['error_closed_form']:.4f}), "
                      f"TV {d['tv_distance']:.4f}", flush=True)

    _write_tables(args.out, rows, learned)
    _plot(args.out, rows, learned)
    meta = dict(command=" ".join(["scripts/bandit.py", *(argv or sys.argv[1:])]),
                seconds=round(time.time() - t0, 1), torch=torch.__version__)
    write_json(args.out / "meta.json", meta)
    print(f"wrote {args.out} in {meta['seconds']} s")


def _write_tables(out: Path, rows, learned):
    import pandas as pd

    df = pd.DataFrame(rows)
    df.to_csv(out / "regularization_error.csv", index=False)
    pd.DataFrame(learned).to_csv(out / "learned_vs_closed_form.csv", index=False)
    # Markdown: distractor bandit, error per mapping at each size.
    lines = []
    for beta in sorted(df.beta.unique()):
        sub = df[(df.bandit == "distractors") & (df.beta == beta)]
        piv = sub.pivot(index="num_actions", columns="mapping", values="error")
        lines.append(f"\nDistractor bandit, beta = {beta}: regularization error max r - <p*, r>\n")
        cols = [MAPPINGS[a] for a in MAPPINGS]
        lines.append("| actions n | " + " | ".join(cols) + " | bound softmax (beta log n) |")
        lines.append("|---" * (len(cols) + 2) + "|")
        for n, row in piv.iterrows():
            lines.append(f"| {n} | " + " | ".join(f"{row[c]:.4f}" for c in cols)
                         + f" | {beta * math.log(n):.3f} |")
    lines.append("\nLearned (exact policy gradient on ops.pg_loss) vs closed form, distractor bandit\n")
    lines.append("| start | mapping | n | error closed form | error learned | TV(p, p*) | "
                 "support p* | support learned |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for d in learned:
        start = "uniform" if d["init_std"] == 0 else f"N(0, {d['init_std']}^2) logits"
        lines.append(f"| {start} | {d['mapping']} | {d['num_actions']} | "
                     f"{d['error_closed_form']:.4f} | "
                     f"{d['error_learned']:.4f} | {d['tv_distance']:.4f} | "
                     f"{d['support_closed_form']} | {d['support_learned']} |")
    (out / "tables.md").write_text("\n".join(lines).lstrip() + "\n")


def _plot(out: Path, rows, learned):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(rows)
    ld = pd.DataFrame(learned)
    betas = sorted(df.beta.unique())
    fig, axes = plt.subplots(2, len(betas), figsize=(4.8 * len(betas), 9), squeeze=False,
                             sharex=True)
    for j, beta in enumerate(betas):
        for i, bandit in enumerate(["distractors", "random"]):
            ax = axes[i, j]
            sub = df[(df.bandit == bandit) & (df.beta == beta)]
            for alpha, name in MAPPINGS.items():
                s = sub[sub.alpha == alpha].sort_values("num_actions")
                ax.plot(s.num_actions, s.error, "-o", ms=3, color=COLORS[alpha],
                        label=f"{name}: exact optimum")
                if bandit == "random":
                    ax.fill_between(s.num_actions, s.error - s.error_std,
                                    s.error + s.error_std, color=COLORS[alpha], alpha=0.15)
                ax.plot(s.num_actions, s.bound, ":", color=COLORS[alpha],
                        label=f"{name}: bound beta*max H")
                if bandit == "distractors" and beta == ld.beta.iloc[0]:
                    s2 = ld[(ld.alpha == alpha) & (ld.init_std == 0)]
                    ax.plot(s2.num_actions, s2.error_learned, "x", ms=9, mew=2,
                            color=COLORS[alpha], label=f"{name}: learned by ops.pg_loss (uniform start)")
            ax.set_xscale("log")
            ax.set_ylim(bottom=0, top=min(1.05, max(sub.error.max() * 1.3, 0.05)))
            ax.set_xlabel("number of actions |A|")
            ax.set_ylabel("regularization error  max r - <p*, r>")
            title = ("good arm (r=1) + |A|-1 copies of a bad arm (r=0.5)" if bandit ==
                     "distractors" else "random rewards r ~ U(0,1), mean ± std")
            ax.set_title(f"{title}\nbeta = {beta}", fontsize=10)
            ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Exact entropy-regularized bandit optimum p* = argmax <p, r> + beta H(p): "
                 "regularization error vs number of actions", fontsize=11)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    for ext in ("png", "pdf"):
        fig.savefig(out / f"regularization_error.{ext}", dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
