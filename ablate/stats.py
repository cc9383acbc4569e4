"""Statistics over seeds: the delta between two configurations with its confidence interval, and what it decides.

Pure numbers (pandas, SciPy's t quantile): the report prints them, the study runner logs them on configuration runs
and uses them to decide whether a configuration needs more seeds. A configuration's samples are a Series indexed by
seed. The intervals are scipy.stats' (ttest_rel, Welch's ttest_ind, t.interval: tests/test_report.py holds them
equal), written as their one-line formulas over scipy.special.stdtrit because importing scipy.stats costs a second,
a fifth of a report's time.
"""
from __future__ import annotations

from functools import lru_cache, partial
from typing import Callable

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.special import ndtri, stdtr, stdtrit

from ablate import replication

LEVEL = 0.95
BETTER, WORSE, UNDECIDED = "better", "worse", "undecided"  # our delta against the baseline, by its interval
EQUIVALENT = "equivalent"  # its interval inside +-study.min_effect
HOLM, NO_ADJUSTMENT = "holm", "none"  # study.adjust: how a family of comparisons shares the level
REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"  # ... against the paper's


def delta_ci(base: pd.Series, other: pd.Series, level: float = LEVEL) -> tuple[float, float, float]:
    """Mean difference other - base and its confidence interval: paired by seed when both ran the same seeds (a seed
    draws the init, the data order and the augmentation, so pairing removes what two configurations share of that
    noise), Welch otherwise; NaN bounds below 2 seeds or with no spread at all (tied differences: SciPy's
    ttest_rel reads them as t = inf, p = 0, a certainty two seeds cannot give; undecided here). It covers the
    seeds' spread only, on one validation set (delta_ci_images adds the images')."""
    base, other = base.dropna(), other.dropna()
    if len(base) >= 2 and set(base.index) == set(other.index):  # paired by seed
        other = other.loc[base.index]
        delta = (other - base).mean()
        if _no_spread((other - base).std(ddof=1), base):
            return delta, np.nan, np.nan  # no spread (ties): no evidence of how much a seed moves it
        low, high = t_interval(delta, (other - base).sem(), len(base) - 1, level)
        return delta, low, high
    delta = other.mean() - base.mean()
    if len(base) < 2 or len(other) < 2:
        return delta, np.nan, np.nan
    if _no_spread(np.sqrt(base.var(ddof=1) + other.var(ddof=1)), base):
        return delta, np.nan, np.nan  # a zero-width interval would decide on no evidence
    a, b = other.var(ddof=1) / len(other), base.var(ddof=1) / len(base)
    dof = (a + b) ** 2 / (a ** 2 / (len(other) - 1) + b ** 2 / (len(base) - 1))  # Welch-Satterthwaite
    low, high = t_interval(delta, np.sqrt(a + b), dof, level)
    return delta, low, high


def _no_spread(sd: float, values: pd.Series) -> bool:
    """A spread that is rounding alone: tied accuracies (steps of 100/N) differ by 1e-14, not 0, in floats."""
    return sd <= 1e-9 * max(1.0, float(values.abs().max()))


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
        return delta, np.nan, np.nan  # no spread at all: undecided (as delta_ci)
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


def direction(low: float, high: float, maximize: bool = True, margin: float | None = None) -> str:
    """What an interval of a delta (other - base) says: better, worse, or undecided while it holds 0 (or is NaN);
    for a metric to minimise, below 0 is better. With a `margin` (study.min_effect, stated before the study), an
    interval inside (-margin, +margin) is `equivalent`: two one-sided tests (Schuirmann 1987; Lakens 2017), here
    each at half the interval's alpha since the interval judged is the one printed (a 1-alpha interval, where TOST
    at alpha needs only 1-2alpha: conservative, and the same interval decides every verdict)."""
    if low > 0 or high < 0:
        return BETTER if (low > 0) == maximize else WORSE
    if margin is not None and -margin < low and high < margin:
        return EQUIVALENT
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


