"""A study's progress as a user sees it: the line printed after each trial (what a log, CI or a Slurm job's output
gets), and at a terminal a study bar (tqdm: done / total, pruned, failed, an ETA from this run's trials so far) with
each trial's Lightning bar under it and the trials' lines scrolling above it. With --jobs N the parent process
draws the bar from the Optuna storage and the workers draw nothing: N processes' bars on one terminal would
overwrite each other."""
from __future__ import annotations

import sys

import optuna
from optuna.trial import TrialState
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm
from tqdm import tqdm

from ablate.errors import AblateError
from ablate.storage import Attr, resumed_trials
from ablate.study.trials import own_trials
from ablate.summary import TrialCounts

MODES = ("auto", "bar", "lines")  # `ablate run --progress`: auto is a bar when stdout is a terminal
QUIET = "quiet"  # a --jobs worker under the parent's bar: no bar and no line of its own


def resolve(mode: str) -> str:
    """'bar' or 'lines' for `ablate run --progress MODE`."""
    if mode not in MODES:
        raise AblateError(f"--progress: {mode!r} is not one of {', '.join(MODES)}")
    return "bar" if mode == "bar" or (mode == "auto" and sys.stdout.isatty()) else "lines"


def say(line: str) -> None:
    """A line above any bars (tqdm clears and redraws them), flushed so that a log reads in order."""
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


class TrialBar(TQDMProgressBar):
    """Lightning's tqdm bars for one trial, on the lines under the study bar (position 0), cleared when it ends:
    the trial's line then says how it went."""

    def init_train_tqdm(self) -> Tqdm:
        return self._bar(self.train_description, 1, smoothing=0)

    def init_validation_tqdm(self) -> Tqdm:
        return self._bar(self.validation_description, 2)

    def _bar(self, desc: str, position: int, **options) -> Tqdm:
        return Tqdm(desc=desc, position=position, disable=self.is_disabled, leave=False, dynamic_ncols=True,
                    file=sys.stdout, bar_format=self.BAR_FORMAT, **options)


def counted(study: optuna.Study, pairs: set[tuple[str, int]] | None, total: int | None):
    """The trials with a configuration (of the file, for a grid), their counts, and the total to show: `total`, or
    with seeds on demand (None) the cell x seed pairs queued so far."""
    trials = [t for t in own_trials(study) if Attr.LABEL in t.user_attrs
              and (pairs is None or (t.user_attrs.get(Attr.CELL), t.user_attrs.get(Attr.SEED)) in pairs)]
    continued = resumed_trials(trials)
    shown = total if total is not None else len({(t.user_attrs.get(Attr.CELL), t.user_attrs.get(Attr.SEED))
                                                 for t in trials if t.number not in continued})
    return trials, TrialCounts.of(trials), shown


def trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial, pairs, total) -> str | None:
    """The line after a trial: its outcome, the study's counts and its best so far (None: nothing ran)."""
    if Attr.LABEL not in trial.user_attrs:
        return None  # a worker that found no grid cell left
    trials, count, shown = counted(study, pairs, total)
    refused = "".join(f", {n} {what}" for n, what in ((count.stopped, "stopped"), (count.refused, "refused")) if n)
    best = ""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if len(study.directions) == 1 and complete:
        pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
        b = pick(complete, key=lambda t: t.value)
        best = f" | best {b.value:.4f} (trial {b.number}: {b.user_attrs.get(Attr.LABEL, '')})"
    reason = f" ({trial.user_attrs[Attr.FAIL_REASON]})" if Attr.FAIL_REASON in trial.user_attrs else ""
    if trial.user_attrs.get(Attr.RESUMED):
        reason += f" (resumed at epoch {trial.user_attrs[Attr.RESUMED]['epoch']})"
    return (f"[{study.study_name}] trial {trial.number} {trial.state.name.lower()}{reason} | {count.done}/{shown} "
            f"done, {count.pruned} pruned, {count.failed} failed{refused}{best}")


class StudyBar:
    """The study's bar at the top of the terminal's live area; its ETA is tqdm's, from the trials this run finished
    (smoothing 0: their mean rate), so a resumed study's earlier trials do not make it look fast."""

    def __init__(self, study: optuna.Study, pairs, total):
        self.pairs, self.total = pairs, total
        _, count, shown = counted(study, pairs, total)
        self.seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        self.bar = tqdm(desc=study.study_name, total=shown, initial=count.done, unit="trial", position=0, leave=True,
                        dynamic_ncols=True, smoothing=0, file=sys.stdout)
        self._show(count)

    def _show(self, count: TrialCounts) -> None:
        extra = "".join(f", {n} {what}" for n, what in ((count.stopped, "stopped"), (count.refused, "refused"),
                                                         (count.running, "running")) if n)
        self.bar.set_postfix_str(f"{count.pruned} pruned, {count.failed} failed{extra}", refresh=False)

    def update(self, study: optuna.Study) -> None:
        _, count, shown = counted(study, self.pairs, self.total)
        self.bar.total = shown
        self._show(count)
        self.bar.update(count.done - self.bar.n)  # refreshes, with the ETA
        self.bar.refresh()

    def poll(self, study: optuna.Study) -> None:
        """The parent of --jobs workers: a line for each trial finished since the last poll, then the bar."""
        for t in study.get_trials(deepcopy=False):
            if t.state.is_finished() and t.number not in self.seen:
                self.seen.add(t.number)
                line = trial_line(study, t, self.pairs, self.total)
                if line:
                    say(line)
        self.update(study)

    def close(self, study: optuna.Study | None = None) -> None:
        if study is not None:
            self.update(study)
        self.bar.close()  # leave=True: the final state stays on the screen


class Progress:
    """A worker's Optuna callback after each trial, and the progress bar callbacks each trial's Trainer gets:
    'lines' prints the line (today's output, and any output that is not a terminal), 'bar' draws the study bar
    and the trial's bar, QUIET (a --jobs worker under the parent's bar) neither."""

    def __init__(self, mode: str, study: optuna.Study, pairs, total):
        self.mode, self.study, self.pairs, self.total = mode, study, pairs, total
        self.bar = StudyBar(study, pairs, total) if mode == "bar" else None

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        line = trial_line(study, trial, self.pairs, self.total) if self.mode != QUIET else None
        if self.bar is not None:
            if line:
                say(line)
            self.bar.update(study)
        elif line:
            print(line, flush=True)

    def trial_callbacks(self, progress_bar: bool) -> list:
        """The trial's own bar (train.progress_bar): under the study bar, or none drawn by a QUIET worker (a
        disabled bar rather than none: Lightning would otherwise add its default one)."""
        if not progress_bar or self.mode == "lines":
            return []
        bar = TrialBar()
        if self.mode == QUIET:
            bar.disable()
        return [bar]

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close(self.study)
