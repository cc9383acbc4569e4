"""What a trial's MLflow run holds beside its metrics: its evaluated weights as a LoggedModel, its data as dataset
inputs, and the machine's system metrics (ablate/logged_model.py, track_inputs.py, system_metrics.py)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow.pytorch
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from mlflow import MlflowClient
from mlflow.artifacts import load_text
from PIL import Image

from ablate import tracking
from ablate.attention import load_plugins
from ablate.config import TrialConfig, data_config
from ablate.data import build_datamodule
from ablate.logged_model import fluent_uri
from ablate.train import run_trial

pytestmark = pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def tiny(uri, experiment, data=None, model=None, tracking_keys=None, **train) -> TrialConfig:
    """timm's smallest ResNet on 64 synthetic 16 px images, 2 epochs of 4 steps."""
    return TrialConfig.model_validate({
        "model": {"backbone": "test_resnet", **(model or {})},
        "data": {"name": "synthetic", "image_size": 16, "batch_size": 16, "train_size": 64, "val_size": 32,
                 **(data or {})},
        "train": {"epochs": 2, "lr": 0.05, "progress_bar": False, **train},
        "tracking": {"uri": uri, "experiment": experiment, **(tracking_keys or {})}})


class KeepModule(pl.Callback):
    """The trained LightningModule, for comparing what was logged with what was trained."""

    def on_fit_end(self, trainer, module):
        self.module = module


def a_batch(cfg: TrialConfig) -> torch.Tensor:
    data = build_datamodule(cfg.data)
    return data.transform_batch(next(iter(data.reported_dataloader())), train=False)[0]


def test_a_finished_trial_is_a_logged_model_of_its_evaluated_weights(uri):
    cfg = tiny(uri, "models", model={"attention": {"name": "se"}}, ema=True, ema_decay=0.9)  # train.eval: ema
    kept = KeepModule()
    result = run_trial(cfg, callbacks=[kept])
    client = MlflowClient(uri)
    run = client.get_run(result.run_id)

    # linked to its run: the run's outputs (the UI's Models column) and the model's source run
    found = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert [m.source_run_id for m in found] == [result.run_id]
    assert str(found[0].status) == "READY"
    model_id = found[0].model_id
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id]
    assert found[0].metrics and {m.key for m in found[0].metrics} >= {"val/acc1"}  # the last epoch's metrics

    x = a_batch(cfg)
    evaluated, raw = kept.module.ema.module.eval(), kept.module.model.eval()
    with torch.no_grad():
        want, trained = evaluated(x), raw(x)
        assert not torch.allclose(want, trained)  # the EMA's weights differ from the raw ones: which was logged?
        for model_uri in (f"models:/{model_id}", f"runs:/{result.run_id}/model"):
            with fluent_uri(uri):
                loaded = mlflow.pytorch.load_model(model_uri)
            torch.testing.assert_close(loaded(x), want)
        # model.pt, which Grad-CAM reads, holds the same (evaluated) weights
        state = torch.load(client.download_artifacts(result.run_id, tracking.WEIGHTS), weights_only=True)
        for key, value in loaded.state_dict().items():
            torch.testing.assert_close(state[key], value)
    # its environment was given, not inferred (which would load the model in a subprocess)
    requirements = load_text(f"{found[0].artifact_location}/requirements.txt")
    assert {line.split("==")[0] for line in requirements.split()} >= {"torch", "timm", "ablate"}

    # the machine's samples are on the run (a 2-epoch trial is shorter than the 10 s interval: still sampled),
    # never among the trial's results
    cpu = client.get_metric_history(result.run_id, "system/cpu_utilization_percentage")
    assert len(cpu) >= 2 and {m.step for m in cpu} >= {0, 1}
    assert "system/system_memory_usage_megabytes" in run.data.metrics
    assert not any(k.startswith("system/") for k in result.metrics)


def test_without_weights_and_system_metrics_the_run_has_neither(uri):
    result = run_trial(tiny(uri, "bare", tracking_keys={"log_weights": False, "system_metrics": False}))
    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    assert not any(k.startswith("system/") for k in run.data.metrics)
    assert not client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert tracking.WEIGHTS not in {a.path for a in client.list_artifacts(result.run_id)}
    assert len(run.inputs.dataset_inputs) == 2  # the data are recorded all the same


def inputs(client, run_id) -> dict[str, tuple[str, str]]:
    """context -> (dataset name, digest) of a run's dataset inputs."""
    return {next(t.value for t in i.tags if t.key == "mlflow.data.context"): (i.dataset.name, i.dataset.digest)
            for i in client.get_run(run_id).inputs.dataset_inputs}