# ---------------------------------------------------------------- a family of comparisons, and looks again

Interval = Callable[[float], tuple[float, float, float]]  # level -> (delta, low, high): delta_ci over one pair


def p_value(interval: Interval) -> float:
    """The two-sided p-value of an interval function: the alpha at which its 1-alpha interval just touches 0
    (scipy.optimize.brentq over alpha; for delta_ci that is the t-test's p). NaN where the interval is NaN."""
    delta, low, high = interval(LEVEL)
    if np.isnan(low) or np.isnan(high):
        return np.nan
    if delta == 0:
        return 1.0

    def gap(alpha: float) -> float:  # the nearer bound's distance past 0: grows as the interval narrows
        _, lo, hi = interval(1 - alpha)
        return lo if delta > 0 else -hi

    if gap(1e-12) >= 0:
        return 0.0
    return float(brentq(gap, 1e-12, 1 - 1e-12, xtol=1e-12))


def holm_alphas(pvalues: dict[str, float], alpha: float = 1 - LEVEL) -> dict[str, float]:
    """Holm's step-down (Holm 1979, Scand. J. Statistics 6): the m p-values in order, the i-th smallest (from 0)
    tested at alpha / (m - i) until one fails; that one and every later one keep the failing step's alpha. Each
    row's alpha gives it an interval at 1 - alpha that excludes 0 exactly when Holm rejects (the simple
    Holm-compatible intervals; Strassburger and Bretz 2008 give sharper ones). NaN p-values (no interval yet)
    count in m and come last: the family-wise error stays at most `alpha`."""
    ordered = sorted(pvalues, key=lambda k: (np.isnan(pvalues[k]), pvalues[k]))
    out, failed = {}, None
    for i, key in enumerate(ordered):
        step = alpha / (len(ordered) - i)
        if failed is None and not pvalues[key] <= step:
            failed = step
        out[key] = failed if failed is not None else step
    return out


@lru_cache(maxsize=32)
def _smallest_p(looks: tuple[int, ...]) -> np.ndarray:
    """The smallest nominal two-sided p-value of a paired t-test taken at each of `looks` (seed counts) on one
    accumulating sample with no effect, sorted: 100,000 simulated samples (seed 0). The t statistic's law is free
    of the noise's scale, so this is its law for any normal noise, the t's small degrees of freedom included
    (a normal approximation misses them: 6% instead of 5% at looks 2..10)."""
    x = np.random.default_rng(0).standard_normal((100_000, max(looks)))
    n = np.arange(1, x.shape[1] + 1)
    mean = np.cumsum(x, axis=1) / n
    var = (np.cumsum(x ** 2, axis=1) - n * mean ** 2) / np.maximum(n - 1, 1)
    at = np.asarray(looks) - 1
    t = mean[:, at] / np.sqrt(var[:, at] / n[at])
    return np.sort((2 * stdtr(n[at] - 1, -np.abs(t))).min(axis=1))


def pocock_alpha(alpha: float, looks: tuple[int, ...]) -> float:
    """Pocock's group-sequential boundary (Pocock 1977, Biometrika 64; Jennison and Turnbull 2000, ch. 2 and 3):
    the one nominal two-sided level every look uses so that the chance of any false decision over all the
    planned `looks` (seeds on demand: min..max seeds) is `alpha`, however many of them are taken; calibrated for
    the paired t statistic by simulation (_smallest_p)."""
    if len(looks) < 2:
        return alpha
    return float(np.quantile(_smallest_p(tuple(looks)), alpha))


def pocock_p(p: float, looks: tuple[int, ...]) -> float:
    """A look's nominal p-value as the overall alpha at which Pocock's boundary over `looks` rejects: what Holm
    orders when the family's rows are sequential."""
    if np.isnan(p) or len(looks) < 2:
        return p
    smallest = _smallest_p(tuple(looks))
    return float(np.searchsorted(smallest, p, side="right") / len(smallest))


