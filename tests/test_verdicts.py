"""What a verdict promises, measured: under no effect a `better` or `worse` appears at most 5% of the time, for one
comparison, for a family of them (Holm), and for seeds on demand however often they look (Pocock); ties never
decide; an `equivalent` needs its interval inside study.min_effect. Pure numpy simulations over ablate's own
stats functions (seconds each); the vectorised rules are checked against the real ones (next_seeds, compare).
"""
from functools import partial

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from scipy import stats as scipy_stats

from ablate import stats
from ablate.config.study import StudySection
from ablate.formats import AblationTable, footnote
from ablate.summary import compare

CELLS = 4000  # simulated cells per rate: the rate's standard error is 0.35 points at 5%


def on_demand(d: np.ndarray, min_seeds: int, max_seeds: int, alpha: float, margin: float | None = None):
    """Seeds on demand over simulated paired differences (cells x max seeds): look at min..max seeds, stop when the
    1-alpha interval (stats.t_interval) excludes 0 (or lies inside +-margin). Returns (verdict, seeds spent)."""
    verdict = np.full(len(d), stats.UNDECIDED, dtype=object)
    spent = np.full(len(d), max_seeds)
    for n in range(min_seeds, max_seeds + 1):
        x = d[:, :n]
        low, high = stats.t_interval(x.mean(1), x.std(1, ddof=1) / np.sqrt(n), n - 1, 1 - alpha)
        open_ = verdict == stats.UNDECIDED
        for now, name in ((low > 0, stats.BETTER), (high < 0, stats.WORSE),
                          ((-margin < low) & (high < margin) if margin else np.zeros(len(d), bool), stats.EQUIVALENT)):
            verdict[open_ & now], spent[open_ & now] = name, n
            open_ &= ~now
    return verdict, spent


def decided(verdict: np.ndarray) -> np.ndarray:
    return (verdict == stats.BETTER) | (verdict == stats.WORSE)


# ---------------------------------------------------------------- ties and small samples

def test_tied_differences_give_no_interval_and_no_decision():
    base = pd.Series([90.0, 91.0], index=[0, 1])
    assert scipy_stats.ttest_rel(base - 1.0, base).pvalue == 0  # SciPy's t is -inf here: certainty from 2 seeds
    tied = base - 0.28  # accuracy moves in steps of 100/N: both seeds lose the same images (1e-14 apart in floats)
    delta, low, high = stats.delta_ci(base, tied)
    assert delta == pytest.approx(-0.28) and np.isnan(low) and np.isnan(high)
    assert stats.direction(low, high) == stats.UNDECIDED
    flat = pd.Series([90.0, 90.0], index=[5, 6])  # Welch: both groups without spread
    assert np.isnan(stats.delta_ci(pd.Series([91.0, 91.0], index=[0, 1]), flat)[1])
    out = compare(["none", "se"], {"none": base, "se": tied}, {"none": "none", "se": "none"})
    assert out["se"].verdict == stats.UNDECIDED


def test_ties_at_two_seeds_on_a_small_validation_set_stay_undecided():
    # 2 seeds on ~360 validation images (digits): accuracies in steps of 100/360, no effect
    rng = np.random.default_rng(3)
    steps = 100 / 360
    base = 90 + steps * rng.integers(-2, 3, size=(CELLS, 2))
    other = 90 + steps * rng.integers(-2, 3, size=(CELLS, 2))
    seeds = [0, 1]
    verdicts = [stats.direction(*stats.delta_ci(pd.Series(b, index=seeds), pd.Series(o, index=seeds))[1:])
                for b, o in zip(base[:500], other[:500])]
    tied = np.isclose(other[:500, 0] - base[:500, 0], other[:500, 1] - base[:500, 1])
    assert tied.mean() > 0.1  # ties are common here
    assert all(v == stats.UNDECIDED for v, t in zip(verdicts, tied) if t)
    assert np.mean([v != stats.UNDECIDED for v in verdicts]) <= 0.05 + 0.03


# ---------------------------------------------------------------- a family: Holm