def test_a_trial_records_its_training_validation_and_test_data_as_dataset_inputs(uri):
    cfg = tiny(uri, "datasets", data={"holdout": 16}, epochs=1,
               tracking_keys={"log_weights": False, "system_metrics": False})
    result = run_trial(cfg)
    client = MlflowClient(uri)
    expected = {s.context: (s.name, s.digest) for s in build_datamodule(cfg.data).splits()}
    assert inputs(client, result.run_id) == expected
    assert {c: name for c, (name, _) in expected.items()} == {
        "training": "synthetic/train", "validation": "synthetic/holdout", "testing": "synthetic/val"}
    source = client.get_run(result.run_id).inputs.dataset_inputs[0].dataset
    assert source.source_type == "code" and "ablate.data.synthetic" in source.source
    # the UI's filter finds the run by its data
    digest = expected["training"][1]
    found = client.search_runs([client.get_run(result.run_id).info.experiment_id],
                               f"dataset.name = 'synthetic/train' AND dataset.digest = '{digest}'")
    assert [r.info.run_id for r in found] == [result.run_id]


def digests(**data) -> dict[str, str]:
    return {s.name: s.digest for s in build_datamodule(data_config(**data)).splits()}


def test_the_same_data_give_the_same_digest_and_other_data_another():
    base = dict(name="cluttered-digits", image_size=16, train_size=200, val_size=50)
    same = digests(**base)
    assert same == digests(**base) and len(set(same.values())) == 2
    assert set(digests(**base, seed=1).values()).isdisjoint(same.values())  # another draw of the images
    held = digests(**base, holdout=20)
    assert held["cluttered-digits/val"] == same["cluttered-digits/val"]  # the reported split did not change
    assert held["cluttered-digits/train"] != same["cluttered-digits/train"]  # 20 images fewer to train on
    assert held != digests(**base, holdout=30)


def write_folder(root: Path, per_class=3):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")


def test_an_image_folder_is_identified_by_its_file_names_and_sizes(tmp_path):
    write_folder(tmp_path)
    kw = dict(name="imagefolder", root=str(tmp_path), image_size=16)
    data = build_datamodule(data_config(**kw))
    first = {s.name: (s.digest, s.folder, s.rows) for s in data.splits()}
    assert first["imagefolder/train"][1:] == (str((tmp_path / "train").resolve()), 6)
    assert first["imagefolder/val"][1] == str((tmp_path / "val").resolve())
    assert digests(**kw) == {k: v[0] for k, v in first.items()}
    Image.new("RGB", (30, 30)).save(tmp_path / "train" / "dog" / "9.png")  # one more image: a new training digest
    after = digests(**kw)
    assert after["imagefolder/train"] != first["imagefolder/train"][0]
    assert after["imagefolder/val"] == first["imagefolder/val"][0]
    assert digests(**kw, holdout=2)["imagefolder/holdout"] != digests(**kw, holdout=2, seed=1)["imagefolder/holdout"]


PLUGIN = '''
import torch
from torch import nn

from ablate.attention import register_attention


@register_attention("records_gate", kind="gate", paper="a test plugin")
class RecordsGate(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(-1, 1, channels))

    def forward(self, x):
        return x * torch.sigmoid(self.scale)[None, :, None, None]
'''

LOAD = textwrap.dedent('''
    import sys, mlflow, mlflow.pytorch, torch
    mlflow.set_tracking_uri(sys.argv[1])
    model = mlflow.pytorch.load_model(sys.argv[2])
    x, want = torch.load(sys.argv[3])
    torch.testing.assert_close(model(x), want)
    print(sorted({type(m).__module__ for m in model.modules()}))
''')


def test_a_plugin_and_an_ablate_backbone_reload_in_a_fresh_process(uri, tmp_path, monkeypatch):
    """The pickled network names its classes' modules: ablate's resnet20 (registered with timm by ablate) and a
    --plugin file, which travels with the model as code, so a process that cannot import it still loads it."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "records_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(plugins))
    monkeypatch.setenv("ABLATE_PLUGINS", "")
    load_plugins(["records_plugin"])
    cfg = tiny(uri, "plugin", model={"backbone": "resnet20", "attention": {"name": "records_gate"}},
               data={"image_size": 32}, epochs=1, tracking_keys={"system_metrics": False})
    kept = KeepModule()
    result = run_trial(cfg, callbacks=[kept])
    x = a_batch(cfg)
    with torch.no_grad():
        torch.save((x, kept.module.model.eval()(x)), tmp_path / "expected.pt")
    model_id = MlflowClient(uri).get_run(result.run_id).outputs.model_outputs[0].model_id
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("ABLATE_PLUGINS", "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = str(REPO)  # ablate, as an install would give it; not the plugin's folder
    proc = subprocess.run([sys.executable, "-c", LOAD, uri, f"models:/{model_id}", str(tmp_path / "expected.pt")],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "records_plugin" in proc.stdout and "ablate.backbones.cifar_resnet" in proc.stdout
