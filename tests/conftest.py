import os

import pytest

# Tests run on 2 CPU cores: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning made steps ~10x slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Every test runs in its own folder, so default stores (./mlruns) never touch the repo."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
