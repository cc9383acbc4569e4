"""Which of a study's trials are which: its own (not a warm start's copies), a search's own trials (its budget,
study.trials) and its confirmation runs (study.confirm), and whether a trial was sampled or queued to measure a
configuration again."""
from __future__ import annotations

import optuna
from optuna.trial import TrialState

from ablate.storage import CONFIRM, Attr

DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def own_trials(study: optuna.Study, states=None) -> list:
    """The study's own trials: not those copied from an earlier study for its sampler (warm_start)."""
    return [t for t in study.get_trials(deepcopy=False, states=states) if Attr.WARM_FROM not in t.user_attrs]


def is_confirmation(trial) -> bool:
    return trial.user_attrs.get(Attr.STAGE) == CONFIRM


def search_trials(study: optuna.Study, states=DONE + (TrialState.RUNNING,)) -> list:
    """A search's own trials that spend its budget (study.trials): not its confirmation runs, nor a trial pruned
    for want of budget before it had a configuration (objective.surplus)."""
    return [t for t in own_trials(study, states) if not is_confirmation(t)
            and not (t.state == TrialState.PRUNED and Attr.LABEL not in t.user_attrs)]


def sampled(trial: optuna.Trial) -> bool:
    """Is this a search's sampled trial (or a resumption of one), not a configuration queued to be measured again
    (a repeat of seeds on demand, a confirmation run)? Optuna records a queued trial's fixed params
    (Study.enqueue_trial); a resumption (our RETRY_OF; Optuna's heartbeat retry copies the attrs) is judged by the
    trial it resumes."""
    trials = {t.number: t for t in trial.study.get_trials(deepcopy=False)}
    t = trials[trial.number]
    while Attr.RETRY_OF in t.user_attrs and t.user_attrs[Attr.RETRY_OF] in trials:
        t = trials[t.user_attrs[Attr.RETRY_OF]]
    return "fixed_params" not in t.system_attrs and not is_confirmation(t)
