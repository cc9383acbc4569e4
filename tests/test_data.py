"""Datamodules: shapes, determinism, disjoint cluttered-digits splits, CIFAR/imagefolder loading and errors."""
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from ablate.config import DATASET_NAMES, ClutteredDigitsData, TrialConfig, data_config, parse_trial
from ablate.data import build_datamodule, check_data, dataset_shape
from ablate.errors import AblateError


def first_batch(dm, train=True):
    loader = dm.train_dataloader() if train else dm.val_dataloader()
    return dm.transform_batch(next(iter(loader)), train=train)


# ---------------------------------------------------------------- the data configs: one schema per dataset

def test_each_dataset_has_its_own_defaults():
    sizes = {name: data_config(name=name).image_size for name in DATASET_NAMES}
    assert sizes == {"digits": 64, "cluttered-digits": 64, "synthetic": 64, "cifar10": 32, "cifar100": 32,
                     "imagefolder": 224}  # CIFAR at its native size, an image folder at ImageNet's
    assert [data_config(name=n).class_count for n in ("digits", "cifar10", "cifar100")] == [10, 10, 100]
    assert data_config(name="synthetic", num_classes=3).class_count == 3
    assert type(TrialConfig().data) is ClutteredDigitsData  # the default dataset, also without a name:
    assert type(TrialConfig.model_validate({"data": {"clutter": 2}}).data) is ClutteredDigitsData


@pytest.mark.parametrize("name, key, value, hint", [
    ("cifar10", "clutter", 2, "only cluttered-digits takes it"),
    ("digits", "num_classes", 5, "only synthetic, imagefolder take it"),
    ("synthetic", "root", "data", "only cifar10, cifar100, imagefolder take it"),
    ("imagefolder", "download", True, "only cifar10, cifar100 take it"),
    ("cluttered-digits", "clutte", 2, "did you mean 'clutter'?"),
])
def test_a_key_foreign_to_the_dataset_is_one_line_naming_the_file_the_key_and_the_allowed_keys(name, key, value,
                                                                                                hint):
    with pytest.raises(AblateError) as err:
        parse_trial({"data": {"name": name, key: value}}, "trial.yaml")
    line = str(err.value)
    assert line.startswith(f"trial.yaml: data.{key}: unknown key for {name} ({hint}") and "\n" not in line
    if "only" in hint:
        assert "allowed: name, image_size, batch_size" in line


