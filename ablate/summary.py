"""What a study's results mean, in one place: the report, the configuration runs in MLflow, the parent run's summary
and seeds on demand all call this module, so the UI and the table say the same thing about the same trials.

- A configuration's result is its study metric (`study.metric`, the first objective) over seeds: the mean over
  each seed's finished trials, then mean, sd and n over those per-seed values (n counts seeds, not trials; a
  seed's repeats are averaged into it and flagged as `repeats`, never counted).
- Every seed is accounted for (`SeedCount`): a seed that failed (diverged, crashed) and never finished makes the
  configuration's verdict `unstable` whatever its finished seeds say; pruned seeds (searches only) are counted.
- Its control (`controls`): in a grid, the plain cell (attention `none`, or the configurations `study.baseline`
  names by key=value pairs) that matches it on every other factor (epochs, dataset, backbone, recipe), so that a
  factorial grid compares like with like; a row with no matching control is compared with nothing. Without any
  such cell, one baseline for all (`choose_baseline`): the row `study.baseline` names, else a grid's first. A
  searched study compares only its confirmation runs (study.confirm), with the baseline named in advance.
- Each configuration is compared with its control, or in a ladder (`study.ladder`) with the row before it: the
  delta of means with its 95% interval (stats.delta_ci: paired by seed, else Welch; with `study.interval:
  seeds+images`, stats.delta_ci_images adds the validation images' sampling error) and the verdict it gives
  (better / worse / undecided, or equivalent inside +-study.min_effect; `baseline` for a control itself;
  `unstable` with failed seeds; `refused` for a configuration study.constraints refused). With the paper's
  numbers (`reference:`), the paper's delta and whether our interval reproduces it. The verdict's interval is
  adjusted for the family it belongs to (the rows one control is compared with, a ladder's steps: Holm,
  study.adjust) and, with seeds on demand, spent over the looks the stop rule takes (Pocock): stats.judge, one
  rule for the report, the runs and seeds on demand.
- Trials are counted once (`TrialCounts`): complete / pruned / failed / refused, a resumed trial's stopped
  predecessor in none of them.

Pure pandas and numbers (no torch, no MLflow): what the rows are and where the samples come from is the caller's.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
from optuna.trial import TrialState

from ablate import stats
from ablate.replication import delta_sd
from ablate.storage import Attr, resumed_trials

BASELINE, REFUSED, UNSTABLE, NO_RESULT = "baseline", "refused", "unstable", "-"
CONFIRMED, SEARCHED = "confirmed", "search"  # a searched study's rows: confirmation runs, or selection only
SEEDS, SEEDS_AND_IMAGES = "seeds", "seeds+images"  # what an interval covers (study.interval)


@dataclass(frozen=True)
class SeedCount:
    """What became of a configuration's seeds beyond those that finished (which are its samples)."""

    failed: int = 0  # seeds whose every trial failed (diverged or crashed; a signal's stop is not a failure)
    pruned: int = 0  # seeds a pruner stopped before any of their trials finished
    repeats: int = 0  # finished trials beyond one per seed: averaged into their seed, not counted in n


@dataclass(frozen=True)
class Outcome:
    """One configuration's result over seeds and what it says against the row it is compared with."""

    row: str  # the configuration (a cell key in the runner, a row label in the report)
    samples: pd.Series  # the study metric by seed, in its display scale (percent for accuracies)
    compared_with: str | None  # the baseline, or the row before in a ladder; None for the baseline itself
    delta: float = np.nan
    low: float = np.nan
    high: float = np.nan
    verdict: str = NO_RESULT
    paper_delta: float = np.nan  # the paper's delta over the same comparison (points), NaN without references
    effect: str = NO_RESULT  # the paper's effect against our interval: reproduced / contradicted / inconclusive
    seeds: SeedCount = SeedCount()
    stage: str = ""  # a searched study's row: CONFIRMED or SEARCHED; "" in a grid
    covers: str = SEEDS  # what the interval covers: SEEDS, or SEEDS_AND_IMAGES where every seed's images are known
    raw_low: float = np.nan  # the unadjusted 95% interval (low, high: the one the verdict used, after adjustment)
    raw_high: float = np.nan

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def mean(self) -> float:
        return float(self.samples.mean()) if len(self.samples) else np.nan

    @property
    def sd(self) -> float:
        return float(self.samples.std()) if len(self.samples) > 1 else np.nan

    @property
    def significant(self) -> bool:
        return bool(self.low > 0 or self.high < 0)


