"""What a study's results mean, in one place: the report, the configuration runs in MLflow, the parent run's summary
and seeds on demand all call this module, so the UI and the table say the same thing about the same trials.

- A configuration's result is its study metric (`study.metric`, the first objective) over seeds: the mean over
  each seed's finished trials, then mean, sd and n over those per-seed values (n counts seeds, not trials).
- Its baseline (`choose_baseline`): the configuration `study.baseline` names; else the first plain one (attention
  `none`) in order (a grid's file order, a search's trial order); else, in a grid, the first with a result; in a
  search, the best by mean.
- Each configuration is compared with the baseline, or in a ladder (`study.ladder`) with the row before it: the
  delta of means with its 95% interval (stats.delta_ci: paired by seed, else Welch) and the verdict it gives
  (better / worse / undecided; `baseline` for the baseline itself; `refused` for a configuration study.constraints
  refused). With the paper's numbers (`reference:`), the paper's delta and whether our interval reproduces it.
- Trials are counted once (`TrialCounts`): complete / pruned / failed / refused, a resumed trial's stopped
  predecessor in none of them.

Pure pandas and numbers (no torch, no MLflow): what the rows are and where the samples come from is the caller's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from optuna.trial import TrialState

from ablate import stats
from ablate.storage import Attr, resumed_trials

BASELINE, REFUSED, NO_RESULT = "baseline", "refused", "-"


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
                    named: str | None = None, searched: bool = False, maximize: bool = True) -> str | None:
    """The configuration every other is compared with (module docstring): `rows` in order, `modules` each row's
    attention module, `named` the study's (or the reader's) choice. None while nothing has a result."""
    if named is not None:
        return named
    measured = [r for r in rows if r in samples and len(samples[r])]
    if not measured:
        return None
    plain = [r for r in measured if modules.get(r) == "none"]
    if plain:
        return plain[0]
    return best_by_mean({r: samples[r] for r in measured}, maximize) if searched else measured[0]


def best_by_mean(samples: dict[str, pd.Series], maximize: bool = True) -> str | None:
    """The row whose samples have the best mean (by the metric's direction), or None while none has a sample."""
    means = {r: values.mean() for r, values in samples.items() if len(values)}
    return (max if maximize else min)(means, key=means.get) if means else None


def compare(rows: list[str], samples: dict[str, pd.Series], baseline: str | None, *, ladder: bool = False,
            maximize: bool = True, paper: dict[str, float] | None = None, refused=()) -> dict[str, Outcome]:
    """Each row's Outcome, in order: against `baseline`, or against the row before in a `ladder`. `paper`: each
    row's published top-1 accuracy (points; NaN or absent without one); `refused`: rows study.constraints refused."""
    paper = paper or {}
    empty = pd.Series(dtype=float)
    out = {}
    for i, row in enumerate(rows):
        values = samples.get(row, empty)
        ref = (rows[i - 1] if i else None) if ladder else (baseline if row != baseline else None)
        if row in refused:
            out[row] = Outcome(row, values, ref, verdict=REFUSED)
            continue
        if ref is None:  # the baseline (against itself: 0), or a ladder's first row (what its steps start from)
            itself = stats.delta_ci(values, values) if len(values) and not ladder else (np.nan,) * 3
            out[row] = Outcome(row, values, None, *itself, verdict=BASELINE)
            continue
        if ref not in samples or not len(values):  # nothing to compare yet
            out[row] = Outcome(row, values, ref)
            continue
        delta, low, high = stats.delta_ci(samples[ref], values)
        published = paper.get(row, np.nan) - paper.get(ref, np.nan)
        effect = stats.reproduction(published, low, high) if pd.notna(published) else NO_RESULT
        out[row] = Outcome(row, values, ref, delta, low, high, stats.direction(low, high, maximize), published, effect)
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
