"""A trial's per-image correctness, packed for its Optuna user attrs (Attr.CORRECT): which images of the reported
split the final weights got right (top-1), in the split's fixed order, so that an interval can cover the
validation images' sampling error (stats.delta_ci_images). 1,000 images take 255 characters; numpy only."""
from __future__ import annotations

import numpy as np


def pack_correct(correct) -> str:
    """'N:hex' of a boolean sequence (numpy.packbits, most significant bit first)."""
    bits = np.asarray(correct, dtype=bool).ravel()
    return f"{len(bits)}:{np.packbits(bits).tobytes().hex()}"


def unpack_correct(text: str) -> np.ndarray:
    """pack_correct's inverse: the boolean array."""
    count, _, hexed = text.partition(":")
    return np.unpackbits(np.frombuffer(bytes.fromhex(hexed), dtype=np.uint8), count=int(count)).astype(bool)