def test_holm_keeps_the_family_wise_rate_over_twenty_null_configurations():
    rng = np.random.default_rng(4)
    n, studies, family = 3, 2000, 20
    d = rng.standard_normal((studies, family, n))  # paired differences, no effect anywhere
    t = d.mean(2) / (d.std(2, ddof=1) / np.sqrt(n))
    p = 2 * scipy_stats.t.sf(np.abs(t), n - 1)
    # ablate's p-value is the t-test's
    one = partial(stats.delta_ci, pd.Series(np.zeros(n)), pd.Series(d[0, 0]))
    assert stats.p_value(one) == pytest.approx(p[0, 0], rel=1e-6)
    rows = [f"m{i}" for i in range(family)]
    any_false = [any(pv <= a for pv, a in zip(ps, stats.holm_alphas(dict(zip(rows, ps))).values()))
                 for ps in p]
    holm = float(np.mean(any_false))
    unadjusted = float(np.mean((p <= 0.05).any(1)))
    assert unadjusted > 0.5  # before: about one false verdict per study
    assert holm <= 0.05 + 0.015


def test_compare_adjusts_a_controls_rows_and_keeps_the_unadjusted_interval():
    seeds = [0, 1, 2, 3]
    base = pd.Series([60.0, 61.0, 59.0, 60.5], index=seeds)
    samples = {"none": base, "se": base + [2.1, 1.8, 2.3, 1.2], "cbam": base + [0.2, -0.1, 0.0, 0.5],
               "eca": base + [0.9, 0.2, 0.8, 0.6]}
    controls = dict.fromkeys(samples, "none")
    holm, alone = compare(list(samples), samples, controls), compare(list(samples), samples, controls, adjust="none")
    for row in ("se", "cbam", "eca"):
        assert (holm[row].raw_low, holm[row].raw_high) == (alone[row].low, alone[row].high)
        assert holm[row].low <= alone[row].low and holm[row].high >= alone[row].high  # wider, never narrower
    assert alone["eca"].verdict == stats.BETTER and holm["eca"].verdict == stats.UNDECIDED  # 3 comparisons
    assert holm["se"].verdict == stats.BETTER


# ---------------------------------------------------------------- seeds on demand: Pocock over the looks

@pytest.mark.parametrize("min_seeds, max_seeds", [(2, 10), (3, 10), (2, 5)])
def test_seeds_on_demand_keep_their_level_however_often_they_look(min_seeds, max_seeds):
    d = np.random.default_rng(5).standard_normal((CELLS, max_seeds))  # no effect
    naive, _ = on_demand(d, min_seeds, max_seeds, 0.05)
    looks = tuple(range(min_seeds, max_seeds + 1))
    kept, _ = on_demand(d, min_seeds, max_seeds, stats.pocock_alpha(0.05, looks))
    assert decided(naive).mean() > 0.12  # before: 13-20% false verdicts
    assert decided(kept).mean() <= 0.05 + 0.01


def test_seeds_on_demand_still_decide_an_effect_of_one_sd():
    d = np.random.default_rng(6).standard_normal((CELLS, 10)) + 1.0  # one sd of the paired differences
    verdict, spent = on_demand(d, 2, 10, stats.pocock_alpha(0.05, tuple(range(2, 11))))
    assert (verdict == stats.BETTER).mean() > 0.5  # decided in most cells
    assert (decided(verdict) & (spent < 10)).mean() > 0.45  # about half before max
    assert spent.mean() < 9


def test_next_seeds_stops_where_the_simulated_rule_does():
    rng = np.random.default_rng(7)
    looks = tuple(range(2, 11))
    alpha = stats.pocock_alpha(0.05, looks)
    for shift in (0.0, 1.5):
        for d in rng.standard_normal((30, 10)) + shift:
            verdict, spent = on_demand(d[None], 2, 10, alpha)
            n = 2
            while n < 10:
                base = pd.Series(np.zeros(n), index=range(n))
                more = stats.next_seeds({"none": base, "se": base + d[:n]}, {"none": set(range(n)),
                                        "se": set(range(n))}, set(), "none", max_seeds=10, min_seeds=2)
                if not more:
                    break
                n += 1
            assert n == spent[0], (shift, d)


