"""What a verdict promises, measured side by side: seeds on demand stopping at the first look whose 95% interval
excludes 0 (before) against Pocock's boundary over the looks (stats.pocock_alpha, after), and 20 configurations
against one control judged alone (before) against Holm's step-down (stats.holm_alphas, after).

Paired differences are N(effect, 1) per seed (an sd of 1: effects in units of the seeds' own spread); the stop rule
is tests/test_verdicts.on_demand, which tests/test_verdicts.py checks against stats.next_seeds itself. Printed: the
share of cells with a better/worse verdict under no effect, and under an effect of one sd the share decided, the
share decided before max seeds and the seeds spent per cell.

    python benchmarks/verdict_rates.py              # 4,000 cells per row, ~10 s on 2 CPU cores
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_verdicts import decided, on_demand  # noqa: E402  (the simulated rule the tests check against next_seeds)

from ablate import stats  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=4000)
    args = parser.parse_args()
    rows = []
    for min_seeds, max_seeds in ((2, 10), (3, 10), (2, 5)):
        rng = np.random.default_rng(5)
        null = rng.standard_normal((args.cells, max_seeds))
        effect = rng.standard_normal((args.cells, max_seeds)) + 1.0
        pocock = stats.pocock_alpha(0.05, tuple(range(min_seeds, max_seeds + 1)))
        for rule, alpha in (("before: 95% at every look", 0.05), ("after: Pocock", pocock)):
            false, spent_null = on_demand(null, min_seeds, max_seeds, alpha)
            verdict, spent = on_demand(effect, min_seeds, max_seeds, alpha)
            rows.append({"min/max": f"{min_seeds}/{max_seeds}", "rule": rule,
                         "false verdicts (no effect)": decided(false).mean(),
                         "seeds/cell (no effect)": spent_null.mean(),
                         "decided (1 sd)": decided(verdict).mean(),
                         "decided before max (1 sd)": (decided(verdict) & (spent < max_seeds)).mean(),
                         "seeds/cell (1 sd)": spent.mean()})
    table = pd.DataFrame(rows).set_index(["min/max", "rule"])
    print(table.to_string(formatters={c: "{:.1%}".format for c in table.columns if "seeds" not in c},
                          float_format="{:.1f}".format))
    rng = np.random.default_rng(4)
    n, studies, family = 3, 2000, 20
    d = rng.standard_normal((studies, family, n))
    p = 2 * scipy_stats.t.sf(np.abs(d.mean(2) / (d.std(2, ddof=1) / np.sqrt(n))), n - 1)
    names = [f"m{i}" for i in range(family)]
    holm = np.mean([any(pv <= a for pv, a in zip(ps, stats.holm_alphas(dict(zip(names, ps))).values())) for ps in p])
    print(f"\n{family} null configurations vs one control, {n} seeds, {studies} studies: a false verdict somewhere in "
          f"{(p <= 0.05).any(1).mean():.1%} of studies judged alone, {holm:.1%} with Holm (stated: 5%)")


if __name__ == "__main__":
    main()
