"""The training order, resumable and shardable: what a trial's checkpoint holds of the data.

A datamodule draws its training batches through `ResumableOrder.shuffled_batches`: a shuffled order and an
augmentation stream (crops, flips) of its own, both drawn from `order_seed`: the trial's train.seed under
data.order: seed (the default: each seed of a study sees its own batches), data.seed under data.order: fixed (every
seed the same batches). A fresh loader replays the same order. Their state (both streams, and how far into the epoch
training got) goes into the trial's Lightning checkpoint, so a resumed trial draws the batches the uninterrupted one
would have. On several devices every rank draws the same order and takes its slice of each batch; the validation set
is sharded every N-th sample.
"""
from __future__ import annotations

import itertools

import torch
from torch.utils.data import BatchSampler, Dataset, RandomSampler, Subset

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
        self._batches = ResumableBatchSampler(RandomSampler(data, generator=self._shuffle), self.cfg.batch_size,
                                              drop_last=len(data) >= self.cfg.batch_size, rank=rank, ranks=ranks)
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


class ResumableBatchSampler(BatchSampler):
    """Batches of a shuffled sampler that can restart part-way into an epoch: it remembers the state its
    generator drew the epoch's order from, and a restored one draws that order again and skips the batches
    already trained on, without loading them. On several devices each rank takes its slice of every batch (the
    batch size is the whole step's), so the order and the batch count are the same on every rank."""

    def __init__(self, sampler: RandomSampler, batch_size: int, drop_last: bool, rank: int = 0, ranks: int = 1):
        super().__init__(sampler, batch_size, drop_last or ranks > 1)
        self.rank, self.ranks = rank, ranks
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
        share = self.batch_size // self.ranks
        return (batch[self.rank * share:(self.rank + 1) * share] for batch in batches)
