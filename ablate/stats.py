"""Statistics over seeds: the delta between two configurations with its confidence interval, and what it decides.

Pure numbers (pandas, SciPy's t quantile): the report prints them, the study runner logs them on configuration runs
and uses them to decide whether a configuration needs more seeds. A configuration's samples are a Series indexed by
seed. The intervals are scipy.stats' (ttest_rel, Welch's ttest_ind, t.interval: tests/test_report.py holds them
equal), written as their one-line formulas over scipy.special.stdtrit because importing scipy.stats costs a second,
a fifth of a report's time.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import ndtri, stdtrit

from ablate import replication

LEVEL = 0.95
BETTER, WORSE, UNDECIDED = "better", "worse", "undecided"  # our delta against the baseline, by its interval
REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"  # ... against the paper's


def delta_ci(base: pd.Series, other: pd.Series, level: float = LEVEL) -> tuple[float, float, float]:
    """Mean difference other - base and its confidence interval: paired by seed when both ran the same seeds (a seed
    draws the init, the data order and the augmentation, so pairing removes what two configurations share of that
    noise), Welch otherwise; NaN bounds below 2 seeds. It covers the seeds' spread only, on one validation set
    (delta_ci_images adds the images')."""
    base, other = base.dropna(), other.dropna()
    if len(base) >= 2 and set(base.index) == set(other.index):  # paired by seed
        other = other.loc[base.index]
        delta = (other - base).mean()
        if (other - base).std(ddof=1) == 0:
            return delta, delta, delta  # no spread: SciPy's interval would be NaN
        low, high = t_interval(delta, (other - base).sem(), len(base) - 1, level)
        return delta, low, high
    delta = other.mean() - base.mean()
    if len(base) < 2 or len(other) < 2:
        return delta, np.nan, np.nan
    if base.var(ddof=1) + other.var(ddof=1) == 0:
        return delta, delta, delta
    a, b = other.var(ddof=1) / len(other), base.var(ddof=1) / len(base)
    dof = (a + b) ** 2 / (a ** 2 / (len(other) - 1) + b ** 2 / (len(base) - 1))  # Welch-Satterthwaite
    low, high = t_interval(delta, np.sqrt(a + b), dof, level)
    return delta, low, high


def delta_ci_images(base: dict[int, np.ndarray], other: dict[int, np.ndarray],
                    level: float = LEVEL) -> tuple[float, float, float]:
    """The accuracy delta other - base (points) with an interval that covers the validation set's sampling error as
    well as the seeds': each argument is one configuration's per-image correctness (0/1 over the same images, in
    the same order) by seed.

    The delta of accuracies over seeds s and images i is a two-way crossed design, D[s, i] = mu + seed_s + image_i
    + e_si; its mean's variance is var(seed)/n + var(image)/N + var(e)/(nN). The ANOVA estimate of it (Searle,
    Casella & McCulloch 1992, Variance Components, ch. 4) is var(seed means)/n + var(image means)/N - MS_e/(nN)
    (each of the first two already holds one var(e)/(nN)). The interval adds the seed part's t half-width (the
    seeds' degrees of freedom) and the image part's normal one in quadrature: 95-97% coverage by simulation
    (tests/test_means.py), where the seeds alone cover 82% at 10 seeds. Paired by seed when both ran the same
    seeds (D = other - base seed by seed), else each configuration's seed part apart (Welch) and the images paired
    (both are scored on the same images). It answers Bouthillier et al. (2021, Accounting for variance in machine
    learning benchmarks): another draw of the validation set moves a delta as a seed does. NaN bounds below 2
    seeds or when the images differ."""
    a, b = (np.stack([x[s] for s in sorted(x)]).astype(float) * 100 for x in (base, other))
    delta = b.mean() - a.mean()
    if a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        return delta, np.nan, np.nan
    n_images = a.shape[1]
    if sorted(base) == sorted(other):  # paired by seed
        d = b - a
        parts = [(d.mean(1).var(ddof=1) / len(d), len(d) - 1)]
        noise = _residual_ms(d) / (len(d) * n_images)
    else:
        parts = [(x.mean(1).var(ddof=1) / len(x), len(x) - 1) for x in (a, b)]
        noise = (_residual_ms(a) / len(a) + _residual_ms(b) / len(b)) / n_images
    image_part = max((b.mean(0) - a.mean(0)).var(ddof=1) / n_images - noise, 0.0)
    seed_part = sum(v for v, _ in parts)
    if seed_part + image_part == 0:
        return delta, delta, delta  # no spread at all (as delta_ci)
    # each part at its own quantile: the seeds' t (Welch-Satterthwaite over the seed parts), the images' normal
    # (thousands of them); one t over the sum with Satterthwaite's df lets two seeds pass for many (92% at 3 seeds)
    dof = seed_part ** 2 / sum(v ** 2 / df for v, df in parts) if seed_part > 0 else np.inf
    half = np.hypot(stdtrit(dof, 0.5 + level / 2) * np.sqrt(seed_part), ndtri(0.5 + level / 2) * np.sqrt(image_part))
    return delta, delta - half, delta + half


def _residual_ms(x: np.ndarray) -> float:
    """The residual mean square of a seeds x images table after both main effects (two-way ANOVA without
    replication)."""
    resid = x - x.mean(1, keepdims=True) - x.mean(0, keepdims=True) + x.mean()
    return float((resid ** 2).sum() / ((x.shape[0] - 1) * (x.shape[1] - 1)))


def mean_ci(values: pd.Series, level: float = LEVEL) -> tuple[float, float]:
    """The t-interval of one configuration's mean over its seeds (NaN below 2 seeds)."""
    values = values.dropna()
    if len(values) < 2 or values.std(ddof=1) == 0:
        return (values.mean(), values.mean()) if len(values) >= 2 else (np.nan, np.nan)
    return t_interval(values.mean(), values.sem(), len(values) - 1, level)


def t_interval(center: float, se: float, dof: float, level: float = LEVEL) -> tuple[float, float]:
    """center ± t quantile x standard error: the two-sided interval at `level` with `dof` degrees of freedom."""
    half = stdtrit(dof, 0.5 + level / 2) * se
    return center - half, center + half


def direction(low: float, high: float, maximize: bool = True) -> str:
    """What an interval of a delta (other - base) says: better, worse, or undecided while it holds 0 (or is NaN);
    for a metric to minimise, below 0 is better."""
    if low > 0 or high < 0:
        return BETTER if (low > 0) == maximize else WORSE
    return UNDECIDED


def reproduction(paper_delta: float, low: float, high: float, paper_sd: float | None = None) -> str:
    """The paper's effect against ours, with both uncertainties (replication.RULE): contradicted when the paper's
    delta lies outside the replication prediction interval of our interval and its own sd (`paper_sd`, None: two
    rows at replication.ASSUMED_SD), reproduced when inside and our interval excludes 0 on the paper's side,
    inconclusive otherwise (and without an interval or a paper delta)."""
    if np.isnan(paper_delta) or np.isnan(low) or np.isnan(high):
        return INCONCLUSIVE
    lo, hi = replication.prediction_interval(low, high, replication.delta_sd(None, None) if paper_sd is None
                                             else paper_sd)
    if not lo <= paper_delta <= hi:
        return CONTRADICTED
    return REPRODUCED if paper_delta != 0 and (low > 0 and paper_delta > 0 or high < 0 and paper_delta < 0) \
        else INCONCLUSIVE


def percent(metric: str) -> float:
    """The scale a metric is read at: accuracies are logged as fractions, papers print percent."""
    return 100.0 if "/acc" in metric else 1.0


def next_seeds(samples: dict[str, pd.Series], tried: dict[str, set[int]], pending: set[str],
               controls: str | dict[str, str | None], max_seeds: int, maximize: bool = True) -> dict[str, set[int]]:
    """Seeds on demand: each configuration whose seeds have all finished gets one more while its interval against
    its control still holds 0, up to `max_seeds`; the control gets that seed too, so that the pair stays paired.

    `samples`: each configuration's finished values by seed; `tried`: the seeds each has had a trial of (finished,
    failed or queued); `pending`: configurations with a trial queued or running; `controls`: each configuration's
    control (summary.py: a grid's matched plain cell), or one baseline for all. Returns configuration -> seeds."""
    controls = controls if isinstance(controls, dict) else dict.fromkeys(samples, controls)
    add: dict[str, set[int]] = {}
    for key, values in samples.items():
        control = controls.get(key)
        if control is None or key == control or key in pending or len(tried.get(key, ())) >= max_seeds:
            continue
        if control in pending or control not in samples:
            continue  # the reference itself is still moving
        _, low, high = delta_ci(samples[control], values)
        if len(values) >= 2 and direction(low, high, maximize) != UNDECIDED:
            continue  # decided: more seeds would not change the verdict's sign
        seed = min(set(range(max_seeds)) - tried.get(key, set()))
        add.setdefault(key, set()).add(seed)
        if seed not in tried.get(control, set()):
            add.setdefault(control, set()).add(seed)
    return add