def test_compare_prints_the_interval_the_stop_rule_used():
    seeds = list(range(4))
    base = pd.Series([60.0, 61.0, 59.0, 60.5], index=seeds)
    samples = {"none": base, "se": base + [1.1, 0.8, 1.3, 0.9]}
    looks = tuple(range(2, 11))
    out = compare(list(samples), samples, dict.fromkeys(samples, "none"), looks=looks)["se"]
    _, low, high = stats.delta_ci(base, samples["se"], 1 - stats.pocock_alpha(0.05, looks))
    assert (out.low, out.high) == pytest.approx((low, high))
    assert out.low < out.raw_low


# ---------------------------------------------------------------- equivalence

def test_equivalent_needs_the_interval_inside_the_margin_and_stops_seeds_on_demand():
    assert stats.direction(-0.3, 0.4, margin=0.5) == stats.EQUIVALENT
    assert stats.direction(-0.3, 0.6, margin=0.5) == stats.UNDECIDED
    assert stats.direction(0.1, 0.4, margin=0.5) == stats.BETTER  # excluding 0 still says which way
    base = pd.Series([60.0, 61.0, 59.0], index=[0, 1, 2])
    close = base + pd.Series([0.05, -0.04, 0.02], index=[0, 1, 2])
    samples, tried = {"none": base, "se": close}, {"none": {0, 1, 2}, "se": {0, 1, 2}}
    assert stats.next_seeds(samples, tried, set(), "none", max_seeds=10)
    assert stats.next_seeds(samples, tried, set(), "none", max_seeds=10, margin=0.5) == {}
    # at the margin itself, `equivalent` appears at most at the level, over every look
    d = np.random.default_rng(8).standard_normal((CELLS, 10)) * 0.5 + 0.5
    verdict, _ = on_demand(d, 2, 10, stats.pocock_alpha(0.05, tuple(range(2, 11))), margin=0.5)
    assert (verdict == stats.EQUIVALENT).mean() <= 0.05


def test_the_footnote_says_how_the_level_is_shared():
    frame = pd.DataFrame({"vs": ["none", "none"]}, index=["none", "se"])
    table = AblationTable(frame=frame, study="s", baseline="none", ladder=False, per_seed=pd.DataFrame(), refused={},
                          hidden=0, classes=10, adjust="holm", margin=0.5, looks=(2, 3, 4, 5, 6))
    note = footnote(table, "compact", False)
    assert "Holm-adjusted across the rows compared with one control (study.adjust: holm" in note
    assert "2..6 seeds" in note and "Pocock" in note and "unadjusted intervals: --columns all" in note
    assert "equivalent when it lies inside ±0.5 (study.min_effect)" in note
    alone = footnote(AblationTable(frame=frame, study="s", baseline="none", ladder=False, per_seed=pd.DataFrame(),
                                   refused={}, hidden=0, classes=10), "compact", False)
    assert "each comparison alone (study.adjust: none)" in alone and "Pocock" not in alone


def test_study_adjust_and_min_effect_are_checked_keys():
    assert StudySection(name="s").adjust == "holm" and StudySection(name="s").min_effect is None
    assert StudySection(name="s", adjust="none", min_effect=0.3).min_effect == 0.3
    for bad in ({"adjust": "bonferroni"}, {"min_effect": -1}, {"min_effect": 0}):
        with pytest.raises(ValidationError):
            StudySection(name="s", **bad)


def test_seeds_on_demand_follow_the_verdict_the_report_shows():
    """The runner passes summary.compare's verdicts: a row the seeds alone would call decided but the report's
    seeds+images interval leaves undecided gets another seed, and one the report decided gets none."""
    samples = {"none": pd.Series({0: 80.0, 1: 80.1, 2: 80.2}), "se": pd.Series({0: 90.0, 1: 90.1, 2: 90.3})}
    common = dict(tried={"none": {0, 1, 2}, "se": {0, 1, 2}}, pending=set(), controls="none", max_seeds=10,
                  min_seeds=2)
    assert stats.next_seeds(samples, **common) == {}  # +10 points over three seeds: decided by the seeds alone
    undecided = stats.next_seeds(samples, **common, verdicts={"none": "baseline", "se": "undecided"})
    assert undecided == {"se": {3}, "none": {3}}
    assert stats.next_seeds(samples, **common, verdicts={"none": "baseline", "se": "better"}) == {}