def judge(intervals: dict[str, Interval], families: dict[str, object], *, adjust: str = HOLM,
          looks: tuple[int, ...] | None = None, level: float = LEVEL) -> dict[str, tuple[float, float, float]]:
    """Each row's (delta, low, high) at the level its verdict needs: rows of one family (those compared with one
    control; a ladder's steps) share `1 - level` by Holm's step-down (`adjust: holm`, holm_alphas) or each keep it
    (`none`); with seeds on demand (`looks`: the planned seed counts min..max) each row's alpha is spent over
    its looks by Pocock's boundary (pocock_alpha), so the interval printed is the one the stop rule used."""
    alphas = dict.fromkeys(intervals, 1 - level)
    for family in set(families.values()) if adjust == HOLM else ():
        members = [row for row in intervals if families[row] == family]
        if len(members) > 1:  # one comparison alone keeps the level (and skips its p-value's search)
            raw = {row: p_value(intervals[row]) for row in members}
            alphas.update(holm_alphas({r: pocock_p(p, looks) if looks else p for r, p in raw.items()}, 1 - level))
    return {row: ci(1 - (pocock_alpha(alphas[row], looks) if looks else alphas[row]))
            for row, ci in intervals.items()}


def families(controls: dict[str, str | None], ladder: bool = False) -> dict[str, object]:
    """Which rows share a level: those compared with one control, or every step of a ladder."""
    return {row: "ladder" if ladder else control for row, control in controls.items()}


def next_seeds(samples: dict[str, pd.Series], tried: dict[str, set[int]], pending: set[str],
               controls: str | dict[str, str | None], max_seeds: int, maximize: bool = True, *, min_seeds: int = 2,
               adjust: str = HOLM, margin: float | None = None, ladder: bool = False,
               verdicts: dict[str, str] | None = None) -> dict[str, set[int]]:
    """Seeds on demand: each configuration whose seeds have all finished gets one more while its verdict against
    its control is still undecided, up to `max_seeds`; the control gets that seed too, so that the pair stays
    paired. The verdict is judge()'s: the family's Holm level (`adjust`) spent over the looks min..max by
    Pocock's boundary, so that stopping when it decides keeps the level however often it looks; with `margin`
    (study.min_effect) an `equivalent` verdict stops too.

    `samples`: each configuration's finished values by seed; `tried`: the seeds each has had a trial of (finished,
    failed or queued); `pending`: configurations with a trial queued or running; `controls`: each configuration's
    control (summary.py: a grid's matched plain cell), or one baseline for all; `verdicts`: the verdicts the report
    shows (summary.compare's, the runner passes them so that both read one judgement, images interval included),
    else judged here from `samples`. Returns configuration -> seeds."""
    controls = controls if isinstance(controls, dict) else dict.fromkeys(samples, controls)
    if verdicts is None:
        compared = {key: partial(delta_ci, samples[controls[key]], values) for key, values in samples.items()
                    if controls.get(key) not in (None, key) and controls[key] in samples}
        judged = judge(compared, families({k: controls[k] for k in compared}, ladder), adjust=adjust,
                       looks=tuple(range(min_seeds, max_seeds + 1)))
        verdicts = {key: direction(*judged[key][1:], maximize, margin) for key in judged}
    add: dict[str, set[int]] = {}
    for key, values in samples.items():
        control = controls.get(key)
        if control is None or key == control or key in pending or len(tried.get(key, ())) >= max_seeds:
            continue
        if control in pending or control not in samples:
            continue  # the reference itself is still moving
        if len(values) >= 2 and verdicts.get(key, UNDECIDED) != UNDECIDED:
            continue  # decided (or unstable): the boundary holds its error at this look
        seed = min(set(range(max_seeds)) - tried.get(key, set()))
        add.setdefault(key, set()).add(seed)
        if seed not in tried.get(control, set()):
            add.setdefault(control, set()).add(seed)
    return add
