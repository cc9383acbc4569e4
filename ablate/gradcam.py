"""Grad-CAM of each configuration's best run on the same validation images, side by side (the CBAM paper's Fig. 4).

"Best" is the study's (first) objective in its direction, i.e. the final val/acc1 for every shipped study; ties go to
the earliest trial. Each configuration sees the first n samples of its own data config's validation split: the same
images whenever the configurations share a data config (ablations vary the model), and always the same positions;
the input row shows the first configuration's. The CAM targets the true class and each cell prints its softmax
probability P, as in the paper. Grad-CAM itself is pytorch-grad-cam's, not ours; the runs are read through
`ablate.results`, like the report's.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import torch
import yaml
from matplotlib.figure import Figure
from mlflow import MlflowClient
from optuna.study import StudyDirection
from optuna.trial import TrialState
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ablate import tracking
from ablate.config import parse_trial
from ablate.data import build_datamodule
from ablate.errors import AblateError, write_output
from ablate.formats import png
from ablate.models import build_model
from ablate.results import resolve_study, stored_runs_client, study_file, trials_frame
from ablate.storage import Attr, load
from ablate.tracking import WEIGHTS

ARTIFACT = "report/gradcam.png"
# a stage whose map is smaller than this a side says little about where: resnet10_narrow's layer4 is 1x1 at 32 px
MIN_SIDE = 4


@dataclass
class CamRow:
    label: str  # the configuration (the report's row name)
    trial: int
    run_id: str
    score: float  # the objective the run was chosen by
    layer: str  # the module the CAM was taken at, e.g. "layer2"
    feature_size: tuple[int, int] | None  # that module's output map (H, W); None when the caller named the layer
    images: np.ndarray  # (n, H, W, 3) float32 in [0, 1]: what this configuration's model saw
    cams: np.ndarray  # (n, H, W) float32 in [0, 1], pytorch-grad-cam's per-image scaling
    probs: np.ndarray  # (n,) softmax probability of the true class


@dataclass
class GradCamGrid:
    study: str
    parent_run_id: str | None  # the study's MLflow parent run, where the figure is logged
    targets: np.ndarray  # (n,) true class of each image
    class_names: list[str]
    rows: list[CamRow] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the figure: the input row plus one per configuration, one column per image."""
        return len(self.rows) + 1, len(self.targets)


# ---------------------------------------------------------------- choosing and loading the runs

