"""Several `ablate run --storage postgresql://...` workers on one PostgreSQL server (the multi-machine path).

Needs a server: $ABLATE_TEST_POSTGRES is its SQLAlchemy URL (.ci/run starts a throwaway one with .ci/postgres,
or sets $ABLATE_TEST_POSTGRES_ERROR to why it could not, and these tests skip saying so).
Each test gets a fresh database on it, dropped afterwards. MLflow stays on the local SQLite store: the
workers run on this machine, in the test's folder.
"""
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import helpers
import optuna
import pytest
from helpers import TINY_BASE, cells, cells_done, cli_env, load
from optuna.trial import TrialState

ENV = "ABLATE_TEST_POSTGRES"
MODULES = ["none", "se", "eca"]
SEEDS = [0, 1]
ALL_CELLS = cells(MODULES, SEEDS)


@pytest.fixture
def pg_url():
    """A fresh, empty database on the test server; its URL. Skips (saying why) when there is no server."""
    yield from fresh_database()


@pytest.fixture
def mlflow_pg_url():
    """A second fresh database: MLflow's tables (and its alembic_version) apart from Optuna's."""
    yield from fresh_database()


def fresh_database():
    url = os.environ.get(ENV)
    if not url:
        why = os.environ.get(f"{ENV}_ERROR", f"${ENV} is not set (.ci/run starts a server with .ci/postgres)")
        pytest.skip(f"no PostgreSQL server to test against: {why}")
    from sqlalchemy.engine import make_url

    try:
        import psycopg
    except ImportError as e:
        pytest.skip(f"psycopg is not installed ({e}); install the test extra: pip install -e '.[test]'")
    admin = make_url(url)
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
    except psycopg.Error as e:
        pytest.skip(f"${ENV}: the PostgreSQL server does not answer: {' '.join(str(e).split())[:200]}")
    name = f"ablate_test_{uuid.uuid4().hex[:12]}"
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield admin.set(database=name).render_as_string(hide_password=False)
        finally:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # FORCE: our own pooled connections


def write_study(path: Path, epochs: int, weights: bool = False, **study) -> Path:
    return helpers.write_study(path, study={"name": "pg", "seeds": SEEDS, **study},
                               base=TINY_BASE | {"train": {"epochs": epochs, "progress_bar": False},
                                                 "tracking": {"log_weights": weights}},
                               space={"model.attention.name": MODULES})


# `ablate run ARGS` once the starting gun (a file) fires: the slow imports come first, so that workers
# started together reach the storage within milliseconds of each other, as machines started by a
# scheduler would, instead of seconds apart by chance.
SYNCHRONISED = """
import sys, time
from pathlib import Path
import mlflow, optuna, pytorch_lightning, torch  # noqa: F401 (imported before the start, not after)
import ablate.study, ablate.tracking, ablate.train  # noqa: F401
from ablate.cli import main
ready, go, *args = sys.argv[1:]
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.005)
main(["run", *args])
"""


def start_worker(log: Path, *args, ready: Path | None = None, go: Path | None = None,
                 env: dict | None = None) -> subprocess.Popen:
    """`ablate run ARGS` as helpers.start runs it (the same environment, plus `env`), but started by the starting gun
    when `go` is given, and writing to `log`."""
    head = ["-c", SYNCHRONISED, str(ready), str(go)] if go else ["-m", "ablate.cli", "run"]
    with open(log, "w") as out:  # a file, not a pipe: nobody reads while the worker runs
        return subprocess.Popen([sys.executable, *head, *args], stdout=out, stderr=subprocess.STDOUT,
                                env=cli_env(**(env or {})))


def fire_together(procs: list[subprocess.Popen], ready: list[Path], go: Path, timeout=120) -> None:
    deadline = time.time() + timeout
    while not all(r.exists() for r in ready) and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    go.touch()


def finish(proc: subprocess.Popen, log: Path, timeout=300) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    text = log.read_text()
    assert proc.returncode == 0, f"worker exit code {proc.returncode}:\n{text[-3000:]}"
    return text


def trials_completed_by(output: str) -> list[int]:
    """The trial numbers one worker finished (its own progress lines: '[pg] trial 3 complete | ...')."""
    return [int(n) for n in re.findall(r"^\[pg\] trial (\d+) complete\b", output, re.M)]


def runs():
    return helpers.runs("pg")


def assert_no_password(url: str, *texts: str) -> None:
    from sqlalchemy.engine import make_url

    password = make_url(url).password
    if password:
        for run in runs():
            texts += tuple(map(str, run.data.params.values())) + tuple(map(str, run.data.tags.values()))
        assert not [t for t in texts if password in t], "the storage password leaked"