def seed_samples(done: pd.DataFrame, value: str, row: str = "row") -> dict[str, pd.Series]:
    """Per row of `done` (finished trials: a `seed` column, the `row` column and the `value` column, already in
    display scale): the value by seed, a seed's repeats averaged, seeds in order."""
    samples = {}
    for key, group in done.dropna(subset=[value]).groupby(row, sort=False):
        samples[key] = group.groupby("seed")[value].mean().sort_index()
    return samples


def choose_baseline(rows: list[str], samples: dict[str, pd.Series], modules: dict[str, str], *,
                    named: str | None = None) -> str | None:
    """The one configuration every other is compared with where no matched controls apply (module docstring):
    `rows` in order, `modules` each row's attention module, `named` the study's (or the reader's) choice. None while
    nothing has a result."""
    if named is not None:
        return named
    measured = [r for r in rows if r in samples and len(samples[r])]
    plain = [r for r in measured if modules.get(r) == "none"]
    return (plain or measured or [None])[0]


def best_by_mean(samples: dict[str, pd.Series], maximize: bool = True) -> str | None:
    """The row whose samples have the best mean (by the metric's direction), or None while none has a sample."""
    means = {r: values.mean() for r, values in samples.items() if len(values)}
    return (max if maximize else min)(means, key=means.get) if means else None


def seed_counts(trials: pd.DataFrame, row: str = "row") -> dict[str, SeedCount]:
    """Per row of `trials` (every trial: `state`, `seed` and the `row` column): its failed and pruned seeds (those
    without a finished trial) and its repeats."""
    counts = {}
    for key, group in trials.groupby(row, sort=False):
        by_seed = group.groupby("seed")["state"].agg(set)
        finished = by_seed.map(lambda states: "COMPLETE" in states)
        complete = int((group["state"] == "COMPLETE").sum())
        counts[key] = SeedCount(failed=int(by_seed[~finished].map(lambda states: "FAIL" in states).sum()),
                                pruned=int(by_seed[~finished].map(lambda states: states == {"PRUNED"}).sum()),
                                repeats=complete - int(finished.sum()))
    return counts


def matched_controls(rows: list[str], settings: dict[str, dict], controls: set[str],
                     treatment) -> dict[str, str | None]:
    """Each row's control: the first of `controls` (in row order) that matches it on every setting that is not a
    treatment (`treatment(key)`: the keys the comparison is about, the attention module's by default); `settings`
    holds each row's value of every key the rows vary. A control is its own; a row with none matching gets None."""
    ordered = [r for r in rows if r in controls]
    out = {}
    for row in rows:
        if row in controls:
            out[row] = row
            continue
        factors = {k: v for k, v in settings.get(row, {}).items() if not treatment(k)}
        out[row] = next((c for c in ordered if all(settings.get(c, {}).get(k) == v for k, v in factors.items())),
                        None)
    return out


def one_control(rows: list[str], baseline: str | None, *, ladder: bool = False) -> dict[str, str | None]:
    """Every row against `baseline` (itself its own), or in a `ladder` against the row before (the first row what
    the steps start from)."""
    if ladder:
        return dict(zip(rows, rows[:1] + rows[:-1]))
    return {row: baseline for row in rows} if baseline is not None else {}


