"""Launchers: a study's workers as one submitit job array, on Slurm (`--launcher slurm`) or as local processes
(`--launcher local`, submitit's local executor: the same tasks, for trying a launch out on one machine).

No scheduler of our own: Optuna's storage stays the one coordination plane. Every task runs what `ablate run`
runs (study.run_study: the setup under the study's lock, then a worker that claims trials until none is left),
so tasks may start late, die or be requeued in any order and every cell x seed still runs once. Slurm's warning
before the time limit (`--signal=USR1@<launcher.signal_before_end_s>`) or a preemption notice stops the task's
trial after its current batch with its checkpoint written (checkpoint.py); the task then hands over to
submitit's checkpoint hook, which requeues it (`scontrol requeue`), and the requeued task's trial resumes from
that checkpoint. The arrays a study was given are recorded on the study, so that `ablate status` can show them.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

# submitit's preemption signal is read when submitit is imported (here and in each task): ours is USR1, the
# signal interrupt.py stops a trial on and docs/faults.md's sbatch lines use (submitit's own default is USR2)
os.environ["SUBMITIT_PREEMPT_SIGNAL"] = "USR1"

import optuna  # noqa: E402
import submitit  # noqa: E402
import torch  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from ablate import tracking  # noqa: E402
from ablate.config import LauncherConfig, slurm_minutes  # noqa: E402
from ablate.errors import AblateError, Preempted, one_line  # noqa: E402
from ablate.spec import StudySpec, cell_label  # noqa: E402
from ablate.storage import JOURNAL, Attr, journal_file, make_storage  # noqa: E402
from ablate.study import TASK_ENV, prepare_study, run_study  # noqa: E402
from ablate.summary import TrialCounts  # noqa: E402

__all__ = ["LAUNCHERS", "StudyTask", "check_arguments", "launch", "wait", "task_states", "status_text"]

POLL_S = 5  # seconds between looks at the tasks while `ablate run --launcher` waits for them


# ---------------------------------------------------------------- what runs in a task

class StudyTask(submitit.helpers.Checkpointable):
    """One array task: a study worker. Picklable; submitit runs it in the task (`python -m submitit.core._submit`).

    `checkpoint()` (submitit's hook, inherited) resubmits the same task; our trial checkpoint is already on disk
    by the time it is called."""

    def __init__(self, spec: StudySpec, storage_url: str | None, launcher: str, cpus: int,
                 devices: list[str] | None = None):
        self.spec, self.storage_url, self.launcher, self.cpus, self.devices = spec, storage_url, launcher, cpus, devices

    def __call__(self, worker: int) -> None:
        env = submitit.JobEnvironment()
        os.environ[TASK_ENV] = f"{self.launcher} {env.job_id}"
        if self.devices:  # local tasks share the machine's GPUs one each, as --jobs N does; Slurm sets its own
            os.environ["CUDA_VISIBLE_DEVICES"] = self.devices[worker % len(self.devices)]
        # the task's cores, not the machine's: oversubscribed OpenMP threads spin-wait (10x slower steps measured)
        torch.set_num_threads(self.cpus)
        try:
            run_study(self.spec, storage_url=self.storage_url)
        except Preempted as e:
            if e.signum == signal.SIGUSR1:  # the scheduler's warning: submitit's handler requeues the task and exits
                signal.raise_signal(signal.SIGUSR1)
            raise  # SIGTERM: the scheduler ends (or requeues) the task itself


# ---------------------------------------------------------------- submitting

@dataclass
class Launch:
    launcher: str
    job: str  # Slurm's array job id; for local tasks, the first task's id
    tasks: list[str]
    folder: Path
    jobs: list[submitit.Job]  # local tasks are our children: their states come from here (an ended one is a zombie)


def local_executor(cfg: LauncherConfig, folder: Path, name: str = "study") -> submitit.Executor:
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=slurm_minutes(cfg.time), signal_delay_s=cfg.signal_before_end_s,
                               tasks_per_node=1, nodes=1, setup=cfg.setup)
    return executor


def slurm_executor(cfg: LauncherConfig, folder: Path, name: str = "study") -> submitit.Executor:
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=cfg.max_requeues)
    executor.update_parameters(**_slurm_options(cfg, name))
    return executor


def _slurm_options(cfg: LauncherConfig, name: str) -> dict:
    """submitit's SlurmExecutor parameters for the launcher section (None values are left out of the script)."""
    extra = dict(line.removeprefix("--").partition("=")[::2] for line in cfg.sbatch)
    options = dict(job_name=f"ablate-{name}", partition=cfg.partition, account=cfg.account, nodes=1,
                   ntasks_per_node=1, cpus_per_task=cfg.cpus_per_task, gpus_per_task=cfg.gpus_per_task or None,
                   mem=cfg.mem, time=slurm_minutes(cfg.time), signal_delay_s=cfg.signal_before_end_s,
                   setup=["export SUBMITIT_PREEMPT_SIGNAL=USR1", *cfg.setup],
                   additional_parameters={"requeue": True, **{k: v or True for k, v in extra.items()}})
    return {k: v for k, v in options.items() if v is not None}


def _check_slurm(cfg: LauncherConfig, name: str) -> None:
    """What sbatch would refuse (no Slurm here, an unknown partition or account), found before anything is
    written: `sbatch --test-only` validates the same options without submitting."""
    if shutil.which("sbatch") is None:
        raise AblateError("--launcher slurm: no `sbatch` on PATH (run it on a Slurm login node, or use "
                          "--launcher local)")
    o = _slurm_options(cfg, name)
    args = [f"--{k.replace('_', '-')}={v}" for k, v in o.items()
            if k not in ("setup", "additional_parameters", "signal_delay_s")]
    args += [f"--{k}" if v is True else f"--{k}={v}" for k, v in o["additional_parameters"].items()]
    done = subprocess.run(["sbatch", "--test-only", *args, "--wrap", "true"], capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0:
        message = one_line(done.stderr or done.stdout).removeprefix("sbatch: error: ")
        raise AblateError(f"launcher: sbatch refuses the options ({' '.join(args)}): {message}")


def launch(spec: StudySpec, kind: str, *, workers: int | None = None, storage_url: str | None = None,
           force_new: bool = False) -> Launch:
    """Check, set the study up once (so bad input fails here, not in N tasks), and submit its worker array."""
    cfg = spec.cfg.launcher
    workers = workers or cfg.workers
    if kind == "slurm":
        if journal_file(storage_url) is not None:  # a journal's dead-worker check only knows its own machine
            raise AblateError("--launcher slurm: the tasks run on several machines and share the study through a "
                              "database: pass --storage postgresql://... (a journal file is for one machine)")
        _check_slurm(cfg, spec.name)
    study = prepare_study(spec, storage_url=storage_url, force_new=force_new).study
    folder = Path(cfg.folder).expanduser().resolve() if cfg.folder else (
        tracking.home(spec.base.get("tracking", {}).get("uri")) / "launches" / spec.name)
    devices = None
    if kind == "local" and torch.cuda.device_count() > 1:
        devices = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(torch.cuda.device_count()))))
        devices = devices.split(",")
    task = StudyTask(spec, storage_url, kind, cfg.cpus_per_task if kind == "slurm" else
                     max(1, (os.cpu_count() or 1) // workers), devices)
    try:
        jobs = LAUNCHERS[kind](cfg, folder, spec.name).map_array(task, range(workers))
    except (subprocess.CalledProcessError, OSError, submitit.core.utils.FailedJobError) as e:
        detail = getattr(e, "output", None) or e
        raise AblateError(f"--launcher {kind}: could not submit the workers: {one_line(detail, 300)}") from None
    ids = [j.job_id for j in jobs]
    done = Launch(kind, ids[0].split("_")[0], ids, folder, jobs)
    record = {"launcher": kind, "job": done.job, "tasks": ids, "folder": str(folder),
              "submitted": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    study.set_user_attr(Attr.LAUNCHES, study.user_attrs.get(Attr.LAUNCHES, []) + [record])
    return done


LAUNCHERS = {"local": local_executor, "slurm": slurm_executor}  # --launcher -> its submitit executor


def check_arguments(launcher: str | None, jobs: int, workers: int | None, cfg: LauncherConfig,
                    cores: int) -> str | None:
    """`ablate run`'s --launcher, --jobs and --workers against each other, the study's launcher section `cfg` and
    this machine's `cores`; the launcher to use (--launcher, else the section's), or None to run here."""
    if jobs > cores:  # each worker is a torch process with its own threads: more than the cores only thrash
        raise AblateError(f"--jobs: {jobs} workers on {cores} CPU cores; at most {cores} on this machine "
                          "(more machines: --launcher slurm)")
    launcher = launcher or cfg.name
    if launcher is not None and launcher not in LAUNCHERS:
        raise AblateError(f"--launcher: {launcher!r} is not a launcher (allowed: {', '.join(LAUNCHERS)})")
    if workers is not None and launcher is None:
        raise AblateError("--workers: only with --launcher slurm|local (on this machine: --jobs N)")
    if launcher is not None and jobs != 1:
        raise AblateError("--jobs: not with --launcher (each task is one worker: use --workers N)")
    if launcher == "local" and (workers or cfg.workers) > cores:  # the same cores as --jobs
        raise AblateError(f"--workers (launcher.workers): {workers or cfg.workers} local tasks on "
                          f"{cores} CPU cores; at most {cores} on this machine")
    return launcher


# ---------------------------------------------------------------- watching

def task_states(record: dict) -> list[tuple[str, str, str]]:
    """(task, state, where) for each task of a recorded launch: squeue for Slurm (a task it no longer lists has
    ended), the controller process for local tasks."""
    if record["launcher"] == "slurm":
        if shutil.which("squeue") is None:
            return [(t, "unknown (no squeue here)", "") for t in record["tasks"]]
        out = subprocess.run(["squeue", "-h", "-r", "-j", record["job"], "-o", "%i|%T|%M|%N|%r"],
                             capture_output=True, text=True, timeout=30).stdout
        listed = {}
        for line in out.splitlines():
            task, state, elapsed, node, reason = (line.split("|") + [""] * 5)[:5]
            listed[task] = (state, f"{elapsed} on {node}" if node else f"({reason})")
        return [(t, *listed.get(t, ("ENDED", ""))) for t in record["tasks"]]
    states = []
    for t in record["tasks"]:
        try:
            os.kill(int(t), 0)
            states.append((t, "RUNNING", "this machine"))
        except (ProcessLookupError, ValueError):
            states.append((t, "ENDED", ""))
        except PermissionError:
            states.append((t, "RUNNING", "this machine"))
    return states


def wait(spec: StudySpec, launched: Launch, storage_url: str | None) -> None:
    """Block until every task has ended, printing a line whenever the study's counts or the tasks' states change.
    Ctrl-C stops waiting; Slurm tasks keep running (local ones get the Ctrl-C too and checkpoint)."""
    record = {"launcher": launched.launcher, "job": launched.job, "tasks": launched.tasks}
    study = optuna.load_study(study_name=spec.name, storage=make_storage(storage_url, 1))
    last = None
    while True:
        if launched.launcher == "local":
            states = [(j.job_id, "ENDED" if j.done() else "RUNNING", "") for j in launched.jobs]
        else:
            states = task_states(record)
        line = f"[{spec.name}] {counts_text(study)} | tasks: " + ", ".join(
            f"{n} {s.lower()}" for s, n in _tally(s for _, s, _ in states).items())
        if line != last:
            print(line, flush=True)
            last = line
        if all(s == "ENDED" for _, s, _ in states):
            return
        time.sleep(POLL_S)


def _tally(states) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in states:
        out[s] = out.get(s, 0) + 1
    return out


def counts_text(study: optuna.Study) -> str:
    """The trials with a configuration as summary.TrialCounts counts them, and the trials queued."""
    n = TrialCounts.of([t for t in study.get_trials(deepcopy=False) if Attr.LABEL in t.user_attrs])
    refused = f", {n.refused} refused" if n.refused else ""
    return (f"{n.complete} complete, {n.pruned} pruned, {n.failed} failed, {n.stopped} stopped, {n.running} running, "
            f"{len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))} waiting{refused}")


def status_text(study: optuna.Study, tracking_uri: str | None, storage_url: str | None) -> str:
    """`ablate status`: the study's counts, each launched array's tasks, and the running trials with their epoch."""
    where = tracking.mask_secrets(storage_url or JOURNAL)
    lines = [f"study {study.study_name} ({where}): {counts_text(study)}"]
    for record in study.user_attrs.get(Attr.LAUNCHES, []):
        lines.append(f"{record['launcher']} job {record['job']}: {len(record['tasks'])} tasks, submitted "
                     f"{record['submitted']}, logs in {record['folder']}")
        lines += [f"  {task:<14} {state:<10} {where}".rstrip() for task, state, where in task_states(record)]
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if running:
        lines.append("running trials:")
        epochs = _epochs(study, tracking_uri)
        for t in running:
            done, total = epochs.get(t.number, (None, None))
            at = f"epoch {done}/{total}" if total else "starting"
            where = t.user_attrs.get(Attr.TASK) or t.user_attrs.get(Attr.WORKER, "")
            resumed = t.user_attrs.get(Attr.RESUMED)
            note = f" (resumed at epoch {resumed['epoch']})" if resumed else ""
            lines.append(f"  trial {t.number:<4} {t.user_attrs.get(Attr.LABEL, cell_label(t.params)):<28} "
                         f"seed {t.user_attrs.get(Attr.SEED, '?')}  {at}{note}  {where}")
    return "\n".join(lines)


def _epochs(study: optuna.Study, tracking_uri: str | None) -> dict[int, tuple[int, int]]:
    """Running trial number -> (epochs finished, epochs in all), from their MLflow runs."""
    if not study.user_attrs.get(Attr.PARENT_RUN):
        return {}
    client = tracking.make_client(tracking_uri)
    found = client.get_experiment_by_name(study.study_name)
    if found is None:
        return {}
    query = f"attributes.status = 'RUNNING' and tags.`{tracking.Tag.STUDY}` = '{study.study_name}'"
    out = {}
    for run in client.search_runs([found.experiment_id], query):
        number = run.data.tags.get(tracking.Tag.TRIAL)
        if number is None or not number.isdigit():
            continue
        finished = len(client.get_metric_history(run.info.run_id, "train/loss"))
        out[int(number)] = (finished, int(run.data.params.get("train.epochs", 0)))
    return out

