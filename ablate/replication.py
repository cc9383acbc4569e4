"""The paper's effect against ours with both uncertainties: a replication prediction interval.

Patil, Peng and Leek (2016, What should researchers expect when they replicate studies? A statistical view of
replicability in psychological science, Perspectives on Psychological Science 11(4)) ask whether a replication's
estimate lies inside the interval the original predicts for it: original ± z * sqrt(se_original² + se_replication²).
Here the original is the paper's delta of top-1 between two rows, each usually one training run, so its noise is
the rows' seed-to-seed sd (a row's `sd`, else ASSUMED_SD); the replication is our delta with its 95% interval (over
seeds, or seeds and images). The two half-widths add in quadrature, ours at its own (t) quantile, the paper's at
the normal one, as stats.delta_ci_images adds its parts. The interval is symmetric in which side is called the
original, so it is centred on ours and asks whether the paper's delta lies inside. Pure numpy / SciPy; stats.py's
`reproduction` applies the rule (RULE) so that the report and the configuration runs keep one meaning.
"""
from __future__ import annotations

import numpy as np
from scipy.special import ndtri

LEVEL = 0.95
# a paper row's seed-to-seed sd of top-1 (points) where it states none: single ImageNet / CIFAR runs vary by about
# 0.1-0.2 (He et al. 2016 give ResNet-110 on CIFAR-10 ±0.16); the upper end, so a noisy number contradicts less
ASSUMED_SD = 0.2
RULE = (f"effect: the paper's Δ is contradicted when it lies outside the {LEVEL:.0%} replication prediction interval "
        "(our Δ ± the quadrature sum of our interval's half-width and the paper's, from its rows' seed-to-seed sd; "
        f"Patil, Peng & Leek 2016), reproduced when inside and our interval excludes 0 on its side, inconclusive "
        f"otherwise; a reference row's `sd` is its sd of top-1, {ASSUMED_SD} points assumed where it gives none.")


class Published(float):
    """A paper's number (points) with its seed-to-seed sd, None where the reference row states none."""

    sd: float | None

    def __new__(cls, value: float, sd: float | None = None) -> Published:
        number = super().__new__(cls, value)
        number.sd = None if sd is None else float(sd)
        return number


def delta_sd(row: float | None, control: float | None) -> float:
    """The sd of the paper's delta row - control: the two rows' independent noises (each its Published.sd, else
    ASSUMED_SD) in quadrature."""
    sds = [getattr(x, "sd", None) for x in (row, control)]
    return float(np.hypot(*[ASSUMED_SD if sd is None else sd for sd in sds]))


def prediction_interval(low, high, paper_sd, level: float = LEVEL):
    """Where the paper's delta should lie if both estimate one effect: the centre of our interval [low, high] ± the
    quadrature sum of its half-width and the normal half-width of the paper's delta (sd `paper_sd`). Arrays
    broadcast; NaN bounds give NaN."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    half = np.hypot((high - low) / 2, ndtri(0.5 + level / 2) * np.asarray(paper_sd, dtype=float))
    return (low + high) / 2 - half, (low + high) / 2 + half
