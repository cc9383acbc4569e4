"""scikit-learn's bundled 8x8 digits, plain (upscaled) or cluttered (a digit among fragments of others)."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from ablate.config import ClutteredDigitsData, DigitsData
from ablate.data.base import pick
from ablate.data.tensor import TensorDataModule, to_uint8

# cluttered-digits geometry, as fractions of the canvas so image_size changes resolution, not the task
DIGIT_SIZE = (0.5, 0.625)  # digit side relative to the canvas: 16..20 px on 32 px (STN: 28 on 60)
FRAGMENT_SIZE = 0.094  # clutter fragment side relative to the canvas: 3 px on 32 px, a stroke, not a digit
CLUTTERED_SIZES = (4000, 1000)  # default train/val samples synthesised


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    digits = load_digits()  # 1797 real 8x8 digits shipped inside scikit-learn, values 0..16
    return torch.tensor(digits.images / 16.0, dtype=torch.float32), torch.tensor(digits.target)


def digits_split(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified 80/20 split of the 1797 source digits (sorted indices into load_digits), fixed by seed."""
    _, labels = _load_digits()
    gen = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in range(10):
        members = torch.nonzero(labels == c)[:, 0]
        members = members[torch.randperm(len(members), generator=gen)]
        cut = round(0.2 * len(members))
        val.append(members[:cut])
        train.append(members[cut:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


class DigitsDataModule(TensorDataModule):
    """scikit-learn's 8x8 digits, bilinearly upscaled to image_size.

    One channel (in_chans=1): timm models accept in_chans=1, and replicating grey to RGB would only triple the
    stem's input without adding information.
    """

    made_by = "sklearn.datasets.load_digits"

    @classmethod
    def shape(cls, cfg: DigitsData) -> tuple[int, int]:
        return cfg.class_count, 1

    @classmethod
    def split_sizes(cls, cfg: DigitsData) -> tuple[int, int]:
        return tuple(len(s) for s in digits_split(cfg.seed))

    def __init__(self, cfg: DigitsData):
        images, labels = _load_digits()
        train, val = digits_split(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        train = train[pick(len(train), cfg.train_size, "train_size", gen)]
        val = val[pick(len(val), cfg.val_size, "val_size", gen)]
        size = (cfg.image_size, cfg.image_size)
        x = to_uint8(F.interpolate(images[:, None], size=size, mode="bilinear", align_corners=False))
        super().__init__(cfg, x[train], labels[train], x[val], labels[val], num_classes=cfg.class_count)
        self.train_source, self.val_source = train, val


# ---------------------------------------------------------------- cluttered digits

class ClutteredDigitsDataModule(TensorDataModule):
    """Cluttered digits (Jaderberg et al. 2015, Spatial Transformer Networks) from the bundled digits.

    Each canvas holds one upscaled digit at a random position and `clutter` stroke-sized fragments of other
    digits (sizes: DIGIT_SIZE, FRAGMENT_SIZE), so a model has to find the digit first: what attention is for.
    The source digits are split before synthesis (`digits_split`), so train and val share no digit, not even
    in the clutter. Tests and attention maps read, per split, `*_source` (its source indices), `*_digit` (each
    canvas's digit), `*_clutter` (its fragments' digits) and `*_boxes` (y, x, side of the digit's square).
    """

    crop_padding = 0.0  # placement is already random; a crop could push the digit off the canvas
    made_by = "ablate.data.digits.synthesize_cluttered (from sklearn.datasets.load_digits)"

    @classmethod
    def shape(cls, cfg: ClutteredDigitsData) -> tuple[int, int]:
        return cfg.class_count, 1

    def __init__(self, cfg: ClutteredDigitsData):
        _, labels = _load_digits()
        self.train_source, self.val_source = digits_split(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        n_train, n_val = cfg.train_size or CLUTTERED_SIZES[0], cfg.val_size or CLUTTERED_SIZES[1]
        x_train, self.train_digit, self.train_clutter, self.train_boxes = synthesize_cluttered(
            self.train_source, n_train, cfg.image_size, cfg.clutter, gen)
        x_val, self.val_digit, self.val_clutter, self.val_boxes = synthesize_cluttered(
            self.val_source, n_val, cfg.image_size, cfg.clutter, gen)
        super().__init__(cfg, x_train, labels[self.train_digit], x_val, labels[self.val_digit],
                         num_classes=cfg.class_count)


@dataclass
class Placed:
    """Square uint8 patches (n, ..., s, s) and the canvas positions (n, ...) of their top-left corners."""

    patches: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor


def synthesize_cluttered(source: torch.Tensor, n: int, size: int, clutter: int, gen: torch.Generator):
    """n uint8 canvases (n, 1, size, size) from the bundled digits `source` (indices), vectorised over n.

    Returns (canvases, each canvas's digit, (n, clutter) fragment digits as source indices, (n, 3) y/x/side).
    """
    lo = max(2, round(DIGIT_SIZE[0] * size))
    hi = max(lo, round(DIGIT_SIZE[1] * size))
    sides = torch.arange(lo, hi + 1)
    bank = _digit_bank(lo, hi)[:, source]  # (side, digit, hi, hi)
    digit, chosen, side = _place_digit(bank, sides, n, size, gen)
    frag = min(lo, max(1, round(FRAGMENT_SIZE * size)))
    fragments, other = _cut_fragments(bank, sides, chosen, clutter, frag, size, gen)
    # margin: the hi x hi digit patch is zero beyond its side, which ends inside the canvas
    canvases = _composite([digit] + ([fragments] if fragments else []), size, margin=hi - lo)
    return canvases, source[chosen], source[other], torch.stack([digit.y, digit.x, side], 1)


@functools.lru_cache(maxsize=2)
def _digit_bank(lo: int, hi: int) -> torch.Tensor:
    """Each bundled digit upscaled to every side lo..hi, padded to hi x hi: one gather picks (side, digit)."""
    images, _ = _load_digits()
    bank = torch.zeros(hi - lo + 1, len(images), hi, hi, dtype=torch.uint8)
    for i, s in enumerate(range(lo, hi + 1)):
        up = F.interpolate(images[:, None], size=(s, s), mode="bilinear", align_corners=False)
        bank[i, :, :s, :s] = to_uint8(up[:, 0])
    return bank


def _place_digit(bank: torch.Tensor, sides: torch.Tensor, n: int, size: int, gen: torch.Generator):
    """Per canvas, a source digit at a random side and a random spot where it fits: (its patch placed, which
    digit, its side)."""
    chosen = torch.randint(bank.shape[1], (n,), generator=gen)
    which = torch.randint(len(sides), (n,), generator=gen)
    side = sides[which]
    y, x = (torch.rand(2, n, generator=gen) * (size - side + 1)).long()
    return Placed(bank[which, chosen], y, x), chosen, side


def _cut_fragments(bank: torch.Tensor, sides: torch.Tensor, chosen: torch.Tensor, clutter: int, frag: int,
                   size: int, gen: torch.Generator) -> tuple[Placed | None, torch.Tensor]:
    """Per canvas, `clutter` frag x frag windows cut from other source digits (a shifted index, so never the
    canvas's own) at random sides, each at a random spot: (the pieces placed, or None, and their digits)."""
    n, digits = len(chosen), bank.shape[1]
    if not clutter:
        return None, torch.zeros(n, 0, dtype=torch.long)
    shift = torch.randint(1, max(2, digits), (n, clutter), generator=gen)
    other = (chosen[:, None] + shift) % digits
    w = torch.randint(len(sides), (n, clutter), generator=gen)
    oy, ox = (torch.rand(2, n, clutter, generator=gen) * (sides[w] - frag + 1)).long()
    window = torch.arange(frag)
    # one 4-index gather: [side, digit, window rows, window columns] per (canvas, fragment)
    pieces = bank[w[..., None, None], other[..., None, None], (oy[..., None] + window)[..., :, None],
                  (ox[..., None] + window)[..., None, :]]
    py, px = (torch.rand(2, n, clutter, generator=gen) * (size - frag + 1)).long()
    return Placed(pieces, py, px), other


def _composite(placed: list[Placed], size: int, margin: int) -> torch.Tensor:
    """Every patch onto its canvas in one scatter, overlaps resolved by the brighter pixel (deterministic), on a
    canvas `margin` px wider that is cropped back to size x size: (n, 1, size, size) uint8."""
    n, width = len(placed[0].y), size + margin
    canvas = torch.zeros(n, width * width, dtype=torch.uint8)
    index, values = [], []
    for p in placed:  # each pixel's flat position on the wide canvas
        span = torch.arange(p.patches.shape[-1])
        rows, cols = p.y[..., None] + span, p.x[..., None] + span
        index.append((rows[..., :, None] * width + cols[..., None, :]).reshape(n, -1))
        values.append(p.patches.reshape(n, -1))
    canvas.scatter_reduce_(1, torch.cat(index, 1), torch.cat(values, 1), "amax")
    return canvas.view(n, 1, width, width)[:, :, :size, :size].contiguous()
