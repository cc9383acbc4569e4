"""`ablate server` asks who you are: MLflow's basic-auth app in front of the shared tracking server, the admin's
password from a file or the environment (never the command line), workers' credentials from MLflow's client
variables; `--open` is the explicit way out, `ablate ui` stays on loopback.

One real server for the module (it takes a minute to start on the shared CI cores); the checks of the credential's
sources and of the users' database run in this process."""
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest
from helpers import TINY_BASE, cli_env, write_study

from ablate import server
from ablate.errors import AblateError
from ablate.server_auth import Admin, admin_credential, ensure_admin

PASSWORD = "s3cret-admin-pw-4-tests"  # MLflow wants 12 characters or more
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_AUTH_ADMIN_USERNAME",
               "MLFLOW_AUTH_ADMIN_PASSWORD")


def bare_env(**extra) -> dict:
    """An `ablate` process's environment without any credential of this machine's user, plus `extra`."""
    env = {k: v for k, v in cli_env().items() if k not in CREDENTIALS}
    return {**env, **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, data: dict | None = None, password: str | None = None) -> int:
    """The HTTP status of a plain GET (POST with `data`), with basic auth as admin when a password is given; 0 when
    nothing answers."""
    headers = {"Content-Type": "application/json"}
    if password is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()
    body = json.dumps(data).encode() if data is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:  # nobody listens (yet)
        return 0


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """`ablate server` with authentication on a loopback port, its admin password from a mode-600 file."""
    folder = tmp_path_factory.mktemp("server")
    secret = folder / "admin-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    port = free_port()
    log = folder / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ablate.cli", "server", "--backend-store-uri",
                                 f"sqlite:///{folder / 'mlflow.db'}", "--artifacts", str(folder / "artifacts"),
                                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                 "--admin-password-file", str(secret)],
                                env=bare_env(), cwd=folder, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300  # generous: MLflow's server starts slowly on busy shared cores
        while request(f"{url}/health") != 200:
            assert proc.poll() is None, f"ablate server exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, f"ablate server did not answer in 300 s:\n{log.read_text()[-3000:]}"
            time.sleep(1)
        yield {"url": url, "proc": proc, "log": log, "folder": folder}
    finally:
        proc.send_signal(signal.SIGTERM)  # ablate server ends MLflow's whole process tree
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(c) for c in children.read_text().split()] if children.exists() else []
    return [pid] + [p for k in kids for p in tree(k)]


def test_the_server_refuses_requests_without_a_password_and_never_shows_it(shared):
    url = shared["url"]
    search = f"{url}/api/2.0/mlflow/experiments/search?max_results=10"
    assert request(search) == 401
    assert request(f"{url}/api/2.0/mlflow/experiments/create", {"name": "intruder"}) == 401
    assert request(search, password="not-the-password") == 401
    assert request(search, password=PASSWORD) == 200
    # neither ablate's command line nor MLflow's processes' (which `ps` shows every user) carry the password
    for pid in tree(shared["proc"].pid):
        assert PASSWORD not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    text = shared["log"].read_text()
    assert PASSWORD not in text and "admin 'admin' created" in text


