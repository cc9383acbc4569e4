"""Selection apart from evaluation, every seed accounted for: a grid refuses a pruner, a search prunes only what it
samples and ends by confirming its top configurations and its named baseline on fresh seeds, and a failed cell x
seed is queued again only while trying again can change it.

The runner is real (Optuna, both stores); the trainer is helpers.Toy (or a variant that fails or records what it
was handed), in place of train.run_trial.
"""
import statistics
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import TINY_BASE, Toy
from optuna.trial import TrialState

import ablate
from ablate.errors import AblateError, Preempted
from ablate.plan import Cell, StudyPlan
from ablate.spec import load_study
from ablate.storage import Attr, make_storage
from ablate.study import make_objective, run_study
from ablate.study.confirmation import baseline_cell, confirmation_seeds
from ablate.study.objective import configuration
from ablate.study.queue import CRASHED, DIVERGED, MAX_ATTEMPTS, STOPPED, failure_kind, settled
from ablate.study.trials import sampled
from ablate.tracking import Tag
from ablate.train import DivergedError

MODULES = ["none", "se", "cbam", "eca"]
REPO = Path(ablate.__file__).resolve().parents[1]  # the shipped studies/


def study_file(tmp_path, name, space=None, **study):
    doc = {"study": {"name": name, "seeds": [0], "price_steps": False, **study}, "base": TINY_BASE,
           "space": space or {"model.attention.name": MODULES}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def confirmed(study) -> dict[str, list[int]]:
    """label -> the seeds of its COMPLETE confirmation runs."""
    out: dict[str, list[int]] = {}
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        if t.user_attrs.get(Attr.STAGE) == "confirm":
            out.setdefault(t.user_attrs[Attr.LABEL], []).append(t.user_attrs[Attr.SEED])
    return {k: sorted(v) for k, v in out.items()}


def search_top(study, k: int, baseline_key: str = "{}") -> list[str]:
    """The top k labels by mean over the search's own COMPLETE trials (first reached wins a tie), baseline aside."""
    values: dict[str, list[float]] = {}
    labels = {}
    for t in sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        if Attr.STAGE not in t.user_attrs and t.user_attrs[Attr.CELL] != baseline_key:
            values.setdefault(t.user_attrs[Attr.CELL], []).append(t.values[0])
            labels[t.user_attrs[Attr.CELL]] = t.user_attrs[Attr.LABEL]
    ranked = sorted(values, key=lambda key: -statistics.fmean(values[key]))
    return [labels[key] for key in ranked[:k]]


# ---------------------------------------------------------------- refused at load

@pytest.mark.parametrize("study, message", [
    ({"pruner": "median"}, "study.pruner: a grid estimates each configuration over its seeds, and pruning would "
                           "leave its mean over the seeds the pruner let finish (use pruner: none"),
    ({"confirm": {"top": 2}}, "study.confirm: a grid runs every configuration on every seed"),
    ({"metric": "val/acc1_best"}, "study.metric: 'val/acc1_best' is a max over epochs on the split that chose it"),
    ({"sampler": "random", "trials": 4, "baseline": "attention=none"}, None),  # key=value pairs: fine
    ({"sampler": "random", "trials": 4, "baseline": "plain"}, "study.baseline: a search names its control in advance "
                                                              "as key=value pairs"),
    ({"sampler": "random", "trials": 4, "metric": "val/acc1_best"}, "study.metric: 'val/acc1_best'"),
])
def test_what_would_mix_selection_into_the_reported_numbers_is_refused_at_load(tmp_path, run_cli, study, message):
    path = study_file(tmp_path, "bad", seeds=[0, 1], **study)
    if message is None:
        load_study(path)
        return
    with pytest.raises(AblateError) as err:
        load_study(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    proc = run_cli("run", path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlruns").exists()


def test_the_shipped_search_confirms_on_seeds_it_never_used():
    plan = StudyPlan(load_study(REPO / "studies" / "attention_search.yaml"))
    s = plan.spec.cfg.study
    assert s.seed_list == [0] and confirmation_seeds(plan) == [1, 2, 3]
    assert s.confirmation.top == 3  # 30 search trials, then at most (3 + 1) x 3 = 12 confirmation runs
    assert baseline_cell(plan).key == "{}" and baseline_cell(plan).label == "attention=none"  # the plain backbone


# ---------------------------------------------------------------- the confirmation stage

def test_a_search_ends_by_confirming_its_top_and_the_baseline_on_fresh_seeds(tmp_path):
    toy = Toy()
    path = study_file(tmp_path, "search", sampler="random", trials=8, confirm={"top": 2, "seeds": 2})
    study = run_study(load_study(path), trainer=toy)
    search = [t for t in study.trials if Attr.STAGE not in t.user_attrs]
    assert len(search) == 8 and all(t.user_attrs[Attr.SEED] == 0 for t in search)
    top = search_top(study, 2)
    assert confirmed(study) == {label: [1, 2] for label in ["attention=none", *top]}  # fresh seeds: 1, 2
    confirm = [t for t in study.trials if t.user_attrs.get(Attr.STAGE) == "confirm"]
    assert len(confirm) == 6 and all(t.number > max(s.number for s in search) for t in confirm)
    assert all(set(configuration_attrs(t)) == {Attr.CELL, Attr.PARAMS, Attr.LABEL, Attr.SEED} for t in confirm)
    assert len(toy.trained) == 8 + 6

    again = run_study(load_study(path), trainer=toy)  # finished: nothing new
    assert len(again.trials) == len(study.trials) and len(toy.trained) == 8 + 6


def configuration_attrs(t) -> dict:
    return {k: v for k, v in t.user_attrs.items() if k in (Attr.CELL, Attr.PARAMS, Attr.LABEL, Attr.SEED)}


def test_a_baseline_named_in_advance_is_confirmed_whatever_the_search_found(tmp_path):
    path = study_file(tmp_path, "named", sampler="random", trials=6, baseline="attention=se",
                      space={"model.attention.name": ["cbam", "eca"]}, confirm={"top": 1, "seeds": 2})
    study = run_study(load_study(path), trainer=Toy())
    assert confirmed(study) == {"attention=se": [1, 2], "attention=cbam": [1, 2]}  # se was never searched


def test_a_multi_objective_search_confirms_its_top_by_the_first_objective(tmp_path):
    path = study_file(tmp_path, "pareto", sampler="random", trials=6, confirm={"top": 1, "seeds": 2}, metric=[
        {"metric": "val/acc1", "direction": "maximize"}, {"metric": "model/gmacs", "direction": "minimize"}])
    study = run_study(load_study(path), trainer=Toy())
    assert confirmed(study) == {"attention=none": [1, 2], search_top(study, 1)[0]: [1, 2]}


def test_confirm_top_zero_skips_the_stage(tmp_path):
    path = study_file(tmp_path, "none", sampler="random", trials=4, confirm={"top": 0})
    study = run_study(load_study(path), trainer=Toy())
    assert len(study.trials) == 4 and not confirmed(study)


class StopsAt(Toy):
    """Toy, stopped by a preemption signal at one (module, seed): the trial fails KILLED, the run raises."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def __call__(self, cfg, **kw):
        if (cfg.model.attention.name, cfg.train.seed) == self.at:
            raise Preempted("preempted (SIGTERM)")
        return super().__call__(cfg, **kw)


def test_a_stopped_confirmation_queues_only_what_is_missing_on_the_next_run(tmp_path):
    path = study_file(tmp_path, "stop", sampler="random", trials=6, confirm={"top": 1, "seeds": 2})
    stopping = StopsAt(("none", 2))  # the baseline's second fresh seed
    with pytest.raises(KeyboardInterrupt):
        run_study(load_study(path), trainer=stopping)
    before = confirmed(optuna_study(path))
    assert before["attention=none"] == [1]
    toy = Toy()
    study = run_study(load_study(path), trainer=toy)
    after = confirmed(study)
    assert after == {label: [1, 2] for label in after} and len(after) == 2
    missing = [(label, seed) for label, seeds in after.items() for seed in seeds if seed not in before.get(label, [])]
    assert len(toy.trained) == len(missing) and ("none", 2) in toy.trained  # each missing run once, nothing else


def optuna_study(path):
    spec = load_study(path)
    return optuna.load_study(study_name=spec.name, storage=make_storage(None, 1))


def test_several_workers_confirm_each_cell_and_seed_once(tmp_path):
    path = study_file(tmp_path, "jobs", sampler="random", trials=4, confirm={"top": 1, "seeds": 2})
    study = run_study(load_study(path), jobs=2, trainer=Toy())
    search = [t for t in study.trials if Attr.LABEL in t.user_attrs and Attr.STAGE not in t.user_attrs]
    assert len(search) == 4
    runs = [(t.user_attrs[Attr.LABEL], t.user_attrs[Attr.SEED]) for t in study.trials
            if t.user_attrs.get(Attr.STAGE) == "confirm"]
    assert sorted(runs) == sorted(set(runs)) and confirmed(study) == {label: [1, 2] for label, _ in runs}
    assert len({label for label, _ in runs}) == 2


def test_a_trial_sampled_past_the_budget_gets_no_configuration(tmp_path):
    """The race two workers run for the search's last trial, forced: the later one is pruned with no row."""
    path = study_file(tmp_path, "budget", sampler="random", trials=2, confirm={"top": 0})
    plan = StudyPlan(load_study(path))
    study = run_study(plan, trainer=Toy())
    parent = study.user_attrs[Attr.PARENT_RUN]
    study.optimize(make_objective(plan, lambda cell: parent, Toy()), n_trials=1)
    late = study.trials[-1]
    assert late.state == TrialState.PRUNED and Attr.LABEL not in late.user_attrs
    assert late.user_attrs[Attr.FAIL_REASON] == "no search trial left"


# ---------------------------------------------------------------- what a pruner may stop

class Records(Toy):
    """Toy, recording whether each trial was handed a pruning callback allowed to prune it."""

    def __init__(self):
        super().__init__()
        self.prunable = {}  # trial number -> may the pruner stop it

    def __call__(self, cfg, *, callbacks=(), tags=None, **kw):
        self.prunable[int(tags[Tag.TRIAL])] = any(getattr(c, "prune", False) for c in callbacks)
        return super().__call__(cfg, tags=tags, **kw)


def test_only_a_searchs_sampled_trials_may_be_pruned(tmp_path):
    toy = Records()
    path = study_file(tmp_path, "prune", sampler="random", pruner="median", trials=6, seeds={"min": 2, "max": 3},
                      confirm={"top": 1, "seeds": 2})
    study = run_study(load_study(path), trainer=toy)
    kinds = {"sampled": set(), "repeat": set(), "confirm": set()}
    for t in study.trials:
        if t.number in toy.prunable:
            kind = "confirm" if Attr.STAGE in t.user_attrs else "sampled" if "fixed_params" not in t.system_attrs \
                else "repeat"
            kinds[kind].add(toy.prunable[t.number])
    assert kinds == {"sampled": {True}, "repeat": {False}, "confirm": {False}}

    grid = Records()
    run_study(load_study(study_file(tmp_path, "grid", seeds=[0, 1])), trainer=grid)
    assert set(grid.prunable.values()) == {False}


def test_a_resumed_trial_is_pruned_only_if_the_trial_it_resumes_was_sampled():
    study = optuna.create_study()
    first = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(first, state=TrialState.FAIL)
    study.enqueue_trial(first.params, user_attrs={Attr.SEED: 0, Attr.RETRY_OF: first.number})
    assert sampled(study.ask()) and sampled(first)
    study.enqueue_trial({}, user_attrs=configuration(Cell("{}", {}), 1))
    repeat = study.ask()
    assert not sampled(repeat)
    study.tell(repeat, state=TrialState.FAIL)
    study.enqueue_trial({}, user_attrs={Attr.SEED: 1, Attr.RETRY_OF: repeat.number})
    assert not sampled(study.ask())


# ---------------------------------------------------------------- every seed accounted for

def test_failures_read_by_kind():
    assert failure_kind("DivergedError: train/loss is nan at epoch 2, step 40") == DIVERGED
    assert failure_kind("preempted (SIGUSR1)") == STOPPED and failure_kind("KeyboardInterrupt: interrupted") == STOPPED
    for reason in ("OutOfMemoryError: CUDA out of memory", "the worker died during this trial (killed?)", None):
        assert failure_kind(reason) == CRASHED


def test_a_stopped_seed_is_never_settled_a_crashed_one_after_two_tries(tmp_path):
    plan = StudyPlan(load_study(study_file(tmp_path, "rule", seeds=[0, 1])))

    def failed(reason, seed):
        attrs = {Attr.CELL: "{}", Attr.PARAMS: {}, Attr.SEED: seed, Attr.FAIL_REASON: reason}
        return optuna.trial.create_trial(state=TrialState.FAIL, user_attrs=attrs)

    stops = [failed("preempted (SIGTERM)", 0)] * 5
    assert settled(stops, plan) == set()
    assert settled([failed("RuntimeError: boom", 1)], plan) == set()
    assert settled([failed("RuntimeError: boom", 1)] * MAX_ATTEMPTS, plan) == {("{}", 1)}
    assert settled([failed("DivergedError: train/loss is nan", 1)], plan) == {("{}", 1)}


class Fails(Toy):
    """Toy whose se trials fail: seed 0 crashes (out of memory), seed 1 diverges; every time."""

    def __call__(self, cfg, **kw):
        module, seed = cfg.model.attention.name, cfg.train.seed
        if module == "se":
            self.trained.append((module, seed))
            raise DivergedError("train/loss is nan at epoch 0, step 1") if seed else RuntimeError(
                "CUDA out of memory")
        return super().__call__(cfg, **kw)


def test_a_diverged_seed_is_an_outcome_and_a_crashed_one_is_tried_once_more(tmp_path):
    path = study_file(tmp_path, "fails", seeds=[0, 1], space={"model.attention.name": ["none", "se"]})
    runs = []
    for _ in range(3):
        toy = Fails()
        study = run_study(load_study(path), trainer=toy)
        runs.append(sorted(toy.trained))
    assert runs[0] == [("none", 0), ("none", 1), ("se", 0), ("se", 1)]
    assert runs[1] == [("se", 0)]  # the crash, once more; the divergence is its seed's outcome
    assert runs[2] == []  # tried twice: left failed
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert sorted(t.user_attrs[Attr.FAIL_REASON].split(":")[0] for t in failed) == [
        "DivergedError", "RuntimeError", "RuntimeError"]


def test_a_trials_per_image_correctness_is_kept(tmp_path):
    class Correct(Toy):
        def __call__(self, cfg, **kw):
            result = super().__call__(cfg, **kw)
            result.correct = "a5"  # train.TrialResult.correct: correct.pack_correct's hex
            return result

    study = run_study(load_study(study_file(tmp_path, "correct", space={"model.attention.name": ["none"]})),
                      trainer=Correct())
    assert [t.user_attrs[Attr.CORRECT] for t in study.trials] == ["a5"]
    plain = run_study(load_study(study_file(tmp_path, "plain", space={"model.attention.name": ["se"]})), trainer=Toy())
    assert Attr.CORRECT not in plain.trials[0].user_attrs
