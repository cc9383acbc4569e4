"""Training-step time of ablate's attention modules against timm's own implementations.

Run by hand (never a test):

    python benchmarks/modules.py --quick          # smoke run, a minute or two
    python benchmarks/modules.py                  # full table (several minutes on 2 cores)

For every ablate module that timm also implements, on each backbone configuration this times one
training step (forward + backward, `ablate.cost.train_step_seconds`) of

  plain  the backbone alone,
  ours   the backbone + ablate's module, put in by `ablate.inject.inject`,
  timm   the backbone + timm's class, put in by the same `inject` at the same places with the same
         channel counts and settings (a temporary adapter registered in this process only).

Measurements are interleaved: every round visits every model once, in a freshly shuffled order, so
load from other jobs on a shared machine falls on all variants alike. Times are medians over rounds;
ratios are medians of the per-round paired ratios, with their inter-quartile range as a noise gauge.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import timm  # noqa: E402
import torch  # noqa: E402
from timm.layers import EcaModule, GatherExcite, GlobalContext, SelectiveKernel, SEModule, SplitAttn  # noqa: E402
from timm.layers.bottleneck_attn import BottleneckAttn  # noqa: E402
from timm.layers.cbam import CbamModule  # noqa: E402  (not re-exported by timm.layers)
from timm.layers.coord_attn import CoordAttn  # noqa: E402
from timm.layers.halo_attn import HaloAttn  # noqa: E402
from torch import nn  # noqa: E402

from ablate.attention import get_attention, register_attention  # noqa: E402
from ablate.config import AttentionSpec  # noqa: E402
from ablate.cost import train_step_seconds  # noqa: E402
from ablate.inject import inject  # noqa: E402

# ----------------------------------------------------------------------------- timm adapters
# Each builds timm's class with the widths and settings ablate's module uses for the same knobs, so the
# two variants differ only in implementation (differences timm cannot express are noted).


def _timm_se(channels, reduction=16):
    return SEModule(channels, rd_channels=max(1, channels // reduction))


def _timm_eca(channels, kernel_size=None, gamma=2.0, b=1.0):
    return EcaModule(channels if kernel_size is None else None, kernel_size=kernel_size or 3, gamma=gamma, beta=b)


def _timm_cbam(channels, reduction=16, pool_types=("avg", "max"), kernel_size=7, arrangement="channel_first",
               spatial_norm=False):
    # timm: avg + max pools, channel then spatial, BatchNorm after the spatial conv always (ours: knob)
    if tuple(pool_types) != ("avg", "max") or arrangement != "channel_first":
        raise ValueError("timm's CbamModule has only avg+max pools, channel_first")
    return CbamModule(channels, rd_channels=max(1, channels // reduction), spatial_kernel_size=kernel_size,
                      mlp_bias=True)


def _timm_gc(channels, reduction=16, fusion="add"):
    return GlobalContext(channels, use_attn=True, fuse_add=fusion == "add", fuse_scale=fusion == "scale",
                         rd_channels=max(1, channels // reduction))


def _timm_gather_excite(channels, extent=0, extra_params=False, excite_mlp=False):
    if extra_params:  # timm 1.0.31 passes *dd for **dd there and fails to build
        raise ValueError("timm's GatherExcite cannot build extra_params=True (timm 1.0.31)")
    return GatherExcite(channels, extent=extent, extra_params=False, use_mlp=excite_mlp,
                        rd_channels=max(1, channels // 16))


def _timm_coord(channels, reduction=32):
    return CoordAttn(channels, rd_channels=max(8, channels // reduction), bias=True)


def _timm_sk(channels, out_channels, stride=1, feat_size=None, reduction=16, groups=32, min_attn_channels=32,
             split_input=False):
    return SelectiveKernel(channels, out_channels, kernel_size=[3, 5], stride=stride, groups=groups,
                           rd_channels=max(out_channels // reduction, min_attn_channels), split_input=split_input)


def _timm_split_attn(channels, out_channels, stride=1, feat_size=None, radix=2, reduction=4, groups=1, avd=False):
    if avd:
        raise ValueError("avd is ResNeSt's block, not SplitAttn")
    return SplitAttn(channels, out_channels, kernel_size=3, stride=stride, groups=groups, radix=radix,
                     rd_ratio=1.0 / reduction, norm_layer=nn.BatchNorm2d)


def _timm_bot_mhsa(channels, out_channels, stride=1, feat_size=None, heads=4):
    return BottleneckAttn(channels, out_channels, feat_size=tuple(feat_size), stride=stride, num_heads=heads,
                          dim_head=out_channels // heads, scale_pos_embed=True)


def _timm_halo(channels, out_channels, stride=1, feat_size=None, block_size=8, halo_size=3, heads=8):
    return HaloAttn(channels, out_channels, feat_size=feat_size, stride=stride, num_heads=heads,
                    dim_head=out_channels // heads, block_size=block_size, halo_size=halo_size)


TIMM = {
    "se": ("timm.layers.SEModule", _timm_se),
    "eca": ("timm.layers.EcaModule", _timm_eca),
    "cbam": ("timm.layers.cbam.CbamModule", _timm_cbam),
    "gc": ("timm.layers.GlobalContext", _timm_gc),
    "gather_excite": ("timm.layers.GatherExcite", _timm_gather_excite),
    "coord": ("timm.layers.coord_attn.CoordAttn", _timm_coord),
    "sk": ("timm.layers.SelectiveKernel", _timm_sk),
    "split_attn": ("timm.layers.SplitAttn", _timm_split_attn),
    "bot_mhsa": ("timm.layers.bottleneck_attn.BottleneckAttn", _timm_bot_mhsa),
    "halo": ("timm.layers.halo_attn.HaloAttn", _timm_halo),
}


def register_timm_adapters() -> None:
    """Register `timm:<name>` next to each of ours, with our knobs, kind and norm/act behaviour."""
    for name, (source, factory) in TIMM.items():
        ours = get_attention(name)
        register_attention(f"timm:{name}", kind=ours.kind, paper=ours.paper, knobs=ours.knobs, source=source,
                           includes_norm_act=ours.includes_norm_act)(factory)


# ----------------------------------------------------------------------------- what to measure

@dataclass
class Case:
    module: str
    position: str = "block"
    stages: list[int] | None = None
    knobs: dict = field(default_factory=dict)
    label: str = ""  # row name when one module appears with several settings

    def where(self) -> str:
        stages = "all stages" if not self.stages else (
            f"stage {self.stages[0]}" if len(self.stages) == 1 else f"stages {','.join(map(str, self.stages))}")
        knobs = "".join(f", {k}={v}" for k, v in self.knobs.items())
        return f"{self.position}, {stages}{knobs}"


@dataclass
class Config:
    backbone: str
    image_size: int
    batch: int
    num_classes: int
    cases: list[Case]


GATES = ["se", "eca", "cbam", "gc", "gather_excite", "coord"]


def configs(args) -> list[Config]:
    gates = [Case(m) for m in GATES]
    gates.insert(3, Case("cbam", knobs={"spatial_norm": True}, label="cbam+bn"))  # timm's CBAM always has BN
    small = gates + [
        Case("sk", "conv"),
        Case("split_attn", "conv"),
        # resnet18 at 32px: conv2 maps are 8, 4, 2, 1 px in stages 1-4
        Case("bot_mhsa", "conv", [3, 4]),
        Case("halo", "conv", [1, 2], {"block_size": 4, "halo_size": 2}),
    ]
    large = gates + [
        Case("sk", "conv"),
        Case("split_attn", "conv"),
        # resnet50 at 224px: stage 4's conv2 sees 14px (first, stride 2) then 7px
        Case("bot_mhsa", "conv", [4]),
        Case("halo", "conv", [4], {"block_size": 7, "halo_size": 3}),
    ]
    out = [Config("resnet18", 32, args.batch_small, 10, small), Config("resnet50", 224, args.batch_large, 1000, large)]
    if args.only:
        out = [Config(c.backbone, c.image_size, c.batch, c.num_classes,
                      [k for k in c.cases if (k.label or k.module) in args.only]) for c in out]
    return [c for c in out if c.backbone in args.backbones]


def build(cfg: Config, spec: AttentionSpec) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(cfg.backbone, num_classes=cfg.num_classes, pretrained=False)
    inject(model, spec, image_size=cfg.image_size, backbone=cfg.backbone)
    return model


def measure(cfg: Config, args) -> list[dict]:
    variants: dict[str, nn.Module] = {"plain": build(cfg, AttentionSpec())}
    for case in cfg.cases:
        key = case.label or case.module
        for impl, name in (("ours", case.module), ("timm", f"timm:{case.module}")):
            spec = AttentionSpec(name=name, position=case.position, stages=case.stages, knobs=case.knobs)
            variants[f"{key}/{impl}"] = build(cfg, spec)
    torch.manual_seed(1)
    batch = torch.randn(cfg.batch, 3, cfg.image_size, cfg.image_size)

    t0 = time.perf_counter()
    for model in variants.values():  # allocator and oneDNN caches warm for every shape first
        train_step_seconds(model, batch, repeats=1, warmup=args.warmup)
    print(f"# {cfg.backbone}@{cfg.image_size} batch {cfg.batch}: {len(variants)} models warmed up in "
          f"{time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)

    times = {k: [] for k in variants}
    cpu = {k: [] for k in variants}  # process CPU time per step: less sensitive to other jobs' load
    order = list(variants)
    rng = random.Random(0)
    for r in range(args.rounds):
        rng.shuffle(order)
        t0 = time.perf_counter()
        for key in order:
            c0 = time.process_time()
            times[key].append(train_step_seconds(variants[key], batch, repeats=args.steps, warmup=0))
            cpu[key].append((time.process_time() - c0) / args.steps)
        print(f"#   round {r + 1}/{args.rounds}: {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)

    plain = times["plain"]
    rows = []
    for case in cfg.cases:
        key = case.label or case.module
        ours, theirs = times[f"{key}/ours"], times[f"{key}/timm"]
        paired = [o / t for o, t in zip(ours, theirs)]
        paired_cpu = [o / t for o, t in zip(cpu[f"{key}/ours"], cpu[f"{key}/timm"])]
        q = statistics.quantiles(paired, n=4) if len(paired) >= 2 else [paired[0]] * 3
        rows.append(dict(
            config=f"{cfg.backbone}@{cfg.image_size} b{cfg.batch}", module=key, where=case.where(),
            plain=statistics.median(plain), ours=statistics.median(ours), timm=statistics.median(theirs),
            ours_timm=statistics.median(paired), iqr=(q[0], q[2]), ours_timm_cpu=statistics.median(paired_cpu),
            ours_plain=statistics.median(o / p for o, p in zip(ours, plain)),
            timm_plain=statistics.median(t / p for t, p in zip(theirs, plain)),
        ))
    del variants
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| config | module | where | plain ms | ours ms | timm ms | ours/timm (IQR) | ours/timm CPU time "
             "| ours/plain | timm/plain |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['module']} | {r['where']} | {r['plain'] * 1e3:.0f} | {r['ours'] * 1e3:.0f} | "
            f"{r['timm'] * 1e3:.0f} | {r['ours_timm']:.3f} ({r['iqr'][0]:.2f}-{r['iqr'][1]:.2f}) | "
            f"{r['ours_timm_cpu']:.3f} | "
            f"{r['ours_plain']:.2f} | {r['timm_plain']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-small", type=int, default=None, help="batch for resnet18@32 (default 64; quick 16)")
    p.add_argument("--batch-large", type=int, default=None, help="batch for resnet50@224 (default 8; quick 2)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7; quick 2)")
    p.add_argument("--steps", type=int, default=1,
                   help="timed steps per model per round, their median counts (default 1)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed steps per model before the rounds (default 2; quick 1)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch intra-op threads (use 1 when other jobs load the cores: 2 threads then stall "
                        "on each other and steps get several times slower and very noisy; default 2)")
    p.add_argument("--backbones", nargs="+", default=["resnet18", "resnet50"], choices=["resnet18", "resnet50"])
    p.add_argument("--only", nargs="+", help="rows to run (module names, or 'cbam+bn')")
    p.add_argument("--quick", action="store_true", help="small batches and few rounds: a smoke run")
    args = p.parse_args(argv)
    quick = dict(batch_small=16, batch_large=2, rounds=2)
    full = dict(batch_small=64, batch_large=8, rounds=7)
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.quick:
        args.warmup = min(args.warmup, 1)

    torch.set_num_threads(args.threads)
    register_timm_adapters()
    print(f"# torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds x {args.steps} step(s), warmup {args.warmup}", file=sys.stderr)
    rows = []
    t0 = time.perf_counter()
    for cfg in configs(args):
        rows += measure(cfg, args)
    print(table(rows))
    print(f"\n{args.rounds} interleaved rounds x {args.steps} step(s), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, timm {timm.__version__}; {time.perf_counter() - t0:.0f}s total. "
          f"Times: median wall time of a train step (forward+backward); ratios: median of per-round "
          f"paired ratios (wall, and process CPU time).")


if __name__ == "__main__":
    main()