def test_two_workers_on_one_server_run_every_cell_exactly_once(tmp_path, pg_url):
    path = write_study(tmp_path / "pg.yaml", epochs=3)  # long enough that both workers get trials
    logs = [tmp_path / "worker0.log", tmp_path / "worker1.log"]
    ready, go = [tmp_path / "ready0", tmp_path / "ready1"], tmp_path / "go"
    procs = [start_worker(log, str(path), "--storage", pg_url, ready=r, go=go) for log, r in zip(logs, ready)]
    fire_together(procs, ready, go)  # both open the fresh database and queue the grid at the same moment
    outputs = [finish(p, log) for p, log in zip(procs, logs)]

    study = load("pg", pg_url)
    assert cells_done(study) == ALL_CELLS  # each cell x seed COMPLETE exactly once, none missing
    assert not study.get_trials(states=(TrialState.WAITING, TrialState.RUNNING))
    per_worker = [trials_completed_by(out) for out in outputs]
    print(f"trials completed per worker: {per_worker}; all trials: {[(t.number, t.state.name) for t in study.trials]}")
    assert all(per_worker), f"a worker ran no trial, so the test shows no parallelism: {per_worker}"
    assert sorted(sum(per_worker, [])) == sorted(t.number for t in study.get_trials(states=(TrialState.COMPLETE,)))

    all_runs = runs()
    parents = [r for r in all_runs if r.data.tags.get("ablate.role") == "study"]
    assert len(parents) == 1, f"{len(parents)} MLflow parent runs for one study"
    children = [r for r in all_runs if r.data.tags.get("ablate.role") != "study"]
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(r.info.run_id for r in children) == sorted(t.user_attrs["mlflow_run_id"] for t in complete)
    every = helpers.runs("pg", configurations=True)
    assert all(helpers.study_run_of(r, every) == parents[0].info.run_id for r in children)
    assert all(r.info.status == "FINISHED" for r in children)
    assert not [r for r in all_runs if r.info.status == "RUNNING"]
    assert_no_password(pg_url, *outputs)


def test_dead_workers_trial_is_retried_by_another_worker(tmp_path, pg_url):
    # grace 20 s: the survivor's own queue (5 tiny trials, ~2 s each) empties before the dead trial goes stale,
    # so it must wait for the heartbeat check rather than exit with the dead trial's cell undone
    path = write_study(tmp_path / "pg.yaml", epochs=20, heartbeat_interval=1, grace_period=20)
    storage = optuna.storages.RDBStorage(pg_url)  # creates the schema before any worker starts
    killed_log = tmp_path / "killed.log"
    proc = start_worker(killed_log, str(path), "--storage", pg_url)
    deadline, states = time.time() + 180, {}
    try:
        while time.time() < deadline and proc.poll() is None:  # kill mid-trial: trial 0 trains under its run
            time.sleep(0.5)
            try:
                states = {t.number: t.state for t in optuna.load_study(study_name="pg", storage=storage).trials}
            except KeyError:  # the worker has not created the study yet
                continue
            if states.get(0) == TrialState.RUNNING and [r for r in runs() if r.data.tags.get("optuna.trial") == "0"]:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert states.get(0) == TrialState.RUNNING, f"the kill did not land mid-trial:\n{killed_log.read_text()[-3000:]}"

    log = tmp_path / "survivor.log"
    # the same command: a shorter train.epochs would change the base config, which a rerun refuses
    output = finish(start_worker(log, str(path), "--storage", pg_url), log)

    study = load("pg", pg_url)
    trials = study.trials
    print(f"trials after the retry: {[(t.number, t.state.name, t.system_attrs.get('failed_trial')) for t in trials]}")
    assert cells_done(study) == ALL_CELLS, output[-3000:]  # each cell x seed COMPLETE exactly once
    assert trials[0].state == TrialState.FAIL  # failed by the heartbeat check: nobody beat for it
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].system_attrs["retry_history"] == [0]
    assert retried[0].state == TrialState.COMPLETE
    assert [retried[0].user_attrs[k] for k in ("cell", "seed")] == [trials[0].user_attrs[k] for k in ("cell", "seed")]
    assert not study.get_trials(states=(TrialState.WAITING, TrialState.RUNNING))
    assert not [r for r in runs() if r.info.status == "RUNNING"]  # the dead worker's run is ended too
    killed = [r for r in runs() if r.data.tags.get("optuna.trial") == "0"]
    assert [r.info.status for r in killed] == ["FAILED"]
    assert_no_password(pg_url, output)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:  # busy shared cores: slow
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the MLflow server exited"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("the MLflow server did not answer /health")