def test_digits_shapes():
    dm = build_datamodule(data_config(name="digits", image_size=32, batch_size=16))
    assert (dm.num_classes, dm.in_chans, dm.image_size) == (10, 1, 32)
    assert dm.x_train.shape[1:] == (1, 32, 32) and dm.x_train.dtype == torch.uint8
    assert len(dm.y_train) + len(dm.y_val) == 1797 and 350 <= len(dm.y_val) <= 370  # stratified 80/20
    assert set(dm.y_train.tolist()) == set(dm.y_val.tolist()) == set(range(10))
    assert not set(dm.train_source.tolist()) & set(dm.val_source.tolist())
    for train in (True, False):
        x, y = first_batch(dm, train)
        assert x.shape == (16, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_synthetic_shapes():
    dm = build_datamodule(data_config(name="synthetic", num_classes=5, image_size=16, batch_size=8))
    assert (dm.num_classes, dm.in_chans, dm.image_size) == (5, 3, 16)
    x, y = first_batch(dm)
    assert x.shape == (8, 3, 16, 16) and int(y.max()) < 5
    # normalised with the train statistics
    assert abs(float(dm.transform_batch((dm.x_train, dm.y_train), train=False)[0].mean())) < 1e-3


def cluttered(**kw):
    return build_datamodule(data_config(name="cluttered-digits", train_size=200, val_size=50, batch_size=32, **kw))


def test_cluttered_shapes():
    dm = cluttered()
    assert (dm.num_classes, dm.in_chans, dm.image_size) == (10, 1, 64)
    assert dm.x_train.shape == (200, 1, 64, 64) and dm.x_val.shape == (50, 1, 64, 64)
    assert dm.x_train.dtype == torch.uint8 and dm.train_clutter.shape == (200, ClutteredDigitsData().clutter)
    x, y = first_batch(dm)
    assert x.shape == (32, 1, 64, 64) and y.shape == (32,)


def test_cluttered_deterministic_by_seed():
    a, b, c = cluttered(seed=3), cluttered(seed=3), cluttered(seed=4)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert not torch.equal(a.x_train, c.x_train)
    assert torch.equal(first_batch(a)[0], first_batch(b)[0])


def test_cluttered_train_val_digits_disjoint():
    dm = cluttered()
    train, val = set(dm.train_source.tolist()), set(dm.val_source.tolist())
    assert not train & val and len(train | val) == 1797
    assert set(dm.train_digit.tolist()) | set(dm.train_clutter.flatten().tolist()) <= train
    assert set(dm.val_digit.tolist()) | set(dm.val_clutter.flatten().tolist()) <= val
    assert (dm.train_clutter != dm.train_digit[:, None]).all()  # fragments come from other digits


def test_cluttered_zero_clutter_is_one_digit():
    clean, busy = cluttered(clutter=0), cluttered(clutter=8)
    for dm in (clean, busy):
        outside = torch.ones_like(dm.x_train, dtype=torch.bool)
        for mask, (y, x, s) in zip(outside, dm.train_boxes.tolist()):
            mask[:, y:y + s, x:x + s] = False
        inked = (dm.x_train > 0) & outside
        if dm is clean:
            assert not inked.any()  # every lit pixel lies in the digit's box
            assert (dm.x_train.flatten(1) > 0).any(1).all()  # and every canvas has a digit
        else:
            assert inked.flatten(1).any(1).float().mean() > 0.9


def test_train_batches_deterministic_with_augmentation():
    cfg = data_config(name="digits", image_size=16, batch_size=8, hflip=0.5, seed=1)
    a, b = build_datamodule(cfg), build_datamodule(cfg)
    xa, ya = first_batch(a)
    xb, yb = first_batch(b)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # augmentation is on in training only: the same batch crops and flips anew each time it is trained on,
    # and is the same tensor each time it is validated on
    batch = next(iter(a.train_dataloader()))
    train1, train2 = a.transform_batch(batch, train=True)[0], a.transform_batch(batch, train=True)[0]
    val1, val2 = a.transform_batch(batch, train=False)[0], a.transform_batch(batch, train=False)[0]
    assert train1.shape == val1.shape == (8, 1, 16, 16)
    assert not torch.equal(train1, train2)
    assert torch.equal(val1, val2) and not torch.equal(train1, val1)


def test_auto_augment_on_tensors_and_bad_spec():
    dm = build_datamodule(data_config(name="synthetic", image_size=16, batch_size=4, auto_augment="rand-m9-mstd0.5"))
    x, _ = first_batch(dm)
    assert x.shape == (4, 3, 16, 16)
    with pytest.raises(AblateError, match="data.auto_augment"):
        build_datamodule(data_config(name="synthetic", auto_augment="bogus"))


def test_size_beyond_split_raises():
    with pytest.raises(AblateError, match="data.train_size"):
        build_datamodule(data_config(name="digits", train_size=5000))


def test_cifar_missing_raises(tmp_path):
    with pytest.raises(AblateError, match="data.root") as err:
        build_datamodule(data_config(name="cifar10", root=str(tmp_path)))
    assert "\n" not in str(err.value) and "cifar-10-batches-py" in str(err.value)


def write_fake_cifar10(root, per_file=3):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, per_file).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def write_fake_cifar100(root, per_file=3):
    folder = root / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("train", "test"):
        batch = {"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                 "fine_labels": rng.integers(0, 100, per_file).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch file as CIFAR's own are: a Python 2 protocol-2 pickle (numpy.core's names, byte strings)."""
    raw = data.tobytes()
    return (b"\x80\x02}q\x01(U\x04dataq\x02cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04"
            b"K\x00\x85U\x01b\x87Rq\x05(K\x01J" + struct.pack("<i", len(data)) + b"M\x00\x0c\x86cnumpy\ndtype\nq\x06"
            b"U\x02u1K\x00K\x01\x87Rq\x07(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T"
            + struct.pack("<I", len(raw)) + raw + b"tbU\x06labelsq\x08](" + b"".join(b"K" + bytes([y]) for y in labels)
            + b"eu.")


def test_cifar10_batch_files_as_cifar_ships_them_load(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    images = np.arange(6 * 3072, dtype=np.uint8).reshape(6, 3072)
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        (folder / name).write_bytes(py2_batch(images[i:i + 1], [i]))
    dm = build_datamodule(data_config(name="cifar10", root=str(tmp_path), batch_size=1, image_size=32))
    assert sorted(dm.y_train.tolist()) == [0, 1, 2, 3, 4] and dm.y_val.tolist() == [5]
    assert (dm.x_val.flatten() == torch.from_numpy(images[5])).all()


class RunsCode:
    """A pickle that calls os.system when read (here: creates a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_cifar_batch_file_whose_pickle_would_run_code_is_refused_and_never_run(tmp_path, run_cli):
    write_fake_cifar10(tmp_path)
    planted, marker = tmp_path / "cifar-10-batches-py" / "data_batch_3", tmp_path / "code-ran"
    planted.write_bytes(pickle.dumps({"data": RunsCode(marker), "labels": [0]}))
    (tmp_path / "trial.yaml").write_text(f"data: {{name: cifar10, root: {tmp_path}}}\n")
    proc = run_cli("train", "trial.yaml")
    assert proc.returncode == 2 and not marker.exists()
    assert proc.stderr == (f"ablate: error: trial.yaml: data.root: {planted} is not a CIFAR-10 batch file "
                           "(UnpicklingError: it would import posix.system, and a batch file holds arrays and lists "
                           "only (refused, never called))\n")
    assert not (tmp_path / "mlruns").exists()  # refused before the store


def test_fake_cifar10_loads(tmp_path):
    write_fake_cifar10(tmp_path)
    dm = build_datamodule(data_config(name="cifar10", root=str(tmp_path), batch_size=4, image_size=32, hflip=0.5))
    assert (dm.num_classes, dm.in_chans, dm.image_size) == (10, 3, 32)
    assert dm.x_train.shape == (15, 3, 32, 32) and dm.x_val.shape == (3, 3, 32, 32)
    x, y = first_batch(dm)
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.int64
    # image_size other than 32: resized on the fly
    dm = build_datamodule(data_config(name="cifar10", root=str(tmp_path), batch_size=4, image_size=48))
    assert first_batch(dm, train=False)[0].shape == (3, 3, 48, 48)


def write_image_folder(root, splits=("train", "val"), classes=("cat", "dog"), per_class=3):
    rng = np.random.default_rng(0)
    for split in splits:
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")


def test_imagefolder_loads(tmp_path):
    write_image_folder(tmp_path)
    dm = build_datamodule(data_config(name="imagefolder", root=str(tmp_path), image_size=32, batch_size=4))
    assert (dm.num_classes, dm.in_chans, dm.image_size) == (2, 3, 32)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and set(y.tolist()) <= {0, 1}
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 32, 32)


def test_imagefolder_batches_travel_as_uint8_and_normalise_on_the_device_like_timms_float_transforms(tmp_path):
    write_image_folder(tmp_path)
    batches = {}
    for on_device in (True, False):
        dm = build_datamodule(data_config(name="imagefolder", root=str(tmp_path), image_size=32, batch_size=4,
                                         on_device=on_device))
        raw = next(iter(dm.val_dataloader()))
        assert raw[0].dtype == (torch.uint8 if on_device else torch.float32)  # a quarter of the bytes to copy
        batches[on_device] = dm.transform_batch(raw, train=False)
    (x, y), (ref_x, ref_y) = batches[True], batches[False]
    assert x.dtype == torch.float32 and torch.equal(y, ref_y)
    torch.testing.assert_close(x, ref_x, atol=1e-5, rtol=0)  # the same input as timm's ToTensor + Normalize


def test_imagefolder_missing_val_raises(tmp_path):
    write_image_folder(tmp_path, splits=("train",))
    with pytest.raises(AblateError, match="data.root") as err:
        build_datamodule(data_config(name="imagefolder", root=str(tmp_path)))
    assert "val" in str(err.value) and "\n" not in str(err.value)


def small_config(name, tmp_path):
    """A config for `name` that builds in a blink, with fake CIFAR / image folders under tmp_path."""
    if name == "cifar10":
        write_fake_cifar10(tmp_path)
    elif name == "cifar100":
        write_fake_cifar100(tmp_path)
    elif name == "imagefolder":
        write_image_folder(tmp_path)
    keys = {"root": str(tmp_path)} if name in ("cifar10", "cifar100", "imagefolder") else {
        "train_size": 20, "val_size": 10}  # the fake folders hold a few images
    if name in ("synthetic", "imagefolder"):
        keys["num_classes"] = 2
    return data_config(name=name, image_size=16, batch_size=4, **keys)


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_every_dataset_keeps_the_datamodule_contract(name, tmp_path):
    cfg = small_config(name, tmp_path)
    check_data(cfg)
    dm = build_datamodule(cfg)
    assert dataset_shape(cfg) == (dm.num_classes, dm.in_chans)  # what a dry run builds the model for
    assert dm.image_size == dm.test_size == 16 and len(dm.classes) == dm.num_classes  # test_size: null
    assert dm.mean.shape == dm.std.shape == (dm.in_chans,) and bool((dm.std > 0).all())
    x, y = dm.transform_batch(next(iter(dm.val_dataloader())), train=False)
    assert x.shape[1:] == (dm.in_chans, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    reported = dm.reported_dataloader()  # without a holdout, the split val/* measure, unsharded
    assert len(reported.dataset) == len(dm.val_dataloader().dataset)


def samples(loader) -> int:
    return sum(len(y) for _, y in loader)


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_every_dataset_carves_its_holdout_out_of_training(name, tmp_path):
    """data.holdout: val/* on samples held out of the training split, the dataset's own val split reported."""
    plain = build_datamodule(small_config(name, tmp_path))
    dm = build_datamodule(plain.cfg.model_copy(update={"holdout": 2}), train_seed=1)
    assert len(dm.train_dataloader().sampler) == len(plain.train_dataloader().sampler) - 2  # training shrinks
    assert samples(dm.val_dataloader()) == 2  # validation: the holdout
    assert samples(dm.reported_dataloader()) == samples(plain.val_dataloader())  # reported: the val split, whole
    x, _ = dm.transform_batch(next(iter(dm.val_dataloader())), train=False)
    again, _ = dm.transform_batch(next(iter(dm.val_dataloader())), train=False)
    assert torch.equal(x, again)  # held-out images are read as validation images are: no augmentation


def test_lightning_trainer_applies_batch_transform():
    import pytorch_lightning as pl

    seen = []

    class Probe(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(3 * 8 * 8, 4)

        def training_step(self, batch, _):
            seen.append(("train", batch[0].dtype))
            return torch.nn.functional.cross_entropy(self.head(batch[0].flatten(1)), batch[1])

        def validation_step(self, batch, _):
            seen.append(("val", batch[0].dtype))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = build_datamodule(data_config(name="synthetic", num_classes=4, image_size=8, batch_size=8, hflip=0.5))
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
                         accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(Probe(), datamodule=dm)
    assert seen == [("train", torch.float32)] * 2 + [("val", torch.float32)]
