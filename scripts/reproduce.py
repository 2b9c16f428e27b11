"""One command per reproduction: run the sweep, aggregate it, plot it.

    .venv/bin/python scripts/reproduce.py --help          # the reproductions and their options
    .venv/bin/python scripts/reproduce.py ablation --scale 0.1
    .venv/bin/python scripts/reproduce.py sac_distractors --launcher population

The reproductions live in rl/analysis/reproduce.py (and rl/analysis/beta_target.py,
rl/analysis/support.py).
"""

import sys

from rl.analysis.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
