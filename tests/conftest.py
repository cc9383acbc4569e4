"""The fixtures every test module can use. Plain helpers (the subprocess runner `ablate`, store readers, the
tiny study) are functions in helpers.py, so that module-scoped fixtures can call them too."""
import os
import subprocess

import pytest

# Tests run on 2 CPU cores: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning made steps ~10x slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from helpers import call_main  # noqa: E402 (the thread settings come first, before anything loads torch)


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
