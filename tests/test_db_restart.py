"""PostgreSQL restarted under two running `ablate run` workers: they wait, reconnect, and the study ends with every
cell x seed run once, no trial failed, no run left RUNNING, and each metric logged once per epoch.

Needs CI's server and its data directory ($ABLATE_TEST_POSTGRES, $ABLATE_TEST_POSTGRES_DIR: .ci/run exports both
and restarts it with `.ci/postgres restart DIR SECONDS`); skips saying why without them.
"""
import os
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import helpers
import optuna
import psycopg
import pytest
from helpers import cells_done
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from test_postgres import ALL_CELLS, fire_together, fresh_database, runs, start_worker, write_study

ROOT = Path(__file__).resolve().parents[1]
DIR_ENV = "ABLATE_TEST_POSTGRES_DIR"
EPOCHS = 4
DOWN_S = 6  # the server stays down this long: longer than the workers' first backoff steps


@pytest.fixture
def pg_dir():
    """The data directory of the server the test restarts (skips, saying why, without one)."""
    for name in ("ABLATE_TEST_POSTGRES", DIR_ENV):
        if not os.environ.get(name):
            why = os.environ.get("ABLATE_TEST_POSTGRES_ERROR", "(.ci/run starts a server and exports both)")
            pytest.skip(f"${name} is not set: the test restarts CI's PostgreSQL server {why}")
    return os.environ[DIR_ENV]


@pytest.fixture
def pg_url(pg_dir):
    """A fresh database on the server the test restarts: created and dropped over connections of their own (the
    restart cuts off any connection held across it)."""
    database = fresh_database()
    url = next(database)
    yield url
    with suppress(psycopg.Error):  # its DROP fails on the connection the restart cut: dropped on a new one
        database.close()
    with psycopg.connect(admin_conninfo(), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')


def admin_conninfo() -> str:
    return make_url(os.environ["ABLATE_TEST_POSTGRES"]).set(drivername="postgresql").render_as_string(
        hide_password=False)


def restart_server(down_s: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / ".ci" / "postgres"), "restart", os.environ[DIR_ENV], str(down_s)],
                          capture_output=True, text=True, timeout=120)


def test_two_workers_survive_a_database_restart_mid_study(tmp_path, pg_url):
    # grace 60 s > the outage: a heartbeat paused by the restart must not make a live trial look dead
    path = write_study(tmp_path / "pg.yaml", epochs=EPOCHS, heartbeat_interval=1, grace_period=60, db_outage_s=60)
    logs = [tmp_path / "worker0.log", tmp_path / "worker1.log"]
    ready, go = [tmp_path / "ready0", tmp_path / "ready1"], tmp_path / "go"
    procs = [start_worker(log, str(path), "--storage", pg_url, ready=r, go=go) for log, r in zip(logs, ready)]
    try:
        fire_together(procs, ready, go)
        storage = optuna.storages.RDBStorage(pg_url)
        deadline = time.time() + 90
        while time.time() < deadline and all(p.poll() is None for p in procs):  # restart once both train
            time.sleep(0.3)
            try:
                trials = optuna.load_study(study_name="pg", storage=storage).trials
            except KeyError:
                continue
            if len([t for t in trials if t.state == TrialState.RUNNING]) == 2:
                break
        storage.engine.dispose()  # ours must not hold the restart up
        restarted = restart_server(DOWN_S)
        assert restarted.returncode == 0, restarted.stderr
        for p in procs:
            p.wait(timeout=240)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outputs = [log.read_text() for log in logs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    assert all("ablate: database unreachable" in out for out in outputs), "a worker never met the outage"
    assert all("database reachable again" in out for out in outputs)

    study = helpers.load("pg", pg_url)
    assert cells_done(study) == ALL_CELLS  # each cell x seed COMPLETE exactly once, none lost
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * len(ALL_CELLS), "a trial failed or ran twice"
    every = runs()
    assert not [r for r in every if r.info.status == "RUNNING"]
    client = helpers.mlflow.MlflowClient(f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}")
    for run in (r for r in every if r.data.tags.get("ablate.role") == "trial"):
        assert run.info.status == "FINISHED"
        for metric in ("train/loss", "val/acc1"):  # one value per epoch: no gap, no duplicate
            steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
            assert sorted(steps) == list(range(EPOCHS)), (metric, steps)


def test_a_short_soak_with_every_kind_of_fault_loses_and_doubles_nothing(tmp_path, pg_dir):
    """benchmarks/soak.py's short setting: 2 workers for a minute of random faults of every kind (the disk one needs
    root for its tmpfs), then its table, whose must-be-zero rows are 0."""
    if os.geteuid() != 0:
        pytest.skip("the soak mounts a tmpfs for the full-disk fault: run as root (CI is)")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--minutes", "1", "--workers", "2",
                           "--fault-every", "8", "--seeds", "2", "--epochs", "3", "--grace", "20"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=900)
    table = dict(line.strip("| ").split(" | ") for line in proc.stdout.splitlines() if line.count("|") == 3)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert sum(int(v) for k, v in table.items() if k.startswith("faults injected")) >= 3, proc.stdout
    assert int(table["trials finished"]) >= 6
    for row in ("cells run more than once", "cells lost", "trials left RUNNING or WAITING", "runs left RUNNING",
                "metric histories with a gap or a duplicate"):
        assert table[row] == "0", (row, proc.stdout)
