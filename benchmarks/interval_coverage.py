"""What a delta's 95% interval covers, by simulation against stats.py: the seeds-only t interval (study.interval:
seeds) and the seeds-and-images one (seeds+images, stats.delta_ci_images), each against the true delta over every
image and every seed, for 3, 5 and 10 seeds.

Each simulated study draws a fresh validation set of 1,000 images from one population (most images right or wrong
whatever the seed, the two configurations differing systematically on 6% of them, tests/test_means.population) and
trains each configuration on n seeds (a seed moves every image's chance by N(0, 0.4 points)). The seeds alone
cover the seeds' noise but not the draw of the validation images, so they undercover as n grows.

    python benchmarks/interval_coverage.py              # 1,000 studies per row, ~30 s on 2 CPU cores
    python benchmarks/interval_coverage.py --studies 200
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_means import population  # noqa: E402  (the population the coverage test draws from)

from ablate import stats  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(11)
    big_a, big_b = population(rng, 2_000_000)
    truth = (big_b.mean() - big_a.mean()) * 100
    rows = []
    for seeds in (3, 5, 10):
        covered = {"seeds+images": 0, "seeds": 0}
        for _ in range(args.studies):
            pa, pb = population(rng, args.images)
            base, other = {}, {}
            for s in range(seeds):
                shift_a, shift_b = rng.normal(0, 0.004, 2)
                base[s] = rng.random(args.images) < np.clip(pa + shift_a, 0, 1)
                other[s] = rng.random(args.images) < np.clip(pb + shift_b, 0, 1)
            _, low, high = stats.delta_ci_images(base, other)
            covered["seeds+images"] += low <= truth <= high
            per_seed = [pd.Series({s: x[s].mean() * 100 for s in x}) for x in (base, other)]
            _, low, high = stats.delta_ci(*per_seed)
            covered["seeds"] += low <= truth <= high
        rows.append({"seeds": seeds, **{f"{k} covers": v / args.studies for k, v in covered.items()}})
    print(f"true delta {truth:+.2f} points; {args.studies} studies of {args.images} images per row; stated: 95%")
    print(pd.DataFrame(rows).set_index("seeds").to_string(float_format="{:.1%}".format))


if __name__ == "__main__":
    main()
