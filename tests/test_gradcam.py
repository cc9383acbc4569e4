"""Grad-CAM on a tiny real study (run once per module): best run per configuration, same images, the figure, errors."""
from pathlib import Path

import matplotlib.image
import mlflow
import numpy as np
import optuna
import pytest
import yaml
from helpers import call_main, load

from ablate.errors import AblateError
from ablate.gradcam import best_runs, draw_grid, gradcam_grid, write_gradcam
from ablate.storage import make_storage

# cluttered digits at 32 px: a digit somewhere on the canvas, so a CAM has a place to point at
TINY_DIGITS_BASE = {
    "model": {"backbone": "resnet10_narrow"},
    "data": {"name": "cluttered-digits", "image_size": 32, "batch_size": 32, "train_size": 256, "val_size": 32},
    "train": {"epochs": 1, "progress_bar": False},
}
NO_WEIGHTS_BASE = {
    "model": {"backbone": "resnet10_narrow"},
    "data": {"name": "synthetic", "image_size": 16, "batch_size": 16, "train_size": 16, "val_size": 16},
    "train": {"epochs": 1, "progress_bar": False},
    "tracking": {"log_weights": False},
}
N = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """none / cbam x seeds 0, 1 with weights, and a one-trial study run with tracking.log_weights: false."""
    folder = tmp_path_factory.mktemp("gradcam")
    storage, uri = str(folder / "mlruns" / "optuna.journal"), f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    study = folder / "tiny.yaml"
    study.write_text(yaml.safe_dump({"study": {"name": "tiny", "seeds": [0, 1], "price_steps": False},
                                     "base": TINY_DIGITS_BASE, "space": {"model.attention.name": ["none", "cbam"]}}))
    bare = folder / "bare.yaml"
    bare.write_text(yaml.safe_dump({"study": {"name": "bare"}, "base": NO_WEIGHTS_BASE,
                                    "space": {"model.attention.name": ["none"]}}))
    for path in (study, bare):  # in this process: the same code as `ablate run`, without its start-up
        code, trace = call_main("run", path, "--storage", storage, "--tracking-uri", uri)
        assert code == 0, trace
    grid = gradcam_grid("tiny", N, storage=storage, tracking_uri=uri)
    return {"folder": folder, "study": study, "storage": storage, "uri": uri, "grid": grid}


def test_one_row_per_configuration_from_its_best_run(tiny):
    assert all(t.state.name == "COMPLETE" for name in ("tiny", "bare") for t in load(name, tiny["storage"]).trials)
    grid = tiny["grid"]
    assert grid.shape == (3, N) and [r.label for r in grid.rows] == ["attention=none", "attention=cbam"]
    trials = load("tiny", tiny["storage"]).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    for row in grid.rows:
        mine = [t for t in trials if t.user_attrs["label"] == row.label]
        top = max(t.user_attrs["metrics"]["val/acc1"] for t in mine)
        best = min((t for t in mine if t.user_attrs["metrics"]["val/acc1"] == top), key=lambda t: t.number)
        assert (row.trial, row.run_id, row.score) == (best.number, best.user_attrs["mlflow_run_id"], top)


def test_same_images_true_class_targets_and_distinct_cams(tiny):
    grid = tiny["grid"]
    none, cbam = grid.rows
    assert none.images.shape == (N, 32, 32, 3) and 0 <= none.images.min() and none.images.max() <= 1
    assert np.array_equal(none.images, cbam.images)  # the same validation images for every configuration
    from ablate.data import build_datamodule
    from ablate.spec import load_study, trial_config

    dm = build_datamodule(trial_config(load_study(tiny["study"]), {}, 0).data)
    assert grid.targets.tolist() == dm.y_val[:N].tolist()  # the first N validation samples, true labels
    for row in grid.rows:
        assert row.layer == "layer2" and row.feature_size == (4, 4)  # layer4 is 1x1 at 32 px: no "where"
        assert row.cams.shape == (N, 32, 32) and row.cams.min() >= 0 and row.cams.max() <= 1
        assert (row.cams.std(axis=(1, 2)) > 0).any()  # spatial maps, not constants
        assert row.probs.shape == (N,) and ((0 <= row.probs) & (row.probs <= 1)).all()
    assert not np.allclose(none.cams, cbam.cams)  # each configuration's own heatmaps


