"""What a configuration's training step costs, measured before anything trains: time relative to the plain backbone,
and peak memory.

GMACs hide what attention costs a GPU (SE adds 0.1% GMACs to ResNet-50 and takes 13-29% of its training
throughput on an A100: its pooling and gating are memory-bound kernels that a MAC count does not see). So each
configuration is priced by a micro-benchmark of its step, forward + backward + optimizer step, at the study's batch
shape, on the study's device and precision and memory format, eager (a compiled step's price is its compile's, not
its step's): `WARMUP` steps first, then `REPEATS` rounds that time one step of every model in turn, each round in a
rotated order, so that a drift of the machine (another process, a clock) falls on every configuration alike; the
price is the median of each model's times over the median of its plain backbone's (attention none, all else equal).
On a CPU the batch is capped at `CPU_PIXELS` (8 images of 224 px: a ResNet-50 step of 256 would take a minute and
20 GB); the price then says the batch it was measured at.

Peak memory is what one step of the configuration alone holds at its height: on CUDA the allocator's peak over the
step plus the model's parameters, buffers and optimizer state; on a CPU torch's MemTracker (which follows every
tensor the step makes) in a separate, untimed step.
"""
from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from torch.distributed._tools.mem_tracker import MemTracker  # torch's tensor-by-tensor accounting (any device)

from ablate.config import TrialConfig
from ablate.data import dataset_shape
from ablate.models import build_model
from ablate.plan import Cell
from ablate.spec import StudySpec, trial_config

__all__ = ["CPU_PIXELS", "REPEATS", "WARMUP", "StepPrice", "price_cells", "price_configs", "price_records"]

WARMUP, REPEATS = 2, 5
CPU_PIXELS = 8 * 224 * 224  # images x height x width a CPU prices a step at, at most
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


@dataclass(frozen=True)
class StepPrice:
    step_time_ratio: float  # the step's median time over its plain backbone's
    peak_mem_mb: float
    step_ms: float  # the step's median time
    batch: int  # the images per step it was priced at
    device: str


def price_cells(spec: StudySpec, cells: list[Cell]) -> dict[str, StepPrice]:
    """Each cell's price (by cell key), interleaved with the plain backbones they are relative to."""
    first_seed = spec.cfg.study.seed_list[0]
    return price_configs({cell.key: trial_config(spec, cell.params, first_seed) for cell in cells})


def price_records(spec: StudySpec, cells: list[Cell]) -> dict[str, dict]:
    """price_cells as a study stores them (plain dicts: Optuna's user attrs, the plan's step_prices)."""
    return {key: asdict(price) for key, price in price_cells(spec, cells).items()}


def price_configs(configs: dict[str, TrialConfig]) -> dict[str, StepPrice]:
    """Each config's price; its plain backbone (attention none, all else equal) is priced beside it, once."""
    plain_of = {key: plain(cfg) for key, cfg in configs.items()}
    steps: dict[str, Step] = {}
    for cfg in [*configs.values(), *plain_of.values()]:
        if model_key(cfg) not in steps:  # a grid's cells that differ in training keys only share a step
            steps[model_key(cfg)] = Step(cfg)
    times = interleaved(list(steps.values()))
    out = {}
    for key, cfg in configs.items():
        step, base = steps[model_key(cfg)], steps[model_key(plain_of[key])]
        out[key] = StepPrice(times[step] / times[base], step.peak_mem_mb(), 1e3 * times[step], step.batch,
                             str(step.device))
    return out


def plain(cfg: TrialConfig) -> TrialConfig:
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"attention": cfg.model.attention.model_copy(
        update={"name": "none", "knobs": {}})})})


def model_key(cfg: TrialConfig) -> str:
    """What makes two configs' steps the same step (the seed, epochs and tracking do not)."""
    train = cfg.train
    return " ".join([cfg.model.model_dump_json(), cfg.data.model_dump_json(), train.optimizer, train.precision,
                     train.accelerator, str(train.channels_last)])


def device_of(accelerator: str) -> torch.device:
    """The device a trial of this accelerator setting trains on (Lightning's choice for `auto`)."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if accelerator in ("auto", "gpu", "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class Step:
    """One configuration's model, optimizer and synthetic batch on its device, ready to take a training step."""

    def __init__(self, cfg: TrialConfig):
        self.device = device_of(cfg.train.accelerator)
        num_classes, in_chans = dataset_shape(cfg.data)
        model_cfg = cfg.model.model_copy(update={"pretrained": False, "checkpoint": None})
        self.model = build_model(model_cfg, num_classes, in_chans, cfg.data.image_size).model.to(self.device)
        per_device = cfg.data.batch_size // (cfg.train.devices if isinstance(cfg.train.devices, int) else 1)
        size = cfg.data.image_size
        cap = max(1, CPU_PIXELS // size**2) if self.device.type == "cpu" else per_device
        self.batch = min(per_device, cap)
        layout = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=layout).train()
        self.x = torch.randn(self.batch, in_chans, size, size, device=self.device).contiguous(memory_format=layout)
        self.y = torch.randint(0, num_classes, (self.batch,), device=self.device)
        self.optimizer = create_optimizer_v2(self.model, cfg.train.optimizer, lr=1e-6, momentum=cfg.train.momentum,
                                             weight_decay=cfg.train.weight_decay)  # a tiny lr: the weights stay sane
        dtype = AUTOCAST.get(cfg.train.precision)
        self.autocast = lambda: torch.autocast(self.device.type, dtype=dtype) if dtype else nullcontext()

    def __call__(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.optimizer.step()

    def timed(self) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        self()
        synchronize(self.device)
        return time.perf_counter() - start

    def peak_mem_mb(self) -> float:
        if self.device.type == "cuda":  # every model is resident while they are priced: count this one's own
            self.optimizer.zero_grad(set_to_none=True)
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            self()
            synchronize(self.device)
            own = sum(t.numel() * t.element_size() for t in persistent(self.model, self.optimizer))
            return (torch.cuda.max_memory_allocated(self.device) - before + own) / 2**20
        tracker = MemTracker()
        tracker.track_external(self.model, self.optimizer)
        with tracker:
            self()
        return tracker.get_tracker_snapshot("peak")[self.device]["Total"] / 2**20


def persistent(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    return [*model.parameters(), *model.buffers(), *state]


def interleaved(steps: list[Step]) -> dict[Step, float]:
    """Each step's median time (seconds) over REPEATS rounds, one step of each per round in a rotated order."""
    for step in steps:
        for _ in range(WARMUP):
            step()
    times = {step: [] for step in steps}
    for r in range(REPEATS):
        for step in steps[r % len(steps):] + steps[:r % len(steps)]:
            times[step].append(step.timed())
    return {step: statistics.median(t) for step, t in times.items()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
