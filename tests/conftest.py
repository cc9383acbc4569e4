"""The fixtures every test module can use. Plain helpers (the subprocess runner `ablate`, store readers, the
tiny study) are functions in helpers.py, so that module-scoped fixtures can call them too."""
import os
import sqlite3
import subprocess
from contextlib import closing

import pytest

# Tests run on 2 CPU cores: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning made steps ~10x slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import mlflow.store.db.utils as mlflow_db  # noqa: E402 (the thread settings come first, before anything loads torch)
import torch  # noqa: E402
from helpers import call_main  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _mlflow_store_template(tmp_path_factory):
    """A new SQLite MLflow store runs all of MLflow's migrations (~1.3 s on these cores) and the tests make hundreds:
    in this process, the first store's fresh tables are kept and copied into each later new store with SQLite's
    backup API (the file still appears exactly when MLflow creates it; only the migrations are not run again)."""
    real = mlflow_db._initialize_tables
    template = tmp_path_factory.mktemp("mlflow-store") / "fresh.db"

    def initialize(engine):
        path = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
        if not path or path == ":memory:":
            return real(engine)
        source, target = (path, template) if not template.exists() else (template, path)
        if source == path:
            real(engine)  # the first store: MLflow's own migrations, then kept
        with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
            src.backup(dst)

    mlflow_db._initialize_tables = initialize
    yield
    mlflow_db._initialize_tables = real


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny tensors
    and resnet50 probes run several times faster on one of 2 busy cores than with two threads contending."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Every test runs in its own folder, so default stores (./mlruns) never touch the repo."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def run_cli(capfd):
    """The in-process runner: `run_cli(*args, cwd=None)` runs `ablate ARGS` through ablate.cli.main in this
    process (no second start-up of torch and MLflow) and returns what subprocess.run would: returncode, and
    stdout and stderr as the file descriptors saw them; an escaping exception is its traceback in stderr."""
    def run(*args, cwd=None) -> subprocess.CompletedProcess:
        capfd.readouterr()  # what came before is not this command's
        code, trace = call_main(*args, cwd=cwd)
        out = capfd.readouterr()
        return subprocess.CompletedProcess(list(args), code, out.out, out.err + trace)

    return run