def test_two_workers_log_over_http_to_one_mlflow_server_on_postgresql(tmp_path, pg_url, mlflow_pg_url, monkeypatch):
    """`ablate server` (MLflow on PostgreSQL, artifacts proxied into a folder, users signing in) and two workers on
    it, their credentials in MLflow's client variables."""
    import mlflow

    port, artifacts = free_port(), tmp_path / "shared-artifacts"
    credentials = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "pg-test-admin-pw"}
    server = subprocess.Popen([sys.executable, "-m", "ablate.cli", "server", "--backend-store-uri", mlflow_pg_url,
                               "--artifacts", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "2"], env=cli_env(MLFLOW_AUTH_ADMIN_PASSWORD="pg-test-admin-pw"),
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"))
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(uri, server)
        path = write_study(tmp_path / "pg.yaml", epochs=3, weights=True)  # model.pt goes through the server
        logs = [tmp_path / "worker0.log", tmp_path / "worker1.log"]
        ready, go = [tmp_path / "ready0", tmp_path / "ready1"], tmp_path / "go"
        procs = [start_worker(log, str(path), "--storage", pg_url, "--tracking-uri", uri, ready=r, go=go,
                              env=credentials) for log, r in zip(logs, ready)]
        fire_together(procs, ready, go)
        outputs = [finish(p, log) for p, log in zip(procs, logs)]
        assert all(trials_completed_by(out) for out in outputs), "a worker ran no trial: no parallel logging shown"

        study = load("pg", pg_url)
        assert cells_done(study) == ALL_CELLS
        for name, value in credentials.items():  # MLflow's client reads them itself
            monkeypatch.setenv(name, value)
        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name("pg")
        every = client.search_runs([experiment.experiment_id])
        parents = [r for r in every if r.data.tags.get("ablate.role") == "study"]
        children = [r for r in every if r.data.tags.get("ablate.role") == "trial"]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        complete = study.get_trials(states=(TrialState.COMPLETE,))
        assert sorted(r.info.run_id for r in children) == sorted(t.user_attrs["mlflow_run_id"] for t in complete)
        for run in children:  # every child once, each of its epochs' metrics there
            assert helpers.study_run_of(run, every) == parents[0].info.run_id
            for metric in ("train/loss", "val/loss", "val/acc1", "train/lr"):
                assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [0, 1, 2], metric
        # the artifacts went through the server into its folder (the workers never wrote there themselves)
        assert len(list(artifacts.rglob("config.yaml"))) == len(children)
        assert len(list(artifacts.rglob("model.pt"))) == len(children)
        assert_no_password(pg_url, *outputs)
    finally:
        server.send_signal(signal.SIGTERM)  # ablate server ends MLflow's whole process tree
        server.wait(timeout=60)
    time.sleep(1)
    import socket

    with socket.socket() as s:  # nothing is left holding the port
        assert s.connect_ex(("127.0.0.1", port)) != 0, "a server process outlived ablate server"


def test_a_study_takes_its_database_passwords_from_a_pgpass_file_not_the_urls(tmp_path, pg_url, mlflow_pg_url):
    """libpq's password file (PGPASSFILE, else ~/.pgpass) instead of a password in the URLs, which `ps`, shell
    history and the study's records would show: Optuna's storage and MLflow's SQL store both open a password-less
    postgresql:// URL through it."""
    import mlflow
    from sqlalchemy.engine import make_url

    admin = make_url(pg_url)
    if not admin.password:
        pytest.skip(f"${ENV} has no password to move into a pgpass file")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"{admin.host}:{admin.port or 5432}:*:{admin.username}:{admin.password}\n")
    pgpass.chmod(0o600)  # libpq ignores a password file others can read

    def bare(url: str) -> str:
        return make_url(url).set(password=None).render_as_string(hide_password=False)

    path = helpers.write_study(tmp_path / "pgpass.yaml", study={"name": "pgpass", "seeds": [0]}, base=TINY_BASE,
                               space={"model.attention.name": ["se"]})
    env = {k: v for k, v in cli_env(PGPASSFILE=str(pgpass)).items() if k != "PGPASSWORD"}
    done = subprocess.run([sys.executable, "-m", "ablate.cli", "run", str(path), "--storage", bare(pg_url),
                           "--tracking-uri", bare(mlflow_pg_url)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert cells_done(load("pgpass", pg_url)) == cells(["se"], [0])
    client = mlflow.MlflowClient(mlflow_pg_url)
    every = client.search_runs([client.get_experiment_by_name("pgpass").experiment_id])
    trials = [r for r in every if r.data.tags.get("ablate.role") == "trial"]
    assert len(trials) == 1 and all(r.info.status == "FINISHED" for r in trials)
    texts = [done.stdout, done.stderr] + [str(v) for r in every for v in [*r.data.params.values(),
                                                                            *r.data.tags.values()]]
    assert not [t for t in texts if admin.password in t], "the database password leaked"
