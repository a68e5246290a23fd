"""Loom's history policy: which earlier frames condition the next frame of a tutorial, at inference and training."""

__all__ = ["HISTORY_MODES", "history_frame_indices", "rotation_offset_limit"]

HISTORY_MODES = ("sparse", "full", "none")


def rotation_offset_limit(num_prior: int, max_history: int) -> int:
    """Exclusive bound of Loom's training rotation offset `o`: `floor(T / (K_max + 1))` (eq. 6), at least 1."""
    return max(1, num_prior // (max_history + 1))


def history_frame_indices(num_prior: int, max_history: int, mode: str = "sparse", offset: int = 0) -> list[int]:
    """0-based indices of the earlier frames that condition the next frame (Loom's sparse history sampling).

    With `num_prior` = T earlier frames (frames 1..T) and budget `max_history` = K_max:

    * `"sparse"`: all earlier frames while T <= K_max ("full-context mode"), else frames
      `floor(i·T / (K_max + 1)) + o` for `i = 1..K_max` (eq. 4, with the rotation offset `o` of eq. 6);
    * `"full"`: every earlier frame; `"none"`: no frame.

    At inference `offset` is 0; training draws it from `[0, rotation_offset_limit(T, K_max))`.
    """
    if mode not in HISTORY_MODES:
        raise ValueError(f"`mode` must be one of {HISTORY_MODES}; got {mode!r}.")
    if num_prior < 0 or max_history < 0:
        raise ValueError(f"`num_prior` and `max_history` must be >= 0; got {num_prior} and {max_history}.")
    if mode == "none" or num_prior == 0:
        return []
    if mode == "full" or num_prior <= max_history:
        return list(range(num_prior))
    if not 0 <= offset <= num_prior // (max_history + 1):
        raise ValueError(
            f"`offset` must be in [0, {num_prior // (max_history + 1)}] for {num_prior} earlier frames and "
            f"{max_history} history frames; got {offset}."
        )
    return [i * num_prior // (max_history + 1) + offset - 1 for i in range(1, max_history + 1)]
