"""Figures and the summary table of a sweep, from the tidy table of scripts/aggregate.py.

    .venv/bin/python scripts/plot.py multirun/entropy_ablation/table.csv -o figures/
    .venv/bin/python scripts/plot.py table.csv -o figures/ --x distractors   # K-sweep

Writes ``returns``, ``final_vs_<x>``, ``entropy_support`` and ``grad_norms`` (PNG and PDF by
default; rl/analysis/figures.py says what each shows) and ``final_return.md`` / ``.csv``: per
cell (env, mapping, x) the number of seeds, mean, median and IQM of the final return with the
IQM's 95% bootstrap CI (rl/analysis/stats.py). Interrupted or failed runs are left out
unless ``--include-unfinished``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rl.analysis.aggregate import load_table
from rl.analysis.figures import FORMATS, make_all


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", type=Path, help="CSV/Parquet from scripts/aggregate.py")
    parser.add_argument("-o", "--out", type=Path, default=None,
                        help="output directory (default: TABLE's directory / figures)")
    parser.add_argument("--x", default="beta", help="the swept column within a mapping: "
                        "beta (default) or distractors")
    parser.add_argument("--bins", type=int, default=40, help="step bins of the curves")
    parser.add_argument("--reps", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--title", default="")
    parser.add_argument("--formats", nargs="+", default=["png", "pdf"], choices=FORMATS,
                        help="figure formats")
    parser.add_argument("--include-unfinished", action="store_true",
                        help="also plot interrupted/failed runs (left out by default)")
    args = parser.parse_args(argv)
    written = make_all(load_table(args.table), args.out or args.table.parent / "figures", args.x,
                       args.bins, args.reps, args.title, args.formats, args.include_unfinished)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
