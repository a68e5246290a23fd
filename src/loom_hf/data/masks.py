"""Part masks of the synthetic Loom data: run-length encoding (as stored in row metadata) and bounding boxes."""

from collections.abc import Sequence

import numpy as np


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """Row-major run lengths of a boolean mask, alternating unset/set and starting with an unset run (maybe 0)."""
    flat = np.asarray(mask, dtype=bool).ravel()
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    edges = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(edges).tolist()
    return [0, *runs] if flat.size and flat[0] else runs


def rle_to_mask(counts: Sequence[int], size: int) -> np.ndarray:
    """Inverse of [`mask_to_rle`] for a `size` x `size` mask."""
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    if flat.size != size * size:
        raise ValueError(f"counts cover {flat.size} pixels, expected size*size = {size * size}")
    return flat.reshape(size, size)


def mask_bbox(mask: np.ndarray) -> list[int] | None:
    """`[x0, y0, x1, y1]` (end exclusive) of the set pixels, or None for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]
