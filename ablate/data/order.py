"""The training order, resumable and shardable: what a trial's checkpoint holds of the data.

A datamodule draws its training batches through `ResumableOrder.shuffled_batches`: a shuffled order and an
augmentation stream (crops, flips) of its own, both drawn from `order_seed`: the trial's train.seed under
data.order: seed (the default: each seed of a study sees its own batches), data.seed under data.order: fixed (every
seed the same batches). A fresh loader replays the same order. Their state (both streams, and how far into the epoch
training got) goes into the trial's Lightning checkpoint, so a resumed trial draws the batches the uninterrupted one
would have. On several devices every rank draws the same order and takes its slice of each batch; the validation set
is sharded every N-th sample.

data.repeated_aug: N draws the order as timm's RepeatAugSampler does (DeiT's repeated augmentation): a shuffled
permutation with each index N times in a row, cut to the usual epoch (len(data) samples, so an epoch has the
batches it has without it), each copy augmented on its own (crops and flips are drawn per batch position, timm's
transforms per sample); its per-epoch seed is drawn from the same resumable stream. On R devices each rank takes
every R-th sample of a batch (timm's rank-strided split), so the copies of an image go to different ranks.
Unlike timm's default, the epoch is not rounded down to a multiple of 256 samples (timm's selected_round): the
epoch keeps the batch count, and the schedule the length, of a trial without repeats.
"""
from __future__ import annotations

import itertools

import torch
from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import BatchSampler, Dataset, RandomSampler, Sampler, Subset

from ablate.errors import AblateError


class ResumableOrder:
    """The resumable, shardable training order of a LightningDataModule (a mixin: it reads `self.cfg`, a data
    config, and `self.trainer`, and provides Lightning's `state_dict` and `load_state_dict`)."""

    _resume: dict | None = None  # a checkpoint's state, applied when the next training loader is built
    order_seed: int  # what draws the training order and augmentation (seed_order)

    def seed_order(self, train_seed: int | None = None) -> None:
        """Draw the training order and augmentation from the trial's `train_seed` (data.order: seed) or from
        data.seed (data.order: fixed, or outside a trial, where there is no train.seed)."""
        fixed = train_seed is None or self.cfg.order == "fixed"
        self.order_seed = self.cfg.seed if fixed else train_seed
        self._aug_gen = torch.Generator().manual_seed(self.order_seed + 2)  # transform_batch outside a Trainer

    def shuffled_batches(self, data: Dataset) -> ResumableBatchSampler:
        """The training batches in a shuffled order drawn from `order_seed` (a fresh loader replays the same
        order), or where a restored checkpoint left off."""
        rank, ranks = self._rank()
        self._shuffle = torch.Generator().manual_seed(self.order_seed + 1)  # the same order on every rank
        if ranks > 1 and len(data) < self.cfg.batch_size:  # every rank must get the same number of batches
            raise AblateError(f"data.batch_size: {self.cfg.batch_size} is more than the {len(data)} training samples "
                              f"of a trial on {ranks} devices")
        repeats = self.cfg.repeated_aug
        order = (RandomSampler(data, generator=self._shuffle) if repeats == 1
                 else RepeatedOrder(len(data), repeats, generator=self._shuffle))
        self._batches = ResumableBatchSampler(order, self.cfg.batch_size, drop_last=len(data) >= self.cfg.batch_size,
                                              rank=rank, ranks=ranks, strided=repeats > 1)
        # each rank crops and flips its own images with its own stream
        self._aug_gen = torch.Generator().manual_seed(self.order_seed + 2 + 7919 * rank)
        resume, self._resume = self._resume, None
        if resume is not None:
            self._aug_gen.set_state(resume["augment"])
            if resume["skip"]:  # stopped mid-epoch: that epoch's order again, less the batches trained on
                self._batches.resume_at = resume["order"], resume["skip"]
            else:  # stopped at an epoch's end: the next epoch's order
                self._shuffle.set_state(resume["order"])
        return self._batches

    def state_dict(self) -> dict:
        """Lightning calls this when it writes the trial's checkpoint."""
        trainer = self.trainer
        trained = trainer.fit_loop.epoch_loop.batch_progress.current.processed  # training batches this epoch
        at_end = trained >= trainer.num_training_batches or self._batches.epoch_order is None
        return {"order": self._shuffle.get_state() if at_end else self._batches.epoch_order,
                "skip": 0 if at_end else trained, "augment": self._aug_gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self._resume = state  # Lightning restores the datamodule before it asks for the loaders

    def _rank(self) -> tuple[int, int]:
        """(this rank, ranks) of a multi-device trial; (0, 1) outside one."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def shard(self, data: Dataset) -> Dataset:
        """This rank's share of the validation set: every N-th sample (the metrics gather all ranks' samples)."""
        rank, ranks = self._rank()
        return data if ranks == 1 else Subset(data, range(rank, len(data), ranks))


class RepeatedOrder(Sampler[int]):
    """timm's RepeatAugSampler on one replica, without its rounding to 256 (len(data) samples an epoch), seeded each
    epoch from `generator` (timm's seeds with the epoch number alone): the trial's order, replayed from its state."""

    def __init__(self, size: int, repeats: int, generator: torch.Generator):
        self.generator = generator  # ResumableBatchSampler saves and restores its state
        self.timm = RepeatAugSampler(range(size), num_replicas=1, rank=0, num_repeats=repeats, selected_round=0)

    def __len__(self) -> int:
        return len(self.timm)

    def __iter__(self):
        # timm seeds its permutation with set_epoch's number: here one drawn from the trial's order stream
        self.timm.set_epoch(int(torch.randint(2**62, (), generator=self.generator)))
        return iter(self.timm)


class ResumableBatchSampler(BatchSampler):
    """Batches of a shuffled sampler that can restart part-way into an epoch: it remembers the state its
    generator drew the epoch's order from, and a restored one draws that order again and skips the batches
    already trained on, without loading them. On several devices each rank takes its slice of every batch (the
    batch size is the whole step's), so the order and the batch count are the same on every rank: a contiguous
    slice, or with `strided` every `ranks`-th sample from its rank's on (timm's RepeatAugSampler's split, which puts
    the copies of an image on different ranks)."""

    def __init__(self, sampler: RandomSampler | RepeatedOrder, batch_size: int, drop_last: bool, rank: int = 0,
                 ranks: int = 1, strided: bool = False):
        super().__init__(sampler, batch_size, drop_last or ranks > 1)
        self.rank, self.ranks, self.strided = rank, ranks, strided
        self.epoch_order: torch.Tensor | None = None  # the generator's state this epoch's order was drawn from
        self.resume_at: tuple[torch.Tensor, int] | None = None  # (that state, batches to skip), used once

    def __iter__(self):
        generator, skip = self.sampler.generator, 0
        if self.resume_at is not None:
            (order, skip), self.resume_at = self.resume_at, None
            generator.set_state(order)
        self.epoch_order = generator.get_state()  # the DataLoader's own draw (its base seed) is already made
        batches = itertools.islice(super().__iter__(), skip, None)
        if self.ranks == 1:
            return batches
        if self.strided:
            return (batch[self.rank::self.ranks] for batch in batches)
        share = self.batch_size // self.ranks
        return (batch[self.rank * share:(self.rank + 1) * share] for batch in batches)
