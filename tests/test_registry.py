"""The registry contract: knob validation, metadata, plugins through entry points and --plugin."""
import inspect
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY_BASE, ablate, cells, cells_done, load

from ablate.attention import (
    Knob,
    create_attention,
    get_attention,
    list_attention,
    register_attention,
    resolve_knobs,
)
from ablate.cost import count_params
from ablate.errors import AblateError, at, within


def test_at_least_16_modules_with_metadata():
    infos = list_attention()
    assert len(infos) >= 16
    for info in infos:
        assert info.kind in ("gate", "conv", "head")
        assert info.paper


@pytest.mark.parametrize("name, knob, text", [
    ("se", "reduction", "int in [1, channels]"),
    ("eca", "kernel_size", "int in [1, 31] odd or null"),
    ("cbam", "pool_types", "list of avg|max|lp|lse"),
    ("cbam", "arrangement", "channel_first|spatial_first|parallel"),
    ("cbam", "spatial_norm", "bool"),
    ("multi_attention", "hidden", "int in [1, inf]"),
])
def test_knob_descriptions_name_type_and_allowed_values(name, knob, text):
    assert get_attention(name).knobs[knob].describe() == text


STRUCTURAL = {"gate": ("channels",), "head": ("channels",),
              "conv": ("channels", "out_channels", "stride", "feat_size")}


@pytest.mark.parametrize("info", list_attention(), ids=lambda info: info.name)
def test_knob_defaults_are_the_constructor_defaults(info):
    """Defaults live twice (the signature, the Knob): they must not drift, and no argument goes unlisted."""
    params = inspect.signature(info.cls).parameters
    structural = STRUCTURAL[info.kind]
    assert list(params)[:len(structural)] == list(structural)
    assert set(params) - set(structural) == set(info.knobs)
    for key, knob in info.knobs.items():
        assert params[key].default == knob.default, f"{info.name}.{key}"


def test_a_conv_module_cannot_name_a_knob_like_a_structural_argument():
    with pytest.raises(ValueError, match="knobs cannot be named out_channels, stride, feat_size"):
        register_attention("strided", kind="conv", paper="-", knobs={"stride": Knob(int, 1)})


def test_errors_are_keyed_and_located_by_the_caller():
    with pytest.raises(AblateError) as err:
        resolve_knobs("se", {"reduction": 0})
    assert err.value.key == "reduction"
    assert err.value.message == "se.reduction=0 is out of range (int in [1, channels])"
    with pytest.raises(AblateError) as err, within("trial.yaml"), at("model.attention.knobs"):
        create_attention("se", 64, reduction=128)
    assert str(err.value) == ("trial.yaml: model.attention.knobs.reduction: se.reduction=128 is out of range "
                              "for 64 channels (int in [1, channels])")
    with pytest.raises(AblateError) as err, at("model.attention.knobs"):
        create_attention("se", 64, kernel_size=3)
    assert str(err.value) == ("model.attention.knobs: module 'se' takes no knob 'kernel_size' (knobs: reduction, "
                              "squeeze, excitation)")
    with pytest.raises(AblateError) as err, at("model.attention.name"):
        get_attention("sse")
    assert str(err.value) == "model.attention.name: unknown attention module 'sse' (did you mean se, sge?)"


def test_unknown_module_suggests_close_names():
    with pytest.raises(AblateError, match=r"unknown attention module 'cbma' \(did you mean cbam"):
        get_attention("cbma")


@pytest.mark.parametrize("name, knobs, message", [
    ("se", {"reduction": 128}, "out of range for 64 channels"),
    ("se", {"reduction": 0}, "out of range"),
    ("se", {"reduction": 2.5}, "not allowed"),
    ("cbam", {"kernel_size": 4}, "must be odd"),
    ("cbam", {"pool_types": ["avg", "median"]}, "not allowed"),
    ("cbam", {"arrangement": "sideways"}, "not allowed"),
    ("se", {"kernel_size": 3}, "takes no knob 'kernel_size'"),
])
def test_bad_knobs_are_one_line_errors(name, knobs, message):
    with pytest.raises(AblateError, match=message) as err:
        create_attention(name, 64, **knobs)
    assert "\n" not in str(err.value)


def test_knobs_resolve_to_paper_defaults():
    assert resolve_knobs("se", {}) == {"reduction": 16, "squeeze": "avg", "excitation": "sigmoid"}
    assert resolve_knobs("cbam", {"pool_types": "avg+lse"})["pool_types"] == ("avg", "lse")
    cbam = resolve_knobs("cbam", {})
    assert cbam["kernel_size"] == 7 and cbam["pool_types"] == ("avg", "max") and cbam["arrangement"] == "channel_first"


def test_se_hidden_width_is_exactly_c_over_r():
    se = create_attention("se", 64, reduction=16)
    assert count_params(se) == 2 * 64 * 4 + 4 + 64


