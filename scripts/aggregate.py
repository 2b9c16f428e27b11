"""Collect a sweep into one tidy table: one row per (run, tag, step).

    .venv/bin/python scripts/aggregate.py multirun/entropy_ablation -o table.csv

Every directory under SWEEP_DIR holding ``.hydra/config.yaml`` is a run; the columns and
where they come from are in rl/analysis/aggregate.py. Written as CSV (gzip-compressed when
the name ends in ``.gz``), or Parquet when it ends in ``.parquet`` (needs pyarrow).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rl.analysis.aggregate import aggregate, write_table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("-o", "--out", type=Path, default=None,
                        help="output file (.csv or .parquet); default SWEEP_DIR/table.csv")
    args = parser.parse_args(argv)
    table = aggregate(args.sweep_dir)
    out = write_table(table, args.out or args.sweep_dir / "table.csv")
    print(f"{len(table)} rows, {table.run.nunique()} runs, {table.tag.nunique()} tags -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
