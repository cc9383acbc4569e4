"""Extension points are tables: config names exactly their keys, and a new entry is all a new one needs."""
from typing import ClassVar, Literal, get_args

import timm
import torch

import ablate.config
import ablate.data
import ablate.inject
from ablate.config import (
    DATA_CONFIGS,
    DATASET_NAMES,
    AttentionSpec,
    DataBase,
    LauncherConfig,
    StudySection,
    TrialConfig,
)
from ablate.data import TensorDataModule, build_datamodule, check_data, dataset_shape
from ablate.inject import INSTALLERS, Position, inject
from ablate.launch import LAUNCHERS
from ablate.study import PRUNERS, SAMPLERS


def test_config_names_exactly_the_positions_table():
    assert set(ablate.config.POSITION_NAMES) == set(ablate.inject.POSITIONS)


def allowed(model, key: str) -> set:
    """The names a config key accepts: its Literal's values (an optional key's None left out)."""
    annotation = model.model_fields[key].annotation
    return {v for arg in (get_args(annotation) or (annotation,)) for v in (get_args(arg) or (arg,)) if v is not None
            and v is not type(None)}


def test_config_names_exactly_the_samplers_pruners_and_launchers_tables():
    """A name the config allows but no table holds would be a KeyError traceback in the runner, not bad input."""
    assert allowed(StudySection, "sampler") == set(SAMPLERS)
    assert allowed(StudySection, "pruner") == set(PRUNERS)
    assert allowed(LauncherConfig, "name") == set(LAUNCHERS) == set(ablate.config.LAUNCHER_NAMES)


def test_every_data_config_has_its_datamodule_and_its_name():
    assert set(DATA_CONFIGS) == set(ablate.data.DATASETS)
    assert sorted(DATASET_NAMES) == sorted(c().name for c in DATA_CONFIGS)  # one name each, no second list
    for config in DATA_CONFIGS:  # and a trial file's data.name picks that class
        assert type(TrialConfig.model_validate({"data": {"name": config().name}}).data) is config


def test_every_position_finds_sites_that_an_installer_takes():
    model = timm.create_model("resnet18", num_classes=10)
    for name, position in ablate.inject.POSITIONS.items():
        spec = AttentionSpec(position=name, pattern="layer3.*.conv2")  # finders read where, not which module
        for kind in position.kinds:
            sites = position.sites(model, spec, kind)
            assert sites and {how for _, how in sites} <= set(INSTALLERS), (name, kind)


def test_a_new_position_is_one_table_entry(monkeypatch):
    after_stem_conv = Position(lambda model, spec, kind: [("conv1", "out")], frozenset({"gate"}))
    monkeypatch.setitem(ablate.inject.POSITIONS, "after_stem_conv", after_stem_conv)
    model = timm.create_model("resnet18", num_classes=10)
    spec = AttentionSpec.model_construct(name="se", position="after_stem_conv")  # config does not know it
    report = inject(model, spec, image_size=32)
    assert [(r.path, r.channels, r.feat_size) for r in report.rows] == [("conv1.attn_out", 64, (16, 16))]
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


class StripesData(DataBase):
    """A new dataset's config: its name, its keys beyond DataBase's (none here) and its class count."""

    name: Literal["stripes"] = "stripes"
    num_classes: ClassVar[int] = 2


class Stripes(TensorDataModule):
    """Two classes: horizontal or vertical stripes."""

    @classmethod
    def shape(cls, cfg):
        return cfg.class_count, 1

    def __init__(self, cfg):
        y = torch.arange(8) % 2
        stripes = (torch.arange(cfg.image_size) % 2 * 255).to(torch.uint8)
        x = torch.stack([stripes[:, None].expand(-1, cfg.image_size) if c else
                         stripes[None, :].expand(cfg.image_size, -1) for c in y.tolist()])[:, None]
        super().__init__(cfg, x, y, x, y, num_classes=cfg.class_count)


def test_a_new_dataset_is_a_config_class_and_one_table_entry(monkeypatch):
    monkeypatch.setitem(ablate.data.DATASETS, StripesData, Stripes)
    cfg = StripesData(image_size=8, batch_size=4)  # validated by its own schema
    check_data(cfg)
    assert dataset_shape(cfg) == (2, 1)
    dm = build_datamodule(cfg)
    x, y = dm.transform_batch(next(iter(dm.train_dataloader())), train=True)
    assert x.shape == (4, 1, 8, 8) and dm.classes == ["0", "1"]
