"""The data configs, one class per dataset: `data.name` picks the class, so a key that means nothing for that
dataset is refused, and each dataset carries its own defaults (CIFAR its native 32 px, an image folder ImageNet's
224 px).

Adding a dataset: a class here (its `name` literal and its own keys) in DATA_CONFIGS, and its datamodule in the
table ablate.data.DATASETS, keyed by the class.
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union, get_args

from pydantic import BeforeValidator, Field, TypeAdapter, field_validator

from ablate.config.base import SEED, Strict, effect

DEFAULT_DATASET = "cluttered-digits"  # a data section without a name


def image_size(px: int, why: str) -> Any:
    return Field(px, ge=8, le=2048, description=f"{why}; beyond 2048 px a batch no longer fits any accelerator")


class DataBase(Strict):
    """The keys every dataset takes. `num_classes` is a key where the user says it, a class constant where the
    dataset fixes it; `class_count` reads either."""

    name: str
    image_size: int = image_size(64, "side of the square input")
    batch_size: int = Field(64, ge=1)
    num_workers: int = Field(0, ge=0, json_schema_extra=effect("run"))
    on_device: bool = Field(True, json_schema_extra=effect("run"),
                            description="in-memory datasets live on the accelerator (no copy per batch); "
                            "imagefolder batches travel as uint8 and are normalised on the device")
    train_size: int | None = Field(None, ge=1, description="samples in the train split; null = dataset default")
    val_size: int | None = Field(None, ge=1)
    auto_augment: str | None = Field(None, description="timm spec: 'rand-m9-mstd0.5' (RandAugment), 'original'")
    hflip: float = Field(0.0, ge=0, le=1)
    repeated_aug: int = Field(1, ge=1, le=16, description="repeated augmentation: each image this many times per "
                              "epoch, each copy augmented on its own, in an epoch of the usual length (timm's "
                              "RepeatAugSampler; ResNet strikes back: 3)")
    test_size: int | None = Field(None, ge=8, le=2048, description="side of the evaluated input; null = image_size "
                                  "(ResNet strikes back A3 trains at 160 px and tests at 224)")
    crop_pct: float | None = Field(None, gt=0, le=1, description="test crop ratio: resize to test_size / crop_pct, "
                                   "centre-crop test_size; null = the dataset's default (imagefolder: timm's 0.875, "
                                   "in-memory data: no crop)")
    # data.seed fixes the dataset itself: which images are in each split (and the holdout), the synthesised
    # images, the subsets; so every seed and configuration of a study is scored on the same images
    seed: int = SEED
    order: Literal["seed", "fixed"] = Field("seed", description="what draws the training order and augmentation: "
                                            "seed = train.seed (each seed of a study its own batches), fixed = "
                                            "data.seed (every seed the same batches: only init, dropout, mixup vary)")
    holdout: int | float | None = Field(None, description="samples (an int >= 1) or a fraction in (0, 1) of the "
                                        "training split held out to select on: val/* then measure them, and the "
                                        "dataset's own val/test split is scored once at the end as test/*")

    @field_validator("holdout")
    @classmethod
    def _holdout(cls, v):
        if v is not None and not (isinstance(v, int) and v >= 1 or isinstance(v, float) and 0 < v < 1):
            raise ValueError(f"{v!r} is neither a number of samples (an integer >= 1) nor a fraction in (0, 1)")
        return v

    @property
    def class_count(self) -> int:
        """How many classes the model predicts."""
        return self.num_classes


class DigitsData(DataBase):
    """scikit-learn's 1797 bundled 8x8 digits, upscaled to image_size."""

    name: Literal["digits"] = "digits"
    num_classes: ClassVar[int] = 10


class ClutteredDigitsData(DataBase):
    """One digit among stroke-sized fragments of others, synthesised from the bundled digits."""

    name: Literal["cluttered-digits"] = "cluttered-digits"
    clutter: int = Field(4, ge=0, description="fragments per canvas")
    num_classes: ClassVar[int] = 10


class SyntheticData(DataBase):
    """Random but learnable images: one smooth template per class, plus noise."""

    name: Literal["synthetic"] = "synthetic"
    num_classes: int = Field(10, ge=2, description="classes to synthesise")


class CifarData(DataBase):
    """CIFAR's batch files under data.root, or downloaded there."""

    root: str | None = Field(None, json_schema_extra=effect("run"),
                             description="the folder that holds cifar-10-batches-py or cifar-100-python")
    download: bool = Field(False, json_schema_extra=effect("run"),
                           description="fetch the dataset into data.root when it is not there")
    image_size: int = image_size(32, "CIFAR's own 32 px; other sizes are resized on the device")


class Cifar10Data(CifarData):
    name: Literal["cifar10"] = "cifar10"
    num_classes: ClassVar[int] = 10


class Cifar100Data(CifarData):
    name: Literal["cifar100"] = "cifar100"
    num_classes: ClassVar[int] = 100


class ImageFolderData(DataBase):
    """Images in ImageNet's layout: root/train/<class>/* and root/val/<class>/*."""

    name: Literal["imagefolder"] = "imagefolder"
    root: str | None = Field(None, json_schema_extra=effect("run"), description="the folder that holds train/ and val/")
    image_size: int = image_size(224, "ImageNet's 224 px crops")
    num_classes: int = Field(10, ge=2, description="the class folders (a dry run builds the model without them)")


DATA_CONFIGS: tuple[type[DataBase], ...] = (DigitsData, ClutteredDigitsData, SyntheticData, Cifar10Data,
                                            Cifar100Data, ImageFolderData)
DATASET_NAMES = tuple(name for config in DATA_CONFIGS for name in get_args(config.model_fields["name"].annotation))


def _default_name(value: Any) -> Any:
    # a data section without a name was the default dataset's before each dataset had its schema; it still is
    if isinstance(value, dict) and "name" not in value:
        return {"name": DEFAULT_DATASET, **value}
    return value


# the `data` section: its name picks the class (pydantic's discriminated union)
DataConfig = Annotated[Union[DATA_CONFIGS], Field(discriminator="name"), BeforeValidator(_default_name)]
_DATA = TypeAdapter(DataConfig)


def data_config(**values: Any) -> DataBase:
    """The data config `values` describe, validated as a trial file's `data` section is (name: its dataset)."""
    return _DATA.validate_python(values)
