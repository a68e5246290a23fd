"""Range checks of the numeric training arguments, run when the arguments are built, before any work.

`TrainingArguments` accepts a NaN learning rate or a zero accumulation count; such a run used to exit 0, log `loss 0`
and save an all-NaN model. Every float argument must be finite, and the ones below must also be in range.
"""

import dataclasses
import math
from collections.abc import Callable

__all__ = ["check_training_numbers"]

_NON_NEGATIVE = "be >= 0"
_POSITIVE = "be > 0"
# argument -> (accepted values, test); the test sees a finite number.
RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "learning_rate": (_NON_NEGATIVE, lambda v: v >= 0),
    "weight_decay": (_NON_NEGATIVE, lambda v: v >= 0),
    "adam_beta1": ("be in [0, 1)", lambda v: 0 <= v < 1),
    "adam_beta2": ("be in [0, 1)", lambda v: 0 <= v < 1),
    "adam_epsilon": (_NON_NEGATIVE, lambda v: v >= 0),
    "max_grad_norm": (_NON_NEGATIVE + " (0: no clipping)", lambda v: v >= 0),
    "num_train_epochs": (_NON_NEGATIVE, lambda v: v >= 0),
    "label_smoothing_factor": ("be in [0, 1)", lambda v: 0 <= v < 1),
    "max_steps": ("be -1 (train num_train_epochs) or >= 1", lambda v: v == -1 or v >= 1),
    "gradient_accumulation_steps": ("be >= 1", lambda v: v >= 1),
    "logging_steps": (_POSITIVE, lambda v: v > 0),
    "save_steps": (_POSITIVE, lambda v: v > 0),
    "dataloader_num_workers": (_NON_NEGATIVE, lambda v: v >= 0),
    "seed": (_NON_NEGATIVE, lambda v: v >= 0),
    "ce_loss_weight": (_NON_NEGATIVE, lambda v: v >= 0),
    "text_dropout": ("be a probability in [0, 1]", lambda v: 0 <= v <= 1),
    "vit_dropout": ("be a probability in [0, 1]", lambda v: 0 <= v <= 1),
    "vae_dropout": ("be a probability in [0, 1]", lambda v: 0 <= v <= 1),
    "timestep_shift": (_POSITIVE, lambda v: v > 0),
    "changed_token_loss_weight": (_POSITIVE, lambda v: v > 0),
    "max_history_frames": (_NON_NEGATIVE, lambda v: v >= 0),
    "max_tokens_per_batch": ("be >= 1", lambda v: v >= 1),
    "vae_pixels_per_call": ("be >= 1", lambda v: v >= 1),
    "ema_decay": ("be in (0, 1) or None (no EMA)", lambda v: 0 < v < 1),
}


def check_training_numbers(arguments) -> None:
    """Raise a `ValueError` naming the first float argument that is not finite, or the first out-of-range argument."""
    for field in dataclasses.fields(arguments):
        value = getattr(arguments, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"`{field.name}` must be a finite number; got {value}.")
    for name, (accepted, test) in RANGES.items():
        value = getattr(arguments, name)
        if value is not None and not test(value):
            raise ValueError(f"`{name}` must {accepted}; got {value}.")
