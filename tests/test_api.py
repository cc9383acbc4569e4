"""The notebook API (`import ablate`): its public names, each one doing what its CLI twin does, and a light import."""
import re
import subprocess
import sys

import pytest
import timm
from helpers import write_study

import ablate
from ablate.attention import get_attention, list_attention
from ablate.errors import AblateError
from ablate.inject import POSITIONS
from ablate.report import ablation_table


def test_the_public_names_are_these_and_import_ablate_stays_light():
    assert sorted(ablate.__all__) == ["StudyResults", "create_model", "inject_attention", "list_modules",
                                      "list_positions", "load_study"]
    assert all(callable(getattr(ablate, name)) for name in ablate.__all__)
    with pytest.raises(AttributeError):
        ablate.no_such_name  # noqa: B018
    code = "import sys, ablate; print(sorted({'torch', 'timm', 'mlflow', 'optuna', 'pandas'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"  # the heavy parts load on first use of a name


def _insertions(text: str) -> tuple[int, int]:
    """(insertions, params added) from `ablate inspect`'s last line."""
    found = re.search(r"\((\d+) insertions, .*plain, \+([\d,]+)\)", text.strip().splitlines()[-1])
    return int(found[1]), int(found[2].replace(",", ""))


def test_create_model_is_ablate_inspect_with_timm_kwargs_passed_through(run_cli):
    model = ablate.create_model("resnet18", "cbam", position="block", knobs={"reduction": 8}, num_classes=10,
                                image_size=64)
    proc = run_cli("inspect", "resnet18", "--attention", "cbam", "--position", "block", "--knob", "reduction=8",
                   "--num-classes", "10", "--image-size", "64")
    assert proc.returncode == 0, proc.stderr
    insertions, added = _insertions(proc.stdout)
    cbam = get_attention("cbam").cls
    placed = [name for name, m in model.named_modules() if isinstance(m, cbam)]
    assert len(placed) == insertions == 8 and all(name.endswith(".se") for name in placed)  # timm's block slot
    plain = timm.create_model("resnet18", num_classes=10)
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters()) == added
    assert model.num_classes == 10 and model.get_classifier().out_features == 10
    assert placed and model.get_submodule(placed[0]).channel.mlp[0].out_features == 64 // 8  # the knob reached it


def test_inject_attention_goes_into_a_model_built_by_timm():
    model = timm.create_model("resnet18", num_classes=5)
    report = ablate.inject_attention(model, "se", stages=[3, 4], image_size=64)
    se = get_attention("se").cls
    assert [r.path for r in report.rows] == [n for n, m in model.named_modules() if isinstance(m, se)]
    assert {r.path.split(".")[0] for r in report.rows} == {"layer3", "layer4"}
    assert report.backbone == "resnet18" and report.params == sum(p.numel() for p in model.parameters())
    assert model(__import__("torch").zeros(2, 3, 64, 64)).shape == (2, 5)
    assert "resnet18 + se @ block (4 insertions, 64px)" in report.to_text()


def test_the_lists_are_the_registry():
    assert ablate.list_modules() == [i.name for i in list_attention()]
    assert ablate.list_modules("cbam*") == ["cbam", "cbam_channel", "cbam_spatial"]
    assert ablate.list_modules(kind="head") == [i.name for i in list_attention("head")]
    assert ablate.list_positions() == list(POSITIONS)


@pytest.mark.parametrize("kwargs, message", [
    (dict(model_name="resnt18"), "create_model: model_name: unknown timm backbone 'resnt18' (did you mean resnet18"),
    (dict(attention="sse"), "create_model: attention: unknown attention module 'sse' (did you mean se"),
    (dict(position="middle"), "create_model: position: 'middle' is not allowed"),
    (dict(knobs={"reduction": 0}), "create_model: knobs.reduction: se.reduction=0 is out of range"),
    (dict(stages=[9]), "create_model: stages: stage 9 does not exist"),
])
def test_bad_arguments_are_one_line_naming_the_argument(kwargs, message):
    kwargs = {"model_name": "resnet18", "attention": "se", "image_size": 32, **kwargs}
    with pytest.raises(AblateError) as e:
        ablate.create_model(**kwargs)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_load_study_is_what_ablate_report_prints(tmp_path, run_cli, monkeypatch):
    # no step pricing: this test is about reading the stores
    study = write_study(tmp_path / "tiny.yaml", study={"name": "tiny", "seeds": [0, 1], "price_steps": False})
    assert run_cli("run", study).returncode == 0
    printed = run_cli("report", "tiny")
    assert printed.returncode == 0, printed.stderr
    monkeypatch.chdir(tmp_path.parent)  # elsewhere: the stores named
    uri, journal = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", str(tmp_path / "mlruns" / "optuna.journal")
    results = ablate.load_study("tiny", uri=uri, storage=journal)
    assert isinstance(results, ablate.StudyResults) and results.name == "tiny"
    assert results.render() + "\n" == printed.stdout
    same = ablation_table("tiny", storage=journal, tracking_uri=uri)
    assert results.table.equals(same.frame) and results.samples.equals(same.per_seed)
    assert list(results.table.index) == ["attention=none", "attention=se"]
    assert results.samples.shape == (2, 2)  # seeds 0, 1 x the two configurations
    assert sorted(zip(results.trials["label"], results.trials["seed"])) == sorted(
        (label, seed) for label in results.table.index for seed in (0, 1))
    assert (results.trials["state"] == "COMPLETE").all() and results.trials["val/acc1"].notna().all()
    assert results.table.loc["attention=none", "verdict"] == "baseline"
    with pytest.raises(AblateError, match="unknown study .nothing."):
        ablate.load_study("nothing", uri=uri, storage=journal)
