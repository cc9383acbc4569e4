"""The study runner: a StudySpec -> an Optuna study whose trials are tracked Lightning runs.

Grid studies enqueue every cell x seed that has no live trial as a WAITING Optuna trial carrying its cell key,
params and seed (user attrs, not suggested params: an edited grid must not meet Optuna's fixed categorical
value spaces); workers claim them through Optuna's atomic trial queue, so `--jobs N` never runs a cell twice.
Running a study again resumes it: trials left RUNNING by a dead process are failed (their MLflow runs too),
and every cell x seed of the file as it reads now without a COMPLETE, PRUNED, RUNNING or WAITING trial is
queued, except where its failure is its outcome (a diverged trial; a crash tried twice: queue.py). Several
`ablate run` processes may share a study: setup is serialised by a lock, and on PostgreSQL heartbeats let a live
worker fail and retry a dead machine's trial.

Pruning is a search device, never an estimator: a grid refuses a pruner, and in a search only sampled trials are
pruned. A searched study ends by confirming its top configurations and its baseline, named in advance, on fresh
seeds trained to the end (confirmation.py): the runs the table reads, apart from those that chose them.

Trials are durable (checkpoint.py): the trial that runs a cell x seed again after its predecessor died or was
preempted continues from that one's checkpoint (recorded in its `resumed` attr), and a searched study queues a
stopped trial's params and seed again so that it is resumed too. SIGTERM and SIGUSR1 stop a study like Ctrl-C
does, after the running trial's checkpoint is written, and end it with `Preempted`.

The rooms, in the order a study meets them: optuna_setup (samplers, pruners, the guards), runner (checks, setup,
the run), queue (recovery, the grid queue, the failure rule, seeds on demand), confirmation (a search's last stage),
workers (the trial loop), objective (a trial: plan -> run -> record), trials (which trials are a search's, which
are confirmation runs), configurations (the parent and configuration runs, from results.compare_rows).
"""
from ablate.study.objective import TASK_ENV, PruningCallback, make_objective
from ablate.study.optuna_setup import PRUNERS, SAMPLERS, open_study, validations_per_epoch
from ablate.study.runner import prepare_study, run_study
from ablate.study.workers import FailureStreak, WorkerDied

__all__ = ["TASK_ENV", "PRUNERS", "SAMPLERS", "FailureStreak", "PruningCallback", "WorkerDied", "make_objective",
           "open_study", "prepare_study", "run_study", "validations_per_epoch"]
