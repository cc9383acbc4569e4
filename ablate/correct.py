"""Each image's top-1 correctness on a trial's reported split, packed into a short string (numpy only, no torch:
a report reads it to add the images' sampling error to an interval).

`pack_correct([True, False, ...])` is "N:" and the hex of numpy.packbits (N booleans in N/8 bytes), so a
10,000-image test set is a 2,505-character attribute; `unpack_correct` reverses it.
"""
from __future__ import annotations

import numpy as np

__all__ = ["pack_correct", "unpack_correct"]


def pack_correct(correct) -> str:
    """N booleans (each image right or wrong, in the split's fixed order) as 'N:hex'."""
    bits = np.asarray(correct, dtype=bool).ravel()
    return f"{len(bits)}:{np.packbits(bits).tobytes().hex()}"


def unpack_correct(packed: str) -> np.ndarray:
    """The boolean array `pack_correct` packed."""
    count, _, hex_bits = packed.partition(":")
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(hex_bits), dtype=np.uint8), count=int(count))
    return bits.astype(bool)
