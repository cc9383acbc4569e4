"""Soak with faults: grids of short trials run by several `ablate run` workers on PostgreSQL and an `ablate server`,
for a bounded time, while faults arrive at random moments; then what was lost, doubled or left behind.

    python benchmarks/soak.py --minutes 10 --workers 3      # as root: it mounts a tmpfs for the checkpoints
    python benchmarks/soak.py --minutes 1 --workers 2 --fault-every 10   # the short setting CI runs

Faults (--faults, each at a random moment, exponential gaps of mean --fault-every seconds, kinds in shuffled
turns): `sigkill` and `sigterm` of a random worker; `db`, PostgreSQL stopped (fast: sessions cut off), down
--db-down seconds, started again (.ci/postgres restart); `tracking`, the MLflow server's process group killed and
started again --tracking-down seconds later; `disk`, the checkpoint folder (a tmpfs of --disk-mb) filled to the
last byte for --disk-full seconds. A scheduler's part is played too: a worker that exits other than 0 is started
again with the same command 3 s later, and a grid whose workers all ended with cells not done is run again with the
same command (what the README says to do after a crash). Rounds: one grid after another while time is left; the
last one runs to its end without faults.

PostgreSQL: $ABLATE_TEST_POSTGRES and $ABLATE_TEST_POSTGRES_DIR (.ci/run's server), else a server of its own
(.ci/postgres start, as root). Everything else lives in a temporary folder (--keep DIR keeps it).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PG = ROOT / ".ci" / "postgres"
KINDS = ("sigkill", "sigterm", "db", "tracking", "disk")
MODULES = ["none", "se", "eca"]
# what must stay 0 whatever the faults
ZEROS = ("cells run more than once", "cells lost", "trials left RUNNING or WAITING", "runs left RUNNING",
         "metric histories with a gap or a duplicate")
PER_EPOCH = ("train/loss", "val/loss", "val/acc1")  # logged once per epoch by every trial


def server_command(backend: str, artifacts: Path, port: int) -> list[str]:
    """The MLflow tracking server the workers log to, signing users in as on a shared cluster: its admin is the
    soak's MLFLOW_TRACKING_USERNAME / _PASSWORD (main sets them), its users' database beside the artifacts."""
    return [sys.executable, "-m", "ablate.cli", "server", "--backend-store-uri", backend, "--artifacts",
            str(artifacts), "--auth-db", f"sqlite:///{artifacts.parent / 'basic_auth.db'}", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1"]  # 1: no supervisor to kill a child that answers its health
    # pings late on a loaded machine


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Soak:
    def __init__(self, args, folder: Path, pg_url: str, pg_dir: str):
        self.args, self.folder, self.pg_dir = args, folder, pg_dir
        self.rng = random.Random(args.seed)
        self.optuna_url, self.mlflow_url = create_database(pg_url), create_database(pg_url)
        self.port, self.ckpt = free_port(), folder / "checkpoints"
        self.faults, self.exits, self.reruns, self.launches = Counter(), Counter(), 0, 0
        self.lock = threading.Lock()
        self.busy: set[str] = set()  # outages still in progress: a kind is not injected twice at once
        self.workers: list[subprocess.Popen | None] = [None] * args.workers
        self.server = None
        self.grid_over = threading.Event()  # ends the injector's wait between faults
        self.end: float | None = None  # when faults stop: --minutes after the first trial started
        self.studies: list[str] = []
        (folder / "logs").mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- the processes a scheduler keeps running

    def start_server(self) -> None:
        with open(self.folder / "logs" / "server.log", "a") as log:
            self.server = subprocess.Popen(server_command(self.mlflow_url, self.folder / "artifacts", self.port),
                                           env=env(), stdout=log, stderr=log, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health",
                                                                      timeout=2):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the MLflow server did not start: {self.folder / 'logs' / 'server.log'}")

    def stop_server(self) -> None:
        """The tracking server gone: SIGTERM, on which `ablate server` ends MLflow's whole process tree (MLflow runs in
        a session of its own, which a kill of this process's group would leave serving after the soak)."""
        if self.server is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.server.send_signal(signal.SIGTERM)
        try:
            self.server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait()

    def launch(self, slot: int, study: Path) -> None:
        self.launches += 1
        if self.launches > 100 * self.args.workers:  # a worker that can never start is a bug, not a fault
            raise RuntimeError(f"{self.launches} worker launches: see {self.folder / 'logs'}")
        with open(self.folder / "logs" / f"worker{slot}.log", "a") as log:
            self.workers[slot] = subprocess.Popen(
                [sys.executable, "-m", "ablate.cli", "run", str(study), "--storage", self.optuna_url,
                 "--tracking-uri", f"http://127.0.0.1:{self.port}"], cwd=self.folder, env=env(), stdout=log,
                stderr=subprocess.STDOUT)

    def run_grid(self, study: Path) -> None:
        """The grid to its end: workers started again when they die, the whole grid again when cells are left."""
        self.grid_over.clear()
        injector = threading.Thread(target=self.inject, daemon=True)
        injector.start()
        for slot in range(self.args.workers):
            self.launch(slot, study)
        restart_at: dict[int, float] = {}
        while True:
            time.sleep(0.5)
            for slot, proc in enumerate(self.workers):
                if proc is not None and proc.poll() is not None:
                    self.exits[proc.returncode] += 1
                    self.workers[slot] = None
                    if proc.returncode != 0:  # killed, preempted, or refused to start during an outage
                        restart_at[slot] = time.time() + 3
                if self.workers[slot] is None and slot in restart_at and time.time() >= restart_at[slot]:
                    del restart_at[slot]
                    self.launch(slot, study)
            if all(p is None for p in self.workers) and not restart_at:
                self.wait_outages()  # the database answers again before it is asked what is left
                if self.cells_left(study.stem) and self.reruns < 20:
                    self.reruns += 1  # what a user does after a crash: the same command again
                    for slot in range(self.args.workers):
                        self.launch(slot, study)
                    continue
                break
        self.grid_over.set()
        injector.join()

    # ---------------------------------------------------------------- faults

    def inject(self) -> None:
        if self.end is None:  # the faults' time starts with the first trial (workers take a while to start)
            while not self.trial_running():
                if self.grid_over.wait(1):
                    return
            self.end = time.time() + self.args.minutes * 60
        turn: list[str] = []
        while True:
            if self.grid_over.wait(self.rng.expovariate(1 / self.args.fault_every)) or time.time() >= self.end:
                return
            if not turn:
                turn = self.rng.sample(self.args.faults, len(self.args.faults))
            kind = turn.pop()
            with self.lock:
                if kind in self.busy:
                    continue
            if kind in ("sigkill", "sigterm"):
                live = [p for p in self.workers if p is not None and p.poll() is None]
                if not live:
                    continue
                self.rng.choice(live).send_signal(signal.SIGKILL if kind == "sigkill" else signal.SIGTERM)
                self.faults[kind] += 1
            else:
                with self.lock:
                    self.busy.add(kind)
                self.faults[kind] += 1
                threading.Thread(target=self.outage, args=(kind,), daemon=True).start()

    def outage(self, kind: str) -> None:
        try:
            if kind == "db":
                subprocess.run(["bash", str(PG), "restart", self.pg_dir, str(self.args.db_down)], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            elif kind == "tracking":
                self.stop_server()
                time.sleep(self.args.tracking_down)
                self.start_server()
            elif kind == "disk":
                filler = self.ckpt / "filler"
                with open(filler, "wb", buffering=0) as f:  # every free block taken: a checkpoint save meets ENOSPC
                    with contextlib.suppress(OSError):
                        os.posix_fallocate(f.fileno(), 0, shutil.disk_usage(self.ckpt).free)
                    with contextlib.suppress(OSError):
                        while True:
                            f.write(b"\0" * 4096)
                time.sleep(self.args.disk_full)
                filler.unlink()
        finally:
            with self.lock:
                self.busy.discard(kind)

    def wait_outages(self) -> None:
        while True:
            with self.lock:
                if not self.busy:
                    return
            time.sleep(0.5)

    # ---------------------------------------------------------------- the study files and the checks

    def write_study(self, n: int) -> Path:
        name = f"soak{n}"
        a = self.args
        doc = {"study": {"name": name, "seeds": list(range(a.seeds)), "heartbeat_interval": 2,
                         "grace_period": a.grace, "db_outage_s": 180, "price_steps": False},
               "base": {"model": {"backbone": "resnet10_narrow"},
                        "data": {"name": "synthetic", "image_size": 16, "batch_size": 16, "train_size": 64,
                                 "val_size": 16},
                        "train": {"epochs": a.epochs, "progress_bar": False, "checkpoint_dir": str(self.ckpt)}},
               "space": {"model.attention.name": MODULES}}
        path = self.folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        self.studies.append(name)
        return path

    def trial_running(self) -> bool:
        import psycopg
        from sqlalchemy.engine import make_url

        url = make_url(self.optuna_url).set(drivername="postgresql").render_as_string(hide_password=False)
        with contextlib.suppress(psycopg.Error), psycopg.connect(url, connect_timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0] > 0
        return False

    def cells_left(self, name: str) -> bool:
        import optuna
        from optuna.trial import TrialState

        with contextlib.suppress(KeyError):
            study = optuna.load_study(study_name=name, storage=self.optuna_url)
            done = {(t.user_attrs.get("label"), t.user_attrs.get("seed"))
                    for t in study.get_trials(states=(TrialState.COMPLETE,))}
            return len(done) < len(MODULES) * self.args.seeds
        return True

    def check(self) -> dict:
        import mlflow
        import optuna
        from optuna.trial import TrialState

        client = mlflow.MlflowClient(f"http://127.0.0.1:{self.port}")
        out = Counter()
        for name in self.studies:
            study = optuna.load_study(study_name=name, storage=self.optuna_url)
            trials = study.get_trials()
            complete = Counter((t.user_attrs.get("label"), t.user_attrs.get("seed"))
                               for t in trials if t.state == TrialState.COMPLETE)
            out["trials finished"] += sum(complete.values())
            out["trials failed or stopped by a fault (then resumed)"] += sum(
                t.state == TrialState.FAIL for t in trials)
            out["cells run more than once"] += sum(n > 1 for n in complete.values())
            out["cells lost"] += len(MODULES) * self.args.seeds - len(complete)
            out["trials left RUNNING or WAITING"] += sum(t.state in (TrialState.RUNNING, TrialState.WAITING)
                                                         for t in trials)
            experiment = client.get_experiment_by_name(name)
            runs = client.search_runs([experiment.experiment_id], max_results=10000)
            out["runs left RUNNING"] += sum(r.info.status == "RUNNING" for r in runs)
            ids = {t.user_attrs["mlflow_run_id"] for t in trials if t.state == TrialState.COMPLETE}
            for run in runs:
                if run.data.tags.get("ablate.role") != "trial":
                    continue
                steps = {m: [x.step for x in client.get_metric_history(run.info.run_id, m)] for m in PER_EPOCH}
                copied = int(run.data.tags.get("ablate.resumed_at_epoch", 0))
                out["epochs trained"] += len(steps["val/acc1"]) - copied  # the earlier run's epochs are copies
                if run.info.run_id in ids:
                    out["metric histories with a gap or a duplicate"] += sum(
                        sorted(s) != list(range(self.args.epochs)) for s in steps.values())
        out["epochs needed"] = len(self.studies) * len(MODULES) * self.args.seeds * self.args.epochs
        return out


def create_database(admin_url: str) -> str:
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(admin_url)
    name = f"soak_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin.set(drivername="postgresql").render_as_string(hide_password=False),
                         autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin.set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(url)
    with contextlib.suppress(psycopg.Error), psycopg.connect(
            url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False),
            autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')


def mount_tmpfs(folder: Path, mb: int) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def soak(args, folder: Path, pg_url: str, pg_dir: str) -> Soak:
    s = Soak(args, folder, pg_url, pg_dir)
    disk = mount_tmpfs(s.ckpt, args.disk_mb)
    if not disk and "disk" in args.faults:
        print("disk fault skipped: mounting a tmpfs needs root", file=sys.stderr)
        args.faults = [k for k in args.faults if k != "disk"]
    start = time.time()
    try:
        s.start_server()
        n = 0
        while n == 0 or (s.end is not None and time.time() < s.end):
            s.run_grid(s.write_study(n))
            n += 1
        s.wait_outages()
        result = s.check()
    finally:
        for p in s.workers:
            if p is not None and p.poll() is None:
                p.kill()
        s.stop_server()
        if disk:
            subprocess.run(["umount", "-l", str(s.ckpt)], capture_output=True)
        drop_database(s.optuna_url)
        drop_database(s.mlflow_url)
    result["wall s"] = round(time.time() - start)
    s.result = result
    return s


def print_table(s: Soak) -> None:
    r, faults = s.result, sum(s.faults.values())
    rerun = r["epochs trained"] - r["epochs needed"]
    rows = [("wall s", r["wall s"]), ("grids (studies) run", len(s.studies)), ("trials finished", r["trials finished"])]
    rows += [(f"faults injected: {k}", s.faults[k]) for k in KINDS if k in s.args.faults]
    rows += [("worker exits by code", ", ".join(f"{c}: {n}" for c, n in sorted(s.exits.items()))),
             ("grids run again after a crash", s.reruns)]
    rows += [(k, r[k]) for k in ("trials failed or stopped by a fault (then resumed)", *ZEROS)]
    rows += [("epochs trained / needed", f"{r['epochs trained']} / {r['epochs needed']}"),
             ("epochs re-run per fault", f"{rerun / max(faults, 1):.2f}")]
    print("| soak | value |\n| --- | ---: |")
    for name, value in rows:
        print(f"| {name} | {value} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10, help="how long faults are injected (default 10)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--faults", default=",".join(KINDS), help=f"kinds to inject (default {','.join(KINDS)})")
    parser.add_argument("--fault-every", type=float, default=30, help="mean seconds between faults (default 30)")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per grid of 3 modules (default 4)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--grace", type=int, default=30, help="study.grace_period: a SIGKILLed trial's wait")
    parser.add_argument("--db-down", type=float, default=8, help="seconds PostgreSQL stays down (default 8)")
    parser.add_argument("--tracking-down", type=float, default=15, help="seconds the MLflow server stays down")
    parser.add_argument("--disk-full", type=float, default=10, help="seconds the checkpoint folder stays full")
    parser.add_argument("--disk-mb", type=int, default=128, help="size of the checkpoint tmpfs (default 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the soak's folder (logs, study files) here")
    args = parser.parse_args(argv)
    args.faults = [k for k in args.faults.split(",") if k]
    unknown = set(args.faults) - set(KINDS)
    if unknown:
        parser.error(f"--faults: unknown {', '.join(sorted(unknown))}; allowed: {', '.join(KINDS)}")
    # the server's admin and every worker's (and this process's client's) credentials, as a cluster's users pass them
    os.environ.setdefault("MLFLOW_TRACKING_USERNAME", "soak")
    os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", secrets.token_urlsafe(18))
    pg_url, pg_dir = os.environ.get("ABLATE_TEST_POSTGRES"), os.environ.get("ABLATE_TEST_POSTGRES_DIR")
    own = None
    if not (pg_url and pg_dir):
        own = tempfile.mkdtemp(prefix="soak-pg-")
        pg_url, pg_dir = subprocess.run(["bash", str(PG), "start", own], check=True, capture_output=True,
                                        text=True).stdout.strip(), own
    folder = args.keep or Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        s = soak(args, folder.resolve(), pg_url, pg_dir)
    finally:
        if own:
            subprocess.run(["bash", str(PG), "stop", own], capture_output=True)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print_table(s)
    return 1 if any(s.result[k] for k in ZEROS) else 0


if __name__ == "__main__":
    sys.exit(main())
