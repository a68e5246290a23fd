"""A dataset in the training schema as a torch dataset of training instances."""

import logging
import random
import warnings

import datasets
import torch

from ..modeling.history import HISTORY_MODES
from .collator import DrawnBatch, LoomDataCollator
from .instances import Instance, build_instance, instance_keys
from .schema import ON_ERROR_CHOICES, validate_rows

__all__ = ["LoomTrainingDataset"]

logger = logging.getLogger(__name__)


class LoomTrainingDataset(torch.utils.data.Dataset):
    """The training instances of a [`LOOM_FEATURES`] dataset: one per tutorial frame, per target, per answer.

    Rows are validated first and every instance is measured (its length with nothing dropped). Bad rows and
    instances longer than `max_tokens` are skipped with one counted warning (`on_error="skip"`) or rejected with
    their row indices (`on_error="raise"`), before training starts, never mid-epoch.

    Args:
        dataset: a `datasets.Dataset` in the training schema.
        collator: the collator that will pack the instances (its processor measures them).
        max_tokens: the per-batch token budget; an instance must fit on its own.
        max_history_frames / history: Loom's history sampling (the rotation offset is drawn per instance and epoch).
        max_frames: the model's frame table size (0: none); longer tutorials are bad rows.
        use_step_text: put each frame's step text before it (False: the "w/o stepwise prompt" ablation).
        seed: seed of the random draws (history rotation, condition dropout). Each draw is a function of
            `(seed, epoch, index)` alone, so a resumed run draws what the uninterrupted run drew.
    """

    def __init__(
        self,
        dataset: datasets.Dataset,
        collator: LoomDataCollator,
        *,
        max_tokens: int,
        max_history_frames: int = 4,
        history: str = "sparse",
        max_frames: int = 0,
        on_error: str = "skip",
        use_step_text: bool = True,
        seed: int = 0,
    ):
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"`on_error` must be one of {ON_ERROR_CHOICES}; got {on_error!r}.")
        if history not in HISTORY_MODES:
            raise ValueError(f"`history` must be one of {HISTORY_MODES}; got {history!r}.")
        if max_history_frames < 0:
            raise ValueError(f"`max_history_frames` must be >= 0; got {max_history_frames}.")
        self.dataset, self.max_history_frames, self.history = dataset, max_history_frames, history
        self.use_step_text, self.seed, self.epoch = use_step_text, seed, 0
        valid_rows, _ = validate_rows(dataset, max_frames=max_frames or None, on_error=on_error)
        self.keys: list[tuple[int, int]] = []
        self.num_tokens: list[int] = []
        too_long: list[str] = []
        lengths = dataset.select_columns(["task", "step_texts", "targets"])
        for row_index in valid_rows:
            row = lengths[row_index]
            for key in instance_keys(row["task"], len(row["step_texts"]), len(row["targets"])):
                count = collator.num_tokens(self._instance(row_index, key, rng=None))
                if count > max_tokens:
                    too_long.append(f"row {row_index} (instance {key}): {count} tokens")
                    continue
                self.keys.append((row_index, key))
                self.num_tokens.append(count)
        if too_long:
            message = f"{len(too_long)} instance(s) exceed the {max_tokens}-token budget: " + "; ".join(too_long[:20])
            if on_error == "raise":
                raise ValueError(message)
            warnings.warn(f"Skipping {message}", stacklevel=2)
        if not self.keys:
            raise ValueError("No usable training instance: every row is invalid or over the token budget.")
        logger.info("%d training instances from %d valid rows.", len(self.keys), len(valid_rows))

    def _instance(self, row_index: int, key: int, *, rng: random.Random | None) -> Instance:
        """Instance `key` of a row; without `rng` the history takes no rotation (its longest form)."""
        row = self.dataset[row_index]
        return build_instance(
            row,
            key,
            max_history_frames=self.max_history_frames,
            history=self.history,
            rng=rng,
            use_step_text=self.use_step_text,
        )

    def _rng(self, purpose: str, *indices: int) -> random.Random:
        """A generator seeded by `(seed, epoch, purpose, indices)` alone (string seeds hash the same in every run)."""
        return random.Random(f"loom:{self.seed}:{self.epoch}:{purpose}:{','.join(map(str, indices))}")

    def set_epoch(self, epoch: int) -> None:
        """Called by the data loader before each epoch: later epochs draw other rotations and dropouts."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> Instance:
        row_index, key = self.keys[index]
        return self._instance(row_index, key, rng=self._rng("history", index))

    def __getitems__(self, indices: list[int]) -> DrawnBatch:
        """The batch the data loader asks for: its instances and the seed of its condition dropout."""
        return DrawnBatch([self[index] for index in indices], self._rng("dropout", *indices).getrandbits(63))