def test_an_authenticated_worker_logs_its_study_and_the_password_goes_nowhere(shared, tmp_path):
    """The credentials travel in the environment only: the launched task (submitit's local executor: a process
    started from a pickle) logs through the server; no param, tag, log, pickle or script holds the password."""
    path = write_study(tmp_path / "authd.yaml", study={"name": "authd", "seeds": [0]}, base=TINY_BASE,
                       space={"model.attention.name": ["se"]})
    env = bare_env(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=PASSWORD)
    done = subprocess.run([sys.executable, "-m", "ablate.cli", "run", str(path), "--tracking-uri", shared["url"],
                           "--launcher", "local", "--workers", "1"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=PASSWORD)
    try:  # MLflow's client reads them itself
        client = mlflow.MlflowClient(shared["url"])
        experiment = client.get_experiment_by_name("authd")
        found = client.search_runs([experiment.experiment_id])
    finally:
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(name)
    trials = [r for r in found if r.data.tags.get("ablate.role") == "trial"]
    assert len(trials) == 1 and trials[0].info.status == "FINISHED"
    assert "val/acc1" in trials[0].data.metrics
    for run in found:
        assert not [v for v in [*run.data.params.values(), *run.data.tags.values()] if PASSWORD in v]
    assert PASSWORD not in done.stdout + done.stderr
    launched = list((tmp_path / "mlruns" / "launches").rglob("*"))
    assert [p for p in launched if p.suffix == ".pkl"], "no submitit pickle was written: the test shows nothing"
    assert not [p for p in launched if p.is_file() and PASSWORD.encode() in p.read_bytes()]


@pytest.mark.parametrize("password, expect", [
    ("not-the-password-at-all", "refuses user 'admin' (401: wrong name or password"),
    (None, "asks who you are (401): set $MLFLOW_TRACKING_USERNAME and $MLFLOW_TRACKING_PASSWORD"),
])
def test_a_refused_worker_is_one_line_and_writes_nothing(shared, tmp_path, run_cli, monkeypatch, password, expect):
    """`ablate run` against the real server, through the command's entry point in this process (the server's answer
    is what is tested, not a second start-up of torch)."""
    path = write_study(tmp_path / "refused.yaml", study={"name": "refused", "seeds": [0]})
    for name in CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    if password:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    done = run_cli("run", path, "--tracking-uri", shared["url"], cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("ablate: error: tracking.uri: http://127.0.0.1:") and expect in lines[0], lines[0]
    assert "Traceback" not in done.stdout + done.stderr
    assert PASSWORD not in done.stderr and (password is None or password not in done.stderr)
    assert not (tmp_path / "mlruns").exists()  # no journal, no study, no checkpoint
    assert request(f"{shared['url']}/api/2.0/mlflow/experiments/get-by-name?experiment_name=refused",
                   password=PASSWORD) == 404


# ---------------------------------------------------------------- in this process: the credential and the users


def test_the_admin_password_comes_from_a_private_file_or_the_environment(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-the-file-123\n")
    secret.chmod(0o640)
    with pytest.raises(AblateError, match=r"--admin-password-file: .*pw can be read by others \(mode 640\).*chmod 600"):
        admin_credential(str(secret), None, {})
    secret.chmod(0o600)
    assert admin_credential(str(secret), None, {}) == Admin("admin", "from-the-file-123", str(secret))
    assert "from-the-file-123" not in repr(admin_credential(str(secret), None, {}))
    # MLflow's admin variables first, then the client's pair; the name goes with its password
    env = {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "alice-password-1"}
    assert admin_credential(None, None, env) == Admin("alice", "alice-password-1", "$MLFLOW_TRACKING_PASSWORD")
    env |= {"MLFLOW_AUTH_ADMIN_PASSWORD": "the-admin-password"}
    assert admin_credential(None, None, env) == Admin("admin", "the-admin-password", "$MLFLOW_AUTH_ADMIN_PASSWORD")
    with pytest.raises(AblateError, match=r"^\$MLFLOW_AUTH_ADMIN_PASSWORD: Password must be at least 12"):
        admin_credential(None, None, {"MLFLOW_AUTH_ADMIN_PASSWORD": "short"})
    with pytest.raises(AblateError, match="the server needs an admin password.*--open serves without"):
        admin_credential(None, None, {})


def test_a_restart_with_a_new_password_changes_it_and_a_plain_user_is_not_promoted(tmp_path):
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    db = f"sqlite:///{tmp_path / 'users.db'}"
    assert ensure_admin(db, Admin("root", "first-password-1", "$X")) == "admin 'root' created"
    assert ensure_admin(db, Admin("root", "first-password-1", "$X")) == "admin 'root'"
    assert "password changed" in ensure_admin(db, Admin("root", "second-password-2", "$X"))
    store = SqlAlchemyStore()
    store.init_db(db)
    assert store.authenticate_user("root", "second-password-2")
    assert not store.authenticate_user("root", "first-password-1")
    store.create_user("bob", "bobs-password-1")
    with pytest.raises(AblateError, match="'bob' is a user of .* but not an admin"):
        ensure_admin(db, Admin("bob", "taken-over-pw-1", "$X"))
    assert store.authenticate_user("bob", "bobs-password-1") and not store.get_user("bob").is_admin


def test_server_refuses_bad_credentials_in_one_line_and_writes_nothing(tmp_path, run_cli, monkeypatch):
    for name in CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "open-pw").write_text("a-readable-password\n")
    (tmp_path / "open-pw").chmod(0o644)
    base = ["server", "--backend-store-uri", f"sqlite:///{tmp_path / 'm.db'}", "--artifacts", "arts",
            "--host", "127.0.0.1", "--port", str(free_port())]
    cases = [([], "--admin-password-file: the server needs an admin password"),
             (["--admin-password-file", "open-pw"], "--admin-password-file: open-pw can be read by others"),
             (["--admin-password-file", "nosuch"], "--admin-password-file: cannot read nosuch"),
             (["--open", "--admin-password-file", "open-pw"], "--open: serves without authentication; not with"),
             (["--default-permission", "ALL"], "--default-permission: 'ALL' is not one of READ, USE, EDIT")]
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, expect in cases:
        proc = run_cli(*base, *args, cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("ablate: error: "), (args, lines)
        assert expect in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no users' database, no store, no artifacts


def test_open_warns_and_ui_binds_loopback_only(tmp_path, run_cli, monkeypatch):
    ran = []
    monkeypatch.setattr(server, "serve", lambda cmd, env=None: ran.append((cmd, env)) or 0)
    port = str(free_port())
    proc = run_cli("server", "--backend-store-uri", f"sqlite:///{tmp_path / 'm.db'}", "--artifacts", "arts",
                   "--host", "127.0.0.1", "--port", port, "--open", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "warning: --open: no authentication: anyone who can reach 127.0.0.1" in proc.stderr
    cmd, env = ran.pop()
    assert "--app-name" not in cmd and env is None
    assert not (tmp_path / "mlruns").exists()  # no users' database for an open server

    proc = run_cli("ui", "--port", port, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cmd, _ = ran.pop()
    opts = dict(zip(cmd[4::2], cmd[5::2]))
    assert opts["--host"] == "127.0.0.1" and "--app-name" not in cmd
    assert "warning" not in proc.stderr