def test_cbam_param_count_matches_the_paper_formula():
    c, r, k = 256, 16, 7
    cbam = create_attention("cbam", c)
    mlp = c * (c // r) + c // r + (c // r) * c + c
    assert count_params(cbam) == mlp + 2 * k * k + 1


@pytest.mark.parametrize("pool", ["avg", "max", "lp", "lse"])
def test_cbam_pool_types_match_the_official_definitions(pool):
    import torch.nn.functional as F

    from ablate.attention.cbam import _global_pool

    x = torch.randn(2, 8, 5, 5)
    expected = {
        "avg": F.avg_pool2d(x, 5), "max": F.max_pool2d(x, 5), "lp": F.lp_pool2d(x, 2, 5),
        "lse": torch.logsumexp(x.flatten(2), 2)[..., None, None],
    }[pool].flatten(1)
    torch.testing.assert_close(_global_pool(x, pool), expected)


def test_cbam_arrangements_differ_and_keep_shape():
    torch.manual_seed(0)
    x = torch.randn(2, 32, 8, 8)
    outs = {}
    for arrangement in ("channel_first", "spatial_first", "parallel"):
        torch.manual_seed(1)
        m = create_attention("cbam", 32, arrangement=arrangement)
        outs[arrangement] = m(x)
        assert outs[arrangement].shape == x.shape
    assert not torch.allclose(outs["channel_first"], outs["spatial_first"])
    assert not torch.allclose(outs["channel_first"], outs["parallel"])


def test_eca_adaptive_kernel_follows_the_paper():
    # k = |(log2 C + b) / gamma|_odd: C=64 -> 3, C=512 -> 5, C=2048 -> 7 (gamma=2, b=1)
    for channels, k in [(64, 3), (512, 5), (2048, 7)]:
        assert create_attention("eca", channels).conv.kernel_size == (k,)
    assert create_attention("eca", 2048, kernel_size=3).conv.kernel_size == (3,)


def test_plugin_registers_through_entry_point(tmp_path):
    dist = tmp_path / "myplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ablate.attention]\nmy_gate = myplug_mod\n")
    (tmp_path / "myplug_mod.py").write_text(textwrap.dedent('''
        from torch import nn
        from ablate.attention import Knob, register_attention

        @register_attention("my_gate", kind="gate", paper="Nobody, 2026", knobs={"scale": Knob(float, 1.0)})
        class MyGate(nn.Module):
            def __init__(self, channels, scale=1.0):
                super().__init__()
                self.scale = scale

            def forward(self, x):
                return x * self.scale
    '''))
    # a process: entry points are read once per interpreter, and my_gate must not stay registered in this one
    out = ablate("modules", env={"PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "my_gate" in out.stdout and "Nobody, 2026" in out.stdout


PLUGIN_MODULE = '''
import torch
from torch import nn

from ablate.attention import register_attention


@register_attention("scaled_gate", kind="gate", paper="a test plugin")
class ScaledGate(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return x * torch.sigmoid(self.scale)[None, :, None, None]
'''


def test_plugin_flag_imports_a_module_for_the_study_and_its_workers(tmp_path, run_cli):
    """Custom code comes from an explicit --plugin, never from the study file; spawned workers get it too."""
    (tmp_path / "my_gates.py").write_text(PLUGIN_MODULE)
    study = tmp_path / "plugin.yaml"
    study.write_text(yaml.safe_dump({"study": {"name": "tiny", "seeds": [0], "price_steps": False}, "base": TINY_BASE,
                                     "space": {"model.attention.name": ["none", "scaled_gate"]}}))
    without = run_cli("run", study, cwd=tmp_path)
    assert without.returncode == 2 and "unknown attention module 'scaled_gate'" in without.stderr
    # processes: spawned workers import the plugin themselves, and it must not stay registered in this one
    ran = ablate("run", str(study), "--plugin", "my_gates", "--jobs", "2", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert cells_done(load()) == cells(("none", "scaled_gate"), seeds=(0,))
    listed = ablate("modules", "--plugin", "my_gates", cwd=tmp_path)
    assert "scaled_gate" in listed.stdout and "a test plugin" in listed.stdout
    missing = run_cli("modules", "--plugin", "no_such_plugin", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip() == ("ablate: error: --plugin: cannot import 'no_such_plugin': "
                                      "ModuleNotFoundError: No module named 'no_such_plugin'")


def test_study_files_cannot_run_code(tmp_path, run_cli):
    """YAML safe loading: a python tag is an error, and nothing it names is executed."""
    study = tmp_path / "evil.yaml"
    study.write_text(f'study: !!python/object/apply:os.system ["touch {tmp_path / "pwned"}"]\n')
    proc = run_cli("run", study, cwd=tmp_path)
    assert proc.returncode == 2 and str(study) in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "pwned").exists()


def modules_page_table() -> str:
    """docs/modules.md's module table as the registry says it (ablate's own modules, as `ablate modules` lists them)."""
    from ablate.attention import BUILTIN

    def show(value):
        return "+".join(map(str, value)) if isinstance(value, tuple) else "null" if value is None else str(value)
    lines = ["| module | kind | where its paper puts it | knobs (defaults) | paper |",
             "| --- | --- | --- | --- | --- |"]
    for info in sorted(BUILTIN, key=lambda i: i.name):
        knobs = ", ".join(f"{k}={show(v.default)}" for k, v in info.knobs.items()) or "-"
        where = info.placement.describe() if info.placement else "-"
        lines.append(f"| `{info.name}` | {info.kind} | {where} | {knobs} | {info.paper} |")
    return "\n".join(lines)


def test_the_modules_page_lists_every_module_as_the_registry_has_it():
    page = (Path(__file__).resolve().parents[1] / "docs" / "modules.md").read_text()
    table = modules_page_table()
    assert table in page, "docs/modules.md's module table is stale; put this in its place:\n" + table
