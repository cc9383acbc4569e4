"""`ablate train` as a user runs it: a real trial on the embedded data, bad input, local pretrained weights.

That precision, channels_last and compile act inside the trial (autocast dtype, input layout, torch.compile)
is checked in-process by test_train.py, where it is cheap; here, that the options reach a trial's record.
"""
from pathlib import Path

import mlflow
import pytest
import timm
import torch
import yaml
from helpers import ablate

from ablate.config import AttentionSpec, ModelConfig
from ablate.models import build_model


def write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


CBAM_TRIAL = {
    "model": {"backbone": "resnet18", "attention": {"name": "cbam", "position": "block"}},
    "data": {"name": "cluttered-digits", "image_size": 32, "batch_size": 32, "train_size": 64, "val_size": 32},
    "train": {"epochs": 2, "progress_bar": False},
    "tracking": {"experiment": "cli"},
}


def test_train_resnet18_cbam_on_cluttered_digits_records_everything(tmp_path, run_cli):
    proc = run_cli("train", write(tmp_path / "trial.yaml", CBAM_TRIAL), "train.lr=0.02")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_id = proc.stdout.split("run ")[1].split()[0]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.attention.name"] == "cbam" and run.data.params["train.lr"] == "0.02"
    assert [m.step for m in client.get_metric_history(run_id, "val/acc1")] == [0, 1]  # per epoch
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "insertion_report.json"} <= artifacts


@pytest.mark.parametrize("override, message", [
    ("data.name=cifar10", "data.root"),
    ("data.name=mnist", "data.name: 'mnist' is not allowed"),
    ("train.epochs=-3", "train.epochs: Input should be greater than or equal to 1"),
    ("data.batch_size=0", "data.batch_size: Input should be greater than or equal to 1"),
    ("train.cosine_restarts=2", "train.cosine_restarts: unknown key"),
])
def test_bad_trial_input_exits_2_and_writes_nothing(tmp_path, run_cli, override, message):
    cfg = CBAM_TRIAL  # data.name=cifar10 then has no data.root: a one-line error too
    proc = run_cli("train", write(tmp_path / "trial.yaml", cfg), override)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "mlruns").exists()


def test_pretrained_without_network_or_file_is_a_one_line_error(tmp_path):
    # a process: huggingface_hub reads HF_HUB_OFFLINE once, when it is imported
    proc = ablate("train", str(write(tmp_path / "trial.yaml", CBAM_TRIAL)), "model.pretrained=true",
                  env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "model.pretrained" in proc.stderr and "model.checkpoint" in proc.stderr
    assert not (tmp_path / "mlruns").exists()


def test_local_checkpoint_loads_and_identity_init_keeps_the_pretrained_function(tmp_path):
    torch.manual_seed(0)
    imagenet_like = timm.create_model("resnet18")  # stands for downloaded ImageNet weights: 1000 classes
    weights = tmp_path / "resnet18.pth"
    torch.save(imagenet_like.state_dict(), weights)

    def build(attention):
        torch.manual_seed(1)  # the new 10-class head starts alike in both models
        cfg = ModelConfig(backbone="resnet18", checkpoint=str(weights), attention=attention)
        return build_model(cfg, num_classes=10, in_chans=3, image_size=32).model.eval()

    plain = build(AttentionSpec())
    torch.testing.assert_close(plain.layer3[0].conv1.weight, imagenet_like.layer3[0].conv1.weight)
    assert plain.fc.out_features == 10  # timm dropped the 1000-class classifier
    with_cbam = build(AttentionSpec(name="cbam", init="identity"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(with_cbam(x), plain(x), atol=1e-6, rtol=0)


def test_cpu_trains_in_bf16_mixed_and_channels_last(tmp_path, run_cli):
    cfg = CBAM_TRIAL | {"train": CBAM_TRIAL["train"] | {"epochs": 1}}
    proc = run_cli("train", write(tmp_path / "trial.yaml", cfg), "train.precision=bf16-mixed",
                   "train.channels_last=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_id = proc.stdout.split("run ")[1].split()[0]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["train.precision"] == "bf16-mixed" and params["train.channels_last"] == "True"
    weights = torch.load(client.download_artifacts(run_id, "model.pt", str(tmp_path)))  # the trained model
    convs = [w for w in weights.values() if w.ndim == 4]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    # mixed precision: bf16 compute, float32 weights
    assert {w.dtype for w in weights.values() if w.is_floating_point()} == {torch.float32}