def compare(rows: list[str], samples: dict[str, pd.Series], controls: dict[str, str | None], *,
            ladder: bool = False, maximize: bool = True, paper: dict[str, float] | None = None, refused=(),
            seeds: dict[str, SeedCount] | None = None, stages: dict[str, str] | None = None,
            images: dict[str, dict] | None = None, adjust: str = stats.HOLM, margin: float | None = None,
            looks: tuple[int, ...] | None = None) -> dict[str, Outcome]:
    """Each row's Outcome, in order, against its control (`controls`: row -> the row it is compared with, itself
    for a control, None or absent for none). `paper`: each row's published top-1 accuracy (points; NaN or absent
    without one); `refused`: rows study.constraints refused; `seeds`: each row's failed / pruned seeds and repeats;
    `stages`: a search's rows' stage; `images`: each row's per-image correctness by seed (numpy arrays), for an
    interval that covers the validation images too. The verdict's interval is stats.judge's: Holm-adjusted within
    the rows one control is compared with, or a ladder's steps (`adjust`: study.adjust), spent over seeds on
    demand's looks (`looks`: min..max) by Pocock's boundary; `margin` (study.min_effect) makes an interval inside
    it `equivalent`. The unadjusted 95% interval stays in raw_low / raw_high."""
    paper, seeds, stages, images = paper or {}, seeds or {}, stages or {}, images or {}
    empty = pd.Series(dtype=float)
    intervals = {}
    for row in rows:
        values, ref = samples.get(row, empty), controls.get(row)
        if row not in refused and ref not in (None, row) and ref in samples and len(values):
            intervals[row] = (partial(stats.delta_ci_images, images[ref], images[row])
                              if row in images and ref in images else partial(stats.delta_ci, samples[ref], values))
    judged = stats.judge(intervals, stats.families({r: controls[r] for r in intervals}, ladder), adjust=adjust,
                         looks=looks)
    out = {}
    for row in rows:
        values, ref = samples.get(row, empty), controls.get(row)
        common = dict(seeds=seeds.get(row, SeedCount()), stage=stages.get(row, ""))
        unstable = common["seeds"].failed > 0
        if row in refused:
            out[row] = Outcome(row, values, ref, verdict=REFUSED, **common)
        elif ref == row:  # a control (against itself: 0), or a ladder's first row (what its steps start from)
            itself = (0.0, 0.0, 0.0) if len(values) > 1 and not ladder else (np.nan,) * 3
            out[row] = Outcome(row, values, None, *itself, verdict=UNSTABLE if unstable else BASELINE, **common)
        elif row not in intervals:  # no control, or nothing to compare yet
            out[row] = Outcome(row, values, ref, verdict=UNSTABLE if unstable else NO_RESULT, **common)
        else:
            delta, low, high = judged[row]
            _, raw_low, raw_high = intervals[row](stats.LEVEL)
            published = paper.get(row, np.nan) - paper.get(ref, np.nan)
            effect = stats.reproduction(published, raw_low, raw_high, delta_sd(paper.get(row), paper.get(ref))) \
                if pd.notna(published) else NO_RESULT
            verdict = UNSTABLE if unstable else stats.direction(low, high, maximize, margin)
            out[row] = Outcome(row, values, ref, delta, low, high, verdict, published, effect, **common,
                               covers=SEEDS_AND_IMAGES if row in images and ref in images else SEEDS,
                               raw_low=raw_low, raw_high=raw_high)
    return out


def delta_text(outcome: Outcome, unit: str = "") -> str:
    """'+1.23 [+0.40, +2.06]' (the delta and its 95% interval; '(one seed: no interval)' below two seeds)."""
    if pd.isna(outcome.delta):
        return NO_RESULT
    ci = f" [{outcome.low:+.2f}, {outcome.high:+.2f}]" if pd.notna(outcome.low) else " (one seed: no interval)"
    return f"{outcome.delta:+.2f}{unit}{ci}"


@dataclass(frozen=True)
class TrialCounts:
    """A study's trials with a configuration, each counted once: a trial refused by study.constraints is not
    'pruned'; a trial stopped by a signal with its checkpoint saved (Ctrl-C, preemption) is 'stopped', not
    'failed', until a later trial resumes it; and a stopped trial that a later one resumed is in no count (the later
    one's work is)."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    refused: int = 0
    stopped: int = 0
    running: int = 0

    @classmethod
    def of(cls, trials) -> TrialCounts:
        continued = resumed_trials(trials)
        refused = {t.number for t in trials if Attr.REFUSED in t.user_attrs}
        counted = [t for t in trials if t.number not in continued | refused]
        stopped = sum(t.state == TrialState.FAIL and stopped_by_signal(t) for t in counted)
        states = [t.state for t in counted]
        return cls(states.count(TrialState.COMPLETE), states.count(TrialState.PRUNED),
                   states.count(TrialState.FAIL) - stopped, len(refused), stopped, states.count(TrialState.RUNNING))

    @property
    def done(self) -> int:
        return self.complete + self.pruned + self.refused

    def as_dict(self) -> dict[str, int]:
        """The finished counts, as the parent run's summary logs them (trials/complete ...)."""
        return {"complete": self.complete, "pruned": self.pruned, "failed": self.failed, "stopped": self.stopped,
                "refused": self.refused}


def stopped_by_signal(trial) -> bool:
    """A trial Ctrl-C or a preemption stopped (its checkpoint saved): the next run resumes it."""
    reason = trial.user_attrs.get(Attr.FAIL_REASON, "")
    return reason.startswith("preempted") or reason == "KeyboardInterrupt"
