"""ablate.tracking: store location, experiments (and their creation race), run statuses, batching, masking;
ablate.server: the UI command."""
from contextlib import nullcontext
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from ablate import server, storage, tracking


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    """One SQLite store for the module: creating its tables is the slow part."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    tracking.get_or_create_experiment(tracking.make_client(uri), "warm")
    return uri


def test_resolve_uri_default_is_absolute_sqlite_under_cwd(tmp_path):
    uri = tracking.resolve_uri(None)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert (tmp_path / "mlruns").is_dir()
    assert tracking.artifact_root(uri) == (tmp_path.resolve() / "mlruns" / "artifacts").as_uri()


def test_resolve_uri_explicit_beats_env_beats_default(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.resolve_uri(None) == "http://127.0.0.1:5000"
    assert tracking.resolve_uri(f"sqlite:///{tmp_path}/x/m.db") == f"sqlite:///{tmp_path}/x/m.db"
    assert (tmp_path / "x").is_dir()  # SQLite needs the folder to exist
    assert tracking.artifact_root("http://127.0.0.1:5000") is None  # a server owns its artifacts


def test_experiment_created_once_with_artifacts_beside_the_store(uri):
    client = tracking.make_client(uri)
    first = tracking.get_or_create_experiment(client, "study-a")
    assert tracking.get_or_create_experiment(client, "study-a") == first
    location = MlflowClient(uri).get_experiment(first).artifact_location
    assert location == (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()


def test_experiment_created_by_another_process_first(uri, monkeypatch):
    # the other process wins between our lookup and our create: we must return its experiment
    theirs = MlflowClient(uri).create_experiment("raced")
    lookup = MlflowClient.get_experiment_by_name
    calls = []

    def stale_first_lookup(self, name):
        calls.append(name)
        return None if len(calls) == 1 else lookup(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", stale_first_lookup)
    assert tracking.get_or_create_experiment(tracking.make_client(uri), "raced") == theirs


@pytest.mark.parametrize("exc, status", [
    (None, "FINISHED"),
    (RuntimeError("disk\nfull"), "FAILED"),
    (optuna.TrialPruned("pruned at epoch 2"), "KILLED"),
    (KeyboardInterrupt(), "KILLED"),
])
def test_tracked_run_always_ends(uri, exc, status):
    client = tracking.make_client(uri)
    exp = tracking.get_or_create_experiment(client, "statuses")
    parent = tracking.start_run(client, exp, run_name="study")
    with pytest.raises(type(exc)) if exc else nullcontext():
        with tracking.tracked_run(client, exp, killed_by=(optuna.TrialPruned,), parent_run_id=parent,
                                  tags={"optuna.trial": 3}) as run_id:
            if exc:
                raise exc
    run = client.get_run(run_id)
    assert run.info.status == status
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["optuna.trial"] == "3"
    if status == "FAILED":
        assert run.data.tags["reason"] == "RuntimeError: disk full"  # one line
    if exc is not None and status == "KILLED":
        assert run.data.tags["reason"].startswith(type(exc).__name__)


def test_params_masked_and_metrics_in_one_batch(uri, monkeypatch):
    client = tracking.make_client(uri)
    exp = tracking.get_or_create_experiment(client, "logging")
    with tracking.tracked_run(client, exp) as run_id:
        tracking.log_params(client, run_id, {"tracking.uri": "postgresql://ann:s3cr3t@db:5432/optuna",
                                             "model.attention.stages": [3, 4], "n": 1})
        calls = []
        real = client.log_batch
        monkeypatch.setattr(client, "log_batch", lambda *a, **k: calls.append(k) or real(*a, **k))
        for epoch in range(3):
            tracking.log_metrics(client, run_id, {"val/acc1": 0.1 * epoch, "val/loss": 2.0 - epoch}, step=epoch)
    assert len(calls) == 3  # one call per epoch, not one per value
    params = client.get_run(run_id).data.params
    assert params["tracking.uri"] == "postgresql://ann:***@db:5432/optuna"
    assert params["model.attention.stages"] == "[3, 4]"
    history = client.get_metric_history(run_id, "val/loss")
    assert [(m.step, m.value) for m in history] == [(0, 2.0), (1, 1.0), (2, 0.0)]


def test_mask_secrets_leaves_plain_urls_alone():
    assert tracking.mask_secrets("http://127.0.0.1:5000/x") == "http://127.0.0.1:5000/x"
    assert tracking.mask_secrets("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    assert tracking.mask_secrets("mlruns/optuna.journal") == "mlruns/optuna.journal"


@pytest.mark.parametrize("text, masked", [
    # a whole URL, as SQLAlchemy reads it (a storage or tracking URL): a '/' in the password, no user, a driver
    ("postgresql://ann:s3cr3t@db:5432/optuna", "postgresql://ann:***@db:5432/optuna"),
    ("postgresql+psycopg2://u:p/w@h:5432/db?sslmode=require", "postgresql+psycopg2://u:***@h:5432/db?sslmode=require"),
    ("postgresql://:secret@host/db", "postgresql://:***@host/db"),
    ("https://u:tok@server:5000", "https://u:***@server:5000"),
    # URLs inside longer text (a param, a traceback, a config)
    ("a=postgresql://u:p@h/db", "a=postgresql://u:***@h/db"),
    ("cannot reach mysql://root:hunter2@db/x\nand https://u:tok@server:5000/api", "cannot reach mysql://root:***@db/x\n"
     "and https://u:***@server:5000/api"),
])
def test_mask_secrets_hides_passwords_in_whole_urls_and_in_text(text, masked):
    assert tracking.mask_secrets(text) == masked
    assert storage.mask_secrets is tracking.mask_secrets  # one function for both stores


def test_serve_ui_runs_mlflow_server_on_loopback_over_the_project_store(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(server, "serve", lambda cmd: ran.append(cmd) or 0)
    assert server.serve_ui(5055) == 0
    cmd = ran[0]
    assert cmd[1:4] == ["-m", "mlflow", "server"]
    opts = dict(zip(cmd[4::2], cmd[5::2]))
    assert opts["--backend-store-uri"] == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert opts["--host"] == "127.0.0.1" and opts["--port"] == "5055"
    assert opts["--default-artifact-root"] == (tmp_path.resolve() / "mlruns" / "artifacts").as_uri()


def test_a_shared_tag_written_by_two_workers_at_once_is_written_again_not_lost():
    """Two workers summarising a study insert the same new tag at the same moment: SQLite's UNIQUE failure (seen in
    CI as a dead worker) means the other got there first; the write is repeated, now an update. Other errors stand."""
    from mlflow.exceptions import MlflowException

    class Racing:
        def __init__(self, error):
            self.calls, self.error = [], error

        def set_tag(self, run_id, key, value):
            self.calls.append((run_id, key, value))
            if len(self.calls) == 1:
                raise MlflowException(self.error)

    lost = Racing("(sqlite3.IntegrityError) UNIQUE constraint failed: tags.key, tags.run_uuid")
    tracking.set_shared_tag(lost, "run", "ablate.summary", "best se")
    assert lost.calls == [("run", "ablate.summary", "best se")] * 2
    with pytest.raises(MlflowException, match="permission"):
        tracking.set_shared_tag(Racing("permission denied"), "run", "k", "v")


def test_a_study_opens_on_its_report_once_it_has_one_else_on_its_runs(uri):
    """`ablate ui`'s links: while a study runs, its configuration runs (the report is logged when it ends); then
    its parent run's report page, in the model-training view."""
    client = tracking.make_client(uri)
    experiment = tracking.get_or_create_experiment(client, "landing-study")
    parent = tracking.start_run(client, experiment, run_name="landing-study", tags={tracking.Tag.ROLE: "study"})
    landing, runs = tracking.study_links("http://127.0.0.1:5000/", uri)["landing-study"]
    assert landing == runs == tracking.runs_url("http://127.0.0.1:5000", experiment)
    client.log_text(parent, "<table></table>", tracking.LANDING)
    landing, runs = tracking.study_links("http://127.0.0.1:5000/", uri)["landing-study"]
    assert landing == (f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{parent}/artifacts/report/index.html"
                       "?workflowType=machine_learning")
    assert runs == tracking.runs_url("http://127.0.0.1:5000", experiment)
