"""A finished trial's evaluated weights as an MLflow 3 LoggedModel (the run's Models column; `models:/<model_id>`).

`mlflow.pytorch.log_model` pickles the whole network, so `mlflow.pytorch.load_model("models:/<id>")` gives back the
nn.Module it was, backbone and attention modules, without ablate's config. Pickle, not MLflow's default pt2: a
torch.export graph needs an example input to trace and loads as a graph, not as the modules; a pickle runs code
when loaded, so load models from stores you trust. The model is linked to the trial's run (its source_run_id, the
run's outputs) at the trial's last epoch, so it carries that epoch's metrics. It sits beside the run's model.pt
(tracking.WEIGHTS, a state_dict that `ablate gradcam` rebuilds from config.yaml: no pickle, so it survives changes
to the classes). Kept cheap: the pip requirements are given (pinned from the installed distributions of the
modules the model's classes come from), so MLflow does not infer the environment by loading the model in a
subprocess; a module no distribution installs (a --plugin file beside the study) travels with the model as code
(`code_paths`), so it loads in a fresh process that cannot import the plugin itself.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions, version
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
from mlflow import MlflowClient
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from torch import nn

NAME = "model"  # the LoggedModel's name; its id is what the UI and `models:/<model_id>` use


@contextmanager
def fluent_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API (log_model reads no client's URI) on the trial's store, then the caller's setting again:
    set_tracking_uri also sets $MLFLOW_TRACKING_URI, which a trial must not leave changed."""
    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env


def environment(model: nn.Module) -> tuple[list[str], list[str]]:
    """(pip requirements, code paths) that loading the pickled `model` needs: torch and cloudpickle (MLflow's own
    defaults), the installed distribution of each top-level module a class of the model comes from, pinned; the
    files of those no distribution installs."""
    requirements = mlflow.pytorch.get_default_pip_requirements()
    named = {r.split("==")[0].lower() for r in requirements}
    code: list[str] = []
    for top in sorted({type(m).__module__.split(".")[0] for m in model.modules()} - {"__main__", "builtins"}):
        spec = importlib.util.find_spec(top)
        origin = Path(spec.origin) if spec is not None and spec.origin else None
        dists = installed_as(top, origin)
        if dists:
            requirements += [f"{d}=={version(d)}" for d in dists if d.lower() not in named]
            named |= {d.lower() for d in dists}
        elif origin is not None:
            code.append(str(origin.parent if origin.name == "__init__.py" else origin))
    return requirements, code


def installed_as(top: str, origin: Path | None) -> list[str]:
    """The distributions that install module `top`: the one of its own name (torch, timm, ablate), else, for a
    module under site-packages, by importlib's scan of every installed distribution (seconds: only then)."""
    try:
        return [distribution(top).metadata["Name"]]
    except PackageNotFoundError:
        pass
    if origin is not None and any(part in ("site-packages", "dist-packages") for part in origin.parts):
        return _distributions().get(top, [])
    return []


@cache
def _distributions() -> dict[str, list[str]]:
    return packages_distributions()  # top-level module -> the installed distributions providing it


def signature(in_chans: int, image_size: int, num_classes: int) -> ModelSignature:
    """Float32 images (N, C, H, W) in, logits (N, classes) out: what the UI shows, without running the model."""
    return ModelSignature(Schema([TensorSpec(np.dtype(np.float32), (-1, in_chans, image_size, image_size))]),
                          Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]))


def log_trial_model(client: MlflowClient, run_id: str, model: nn.Module, sig: ModelSignature, step: int) -> str:
    """Log `model` (moved to the CPU, in eval mode: it loads on any machine and predicts as it was scored) as the
    run's LoggedModel at `step`; returns its model id."""
    model = model.cpu().eval()
    requirements, code = environment(model)
    run = client.get_run(run_id)
    # created here, in the run's experiment (log_model would put it in the fluent API's active one), with its params
    logged = client.create_logged_model(run.info.experiment_id, name=NAME, source_run_id=run_id,
                                        params=run.data.params)
    log = logging.getLogger("mlflow.pytorch")
    level = log.level
    log.setLevel(logging.ERROR)  # its warning that a pickle runs code when loaded, every trial: said once, above
    try:
        with fluent_uri(client.tracking_uri):
            mlflow.pytorch.log_model(model, name=NAME, model_id=logged.model_id, run_id=run_id, step=step,
                                     signature=sig, pip_requirements=requirements, code_paths=code or None,
                                     serialization_format="pickle")
    finally:
        log.setLevel(level)
    return logged.model_id
