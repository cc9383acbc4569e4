"""A configuration's cost measured rather than guessed: its training step timed against the plain backbone's, side by
side, and its peak memory, before anything trains; shown by the dry run and the report, limited by study.constraints.
Timing noise is what the benchmark (benchmarks/step_cost.py) reports; these tests pin what the numbers mean."""
import io

import pandas as pd
import pytest
from helpers import load, write_study

from ablate import step_cost
from ablate.config import parse_trial
from ablate.spec import grid_cells, load_study


def cfg(module="none", size=16, batch=16, **knobs):
    return parse_trial({"model": {"backbone": "resnet10_narrow", "attention": {"name": module, "knobs": knobs}},
                        "data": {"name": "synthetic", "image_size": size, "batch_size": batch}})


def test_a_step_is_priced_against_its_plain_backbone():
    prices = step_cost.price_configs({"plain": cfg(), "se": cfg("se"), "cbam": cfg("cbam")})
    assert prices["plain"].step_time_ratio == 1.0  # its own plain backbone: the same step
    assert all(p.step_ms > 0 and p.peak_mem_mb > 0 and p.batch == 16 and p.device == "cpu" for p in prices.values())
    assert prices["cbam"].peak_mem_mb > prices["plain"].peak_mem_mb  # its gates' activations are kept for backward


def test_a_cpu_prices_a_capped_batch():
    (price,) = step_cost.price_configs({"big": cfg(size=224, batch=256)}).values()
    assert price.batch == 8  # 8 images of 224 px: a CPU never runs the paper's 256


def test_interleaved_rounds_rotate_the_order(monkeypatch):
    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def __call__(self):
            pass

        def timed(self):
            calls.append(self.name)
            return 1.0

    steps = [Fake("a"), Fake("b"), Fake("c")]
    step_cost.interleaved(steps)
    rounds = [calls[i:i + 3] for i in range(0, len(calls), 3)]
    assert len(rounds) == step_cost.REPEATS and rounds[:3] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]


@pytest.fixture
def fixed_prices(monkeypatch):
    """Steps that take what the test says (a CBAM step 1.5x the plain one), so a limit's verdict is certain."""
    seconds = {"none": 0.010, "se": 0.011, "cbam": 0.015}
    monkeypatch.setattr(step_cost.Step, "timed", lambda self: seconds[self.module])
    original = step_cost.Step.__init__

    def init(self, cfg):
        original(self, cfg)
        self.module = cfg.model.attention.name
    monkeypatch.setattr(step_cost.Step, "__init__", init)


def test_the_study_prices_its_cells_once_and_the_report_shows_them(tmp_path, run_cli, fixed_prices):
    path = write_study(tmp_path / "tiny.yaml", study={"name": "priced", "seeds": [0]},
                       space={"model.attention.name": ["none", "se", "cbam"]})
    proc = run_cli("run", path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pricing the training step of 3 configurations" in proc.stdout
    study = load("priced")
    stored = study.user_attrs["ablate.step_cost"]
    assert sorted(round(p["step_time_ratio"], 2) for p in stored.values()) == [1.0, 1.1, 1.5]
    logged = [t.user_attrs["metrics"]["model/step_time_ratio"] for t in study.trials]  # read back from each run
    assert sorted(round(r, 2) for r in logged) == [1.0, 1.1, 1.5]
    proc = run_cli("report", path, "--format", "csv")
    table = pd.read_csv(io.StringIO(proc.stdout), index_col=0)
    assert table.loc["attention=cbam", "step time ×"] == pytest.approx(1.5)
    assert table.loc["attention=cbam", "peak mem (MB)"] > 0
    assert "step time ×" in run_cli("report", path).stdout  # the default (markdown) table too


def test_constraints_limit_the_steps_price(tmp_path, run_cli, fixed_prices):
    path = write_study(tmp_path / "tiny.yaml", study={"name": "limited", "seeds": [0],
                                                      "constraints": {"step_time_ratio": {"max": 1.2}}},
                       space={"model.attention.name": ["none", "se", "cbam"]})
    proc = run_cli("run", path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    study = load("limited")
    assert list(study.user_attrs["refused"].values()) == ["step_time_ratio 1.5 > max 1.2"]
    assert len(study.trials) == 2


def test_a_limit_on_the_step_needs_the_step_priced(tmp_path, run_cli):
    path = write_study(tmp_path / "tiny.yaml", study={"name": "unpriced", "seeds": [0], "price_steps": False,
                                                      "constraints": {"peak_mem_mb": {"max": 100}}})
    proc = run_cli("run", path)
    assert proc.returncode == 2 and "study.constraints.peak_mem_mb" in proc.stderr and "price_steps" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "mlruns").exists()


def test_the_dry_run_shows_each_steps_price(tmp_path, run_cli, fixed_prices):
    proc = run_cli("run", write_study(tmp_path / "tiny.yaml", study={"name": "tiny", "seeds": [0, 1]}), "--dry-run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "step time ×" in proc.stdout and "peak mem (MB)" in proc.stdout
    spec = load_study(tmp_path / "tiny.yaml")
    assert set(step_cost.price_records(spec, grid_cells(spec))) == {c.key for c in grid_cells(spec)}
