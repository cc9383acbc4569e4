"""A trial's data as its run's MLflow dataset inputs: runs group and filter by dataset in the UI (`dataset.name`,
`dataset.digest`, `dataset.context`), and a changed dataset shows as a new digest.

Each split the datamodule reads (data/base.py's DataSplit: training, validation, and with a holdout testing) is an
`mlflow.data.meta_dataset.MetaDataset`: metadata only, never the images. Its digest is ablate's, over the split's
content (the in-memory images and labels, or an image folder's file names and sizes), not MLflow's digest of the
metadata, which would not change when the data do. Its source is the folder it is read from (MLflow's local
artifact source: CIFAR's batch folder, an image folder's train/ or val/), or for data made in memory an
`mlflow.data.code_dataset_source.CodeDatasetSource` naming what makes it.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from mlflow import MlflowClient
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from ablate.data.base import DataSplit


def dataset(split: DataSplit) -> MetaDataset:
    if split.folder is not None:
        with warnings.catch_warnings():  # MLflow registers its local source for "" and "file:" and warns it found 2
            warnings.filterwarnings("ignore", ".*can be interpreted in multiple ways.*")
            source = resolve_dataset_source(Path(split.folder).as_uri())  # MLflow's LocalArtifactDatasetSource
    else:
        source = CodeDatasetSource({"made_by": split.made_by, "rows": str(split.rows)})
    return MetaDataset(source, name=split.name, digest=split.digest)


def log_datasets(client: MlflowClient, run_id: str, splits: list[DataSplit]) -> None:
    """Every split as a dataset input of the run, in one call, with its context (training, validation, testing)."""
    inputs = []
    for split in splits:
        entity = Dataset(**dataset(split).to_dict())  # what mlflow.log_input logs, for a run we hold by id
        inputs.append(DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, split.context)]))
    client.log_inputs(run_id, datasets=inputs)