def test_figure_is_inputs_then_one_row_per_configuration(tiny):
    grid = tiny["grid"]
    fig = draw_grid(grid)
    assert fig.axes[0].get_subplotspec().get_gridspec().get_geometry() == (3, N) and len(fig.axes) == 3 * N
    assert fig.axes[0].get_ylabel() == "input" and fig.axes[0].get_title() == grid.class_names[grid.targets[0]]
    assert fig.axes[N].get_ylabel().startswith("attention=none") and fig.axes[2 * N].get_ylabel().startswith(
        "attention=cbam")
    assert fig.axes[2 * N + 1].get_title() == f"P={grid.rows[1].probs[1]:.2f}"


def test_cli_writes_the_png_and_logs_it_on_the_parent_run(tiny, tmp_path, run_cli):
    out = tmp_path / "figs" / "cams.png"
    proc = run_cli("gradcam", tiny["study"], "--images", N, "--out", out, cwd=tiny["folder"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"wrote {out}" and "Downloading" not in proc.stderr
    assert matplotlib.image.imread(out).ndim == 3
    client = mlflow.MlflowClient(tiny["uri"])
    parent = load("tiny", tiny["storage"]).user_attrs["mlflow_parent_run_id"]
    assert "report/gradcam.png" in {a.path for a in client.list_artifacts(parent, "report")}
    # by name, with no --out: <study>_gradcam.png in the working directory
    path = write_gradcam("tiny", 2, storage=tiny["storage"], tracking_uri=tiny["uri"])
    assert path == Path("tiny_gradcam.png") and (tmp_path / path).stat().st_size > 0


def test_best_run_follows_the_objective_per_configuration(tmp_path):
    """A stored study with fake trials: maximise picks the highest, minimise the lowest, ties the earliest;
    rows come in the order the configurations first ran (no study file to order them by)."""
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for direction, picks in (("maximize", {"b": 1, "a": 3}), ("minimize", {"b": 0, "a": 2})):
        study = optuna.create_study(direction=direction)
        for number, (label, value) in enumerate([("b", 0.5), ("b", 0.9), ("a", 0.2), ("a", 0.7), ("a", 0.7)]):
            study.add_trial(optuna.trial.create_trial(value=value, user_attrs={
                "cell": f'{{"name":"{label}"}}', "label": label, "seed": number, "mlflow_run_id": f"run{number}",
                "metrics": {"val/acc1": value}}))
        best = best_runs(study, client)
        assert best["label"].tolist() == ["b", "a"]
        assert dict(zip(best["label"], best["number"])) == picks


def test_errors_are_one_line_exit_2(tiny, tmp_path, run_cli):
    proc = run_cli("gradcam", "nosuch", "--storage", tiny["storage"], "--tracking-uri", tiny["uri"])
    err = proc.stderr
    assert proc.returncode == 2 and err.startswith("ablate: error: unknown study 'nosuch'")
    assert len(err.splitlines()) == 1
    proc = run_cli("gradcam", "bare", "--storage", tiny["storage"], "--tracking-uri", tiny["uri"])
    err = proc.stderr
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1
    assert "has no model.pt" in err and "tracking.log_weights=true" in err
    with pytest.raises(AblateError, match=r"--images: 33 is more than the 32 validation images"):
        gradcam_grid("tiny", 33, storage=tiny["storage"], tracking_uri=tiny["uri"])
    journal = str(tmp_path / "failed.journal")
    failed = optuna.create_study(study_name="failed", storage=make_storage(journal, 1))
    failed.tell(failed.ask(), state=optuna.trial.TrialState.FAIL)
    with pytest.raises(AblateError, match="no finished trials"):
        gradcam_grid("failed", storage=journal)
