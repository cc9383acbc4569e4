"""How stable the cost column is: a study's step prices (step_cost.py) measured several times, side by side.

    PYTHONPATH=. python benchmarks/step_cost.py                              # the headline, 5 pricings
    PYTHONPATH=. python benchmarks/step_cost.py studies/attention_zoo.yaml --pricings 3

Each pricing is what `ablate run` does once before a grid trains (WARMUP steps, then REPEATS interleaved rounds,
the median step over its plain backbone's median). The table shows each configuration's ratio per pricing, their
spread (max - min) and the peak memory; a ratio is worth reading to about its spread.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from ablate.spec import grid_cells, load_study  # noqa: E402
from ablate.step_cost import REPEATS, WARMUP, price_cells  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", nargs="?", default="studies/cbam_vs_se.yaml")
    parser.add_argument("--pricings", type=int, default=5)
    args = parser.parse_args()
    spec = load_study(args.study)
    cells = grid_cells(spec)
    started = time.perf_counter()
    runs = [price_cells(spec, cells) for _ in range(args.pricings)]
    rows = []
    for cell in cells:
        ratios = [run[cell.key].step_time_ratio for run in runs]
        first = runs[0][cell.key]
        rows.append({"config": cell.label, **{f"#{i + 1}": r for i, r in enumerate(ratios)},
                     "spread": max(ratios) - min(ratios), "step ms": first.step_ms, "peak MB": first.peak_mem_mb,
                     "batch": first.batch, "device": first.device})
    print(f"step time over the plain backbone's, {args.pricings} pricings of {args.study} "
          f"({WARMUP} warm-up steps, median of {REPEATS} interleaved rounds each); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print(pd.DataFrame(rows).set_index("config").to_string(float_format="{:.3f}".format))
    print(f"\nwall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