def best_runs(study: optuna.Study, client: MlflowClient | None, spec=None) -> pd.DataFrame:
    """One row per configuration in the study's order: its best COMPLETE trial (trials_frame columns plus
    `objective`); configurations the study file no longer holds are left out, as in the report."""
    done = trials_frame(study, client, spec)
    done = done[(done["state"] == "COMPLETE") & done["in_file"]].copy() if len(done) else done
    if done.empty:
        raise AblateError(f"study {study.study_name!r} has no finished trials yet "
                          "(run it: ablate run <study file>)")
    values = {t.number: t.values[0] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    done["objective"] = done["number"].map(values)
    done = done.sort_values("number")  # ties go to the earliest trial: idxmax/idxmin take the first
    by_cell = done.groupby("cell")["objective"]
    best = by_cell.idxmax() if study.directions[0] == StudyDirection.MAXIMIZE else by_cell.idxmin()
    return done.loc[best].sort_values(["order", "number"]).reset_index(drop=True)


def load_run_model(client: MlflowClient, run_id: str, label: str):
    """The run's resolved TrialConfig and trained state_dict; an AblateError when it saved no weights."""
    if WEIGHTS not in {a.path for a in client.list_artifacts(run_id)}:
        raise AblateError(f"configuration {label!r}: its best run {run_id} has no {WEIGHTS}: the trials ran with "
                          "tracking.log_weights: false (or before weights were saved); run the study again under a "
                          "new name with weights, e.g. ablate run STUDY.yaml study.name=NEW tracking.log_weights=true")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(client.download_artifacts(run_id, "config.yaml", tmp))
        cfg = parse_trial(yaml.safe_load(config.read_text()), f"run {run_id}: config.yaml")
        state = torch.load(client.download_artifacts(run_id, WEIGHTS, tmp), map_location="cpu", weights_only=True)
    # the weights are model.pt's: no hub download, no local checkpoint
    cfg.model = cfg.model.model_copy(update={"pretrained": False, "checkpoint": None})
    return cfg, state


def build_trained(cfg, state, dm):
    model = build_model(cfg.model, dm.num_classes, dm.in_chans, dm.image_size).model
    model.load_state_dict(state, strict=True)
    return model.eval()


# ---------------------------------------------------------------- images and layer

def validation_batch(dm, n: int):
    """The first n images of the reported split (the table's, not a data.holdout) as (normalised model input,
    displayable (n, H, W, 3) image, labels)."""
    loader = dm.reported_dataloader()
    if n > len(loader.dataset):
        raise AblateError(f"--images: {n} is more than the {len(loader.dataset)} validation images "
                          f"(use at most {len(loader.dataset)}, or a larger data.val_size)")
    xs, ys = [], []
    for batch in loader:  # the datamodule's own eval transform: exactly what validation fed the model
        x, y = dm.transform_batch(batch, train=False)
        xs.append(x)
        ys.append(y)
        if sum(map(len, ys)) >= n:
            break
    x, y = torch.cat(xs)[:n], torch.cat(ys)[:n]
    # tensor datamodules normalise with their own channel stats; imagefolder with timm's ImageNet defaults
    mean = torch.as_tensor(getattr(dm, "mean", IMAGENET_DEFAULT_MEAN), dtype=x.dtype)[:, None, None]
    std = torch.as_tensor(getattr(dm, "std", IMAGENET_DEFAULT_STD), dtype=x.dtype)[:, None, None]
    image = (x * std + mean).clamp(0, 1)
    image = image.expand(-1, 3, -1, -1) if image.shape[1] == 1 else image  # grey digits: RGB for the overlay
    return x, image.permute(0, 2, 3, 1).numpy().astype(np.float32), y


def target_layer(model, x):
    """(name, module, (H, W)): the deepest timm feature stage whose map is at least MIN_SIDE a side, else the largest.

    The paper takes the last stage (7x7 for ResNet-50 at 224 px); on small images that stage can be 1x1, a constant."""
    stages = [info["module"] for info in getattr(model, "feature_info", None) or []]
    if not stages:
        raise AblateError(f"{type(model).__name__} has no timm feature_info: no feature stage to take Grad-CAM at")
    sizes, hooks = {}, []
    for name in stages:
        def record(_module, _inputs, out, name=name):  # returns None: the output passes through unchanged
            sizes[name] = tuple(out.shape[2:]) if isinstance(out, torch.Tensor) else ()
        hooks.append(model.get_submodule(name).register_forward_hook(record))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for hook in hooks:
            hook.remove()
    maps = [name for name in stages if len(sizes.get(name, ())) == 2]  # convolutional (N, C, H, W) outputs only
    if not maps:
        raise AblateError(f"{type(model).__name__}: no feature stage outputs an (N, C, H, W) map for Grad-CAM")
    wide = [name for name in maps if min(sizes[name]) >= MIN_SIDE]
    name = wide[-1] if wide else max(maps, key=lambda m: min(sizes[m]))
    return name, model.get_submodule(name), sizes[name]


# ---------------------------------------------------------------- the grid

def gradcam_grid(study, images: int = 6, storage: str | None = None, tracking_uri: str | None = None,
                 layer: str | None = None) -> GradCamGrid:
    """Grad-CAM (true class) of every configuration's best run on the same validation images."""
    resolved = resolve_study(study, tracking_uri)
    spec, tracking_uri = resolved.spec, resolved.tracking_uri
    optuna_study = load(resolved.name, storage)
    client = stored_runs_client(optuna_study, tracking_uri)
    best = best_runs(optuna_study, client, spec or study_file(optuna_study, client))
    loaded = [load_run_model(client, r.run_id, r.label) for r in best.itertuples()]  # every run checked first
    batches = {}  # data config -> (datamodule, batch): built once when the configurations share it
    grid = None
    for r, (cfg, state) in zip(best.itertuples(), loaded):
        data_cfg = cfg.data.model_copy(update={"num_workers": 0})  # a handful of images needs no workers
        key = data_cfg.model_dump_json()
        if key not in batches:
            dm = build_datamodule(data_cfg)
            batches[key] = dm, validation_batch(dm, images)
        dm, (x, shown, y) = batches[key]
        model = build_trained(cfg, state, dm)
        at, module, size = (layer, model.get_submodule(layer), None) if layer else target_layer(model, x)
        with GradCAM(model=model, target_layers=[module]) as cam:
            cams = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in y])
        with torch.no_grad():
            probs = model(x).softmax(-1)[torch.arange(len(y)), y].numpy()
        if grid is None:
            names = getattr(dm, "classes", None) or [str(c) for c in range(dm.num_classes)]
            grid = GradCamGrid(resolved.name, optuna_study.user_attrs.get(Attr.PARENT_RUN), y.numpy(), list(names))
        grid.rows.append(CamRow(r.label, int(r.number), r.run_id, float(r.objective), at, size, shown,
                                cams.astype(np.float32), probs))
    return grid


def draw_grid(grid: GradCamGrid) -> Figure:
    """The figure: row 0 the inputs (true label), then per configuration the CAM over each image, P(true class).
    Drawn on its own canvas: the caller's matplotlib backend is left alone."""
    n_rows, n_cols = grid.shape
    fig = Figure(figsize=(1.5 * n_cols + 1.6, 1.6 * n_rows + 0.5))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for j, target in enumerate(grid.targets):
        axes[0, j].imshow(grid.rows[0].images[j])
        axes[0, j].set_title(grid.class_names[target], fontsize=9)
    axes[0, 0].set_ylabel("input", fontsize=9)
    for i, row in enumerate(grid.rows, start=1):
        for j in range(n_cols):
            axes[i, j].imshow(show_cam_on_image(row.images[j], row.cams[j], use_rgb=True))
            axes[i, j].set_title(f"P={row.probs[j]:.2f}", fontsize=8)
        where = f"{row.layer} {'x'.join(map(str, row.feature_size))}" if row.feature_size else row.layer
        axes[i, 0].set_ylabel(f"{row.label}\n({where})", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{grid.study}: Grad-CAM (true class) of each configuration's best run", fontsize=10)
    fig.tight_layout()
    return fig


def write_gradcam(study, images: int = 6, out: str | None = None, storage: str | None = None,
                  tracking_uri: str | None = None) -> Path:
    """The figure as a PNG (default <study>_gradcam.png), also logged on the study's parent run."""
    grid = gradcam_grid(study, images, storage, tracking_uri)
    path = Path(out or f"{grid.study}_gradcam.png")
    fig = draw_grid(grid)
    write_output(path, png(fig), "--out")
    if grid.parent_run_id:  # the artifact keeps its fixed name whatever --out says
        tracking_uri = resolve_study(study, tracking_uri).tracking_uri
        tracking.make_client(tracking_uri).log_figure(grid.parent_run_id, fig, ARTIFACT)
    return path
