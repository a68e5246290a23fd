"""EMA weights of training: diffusers' `EMAModel`, kept after every optimizer step and saved whole with checkpoints.

A checkpoint's `ema.safetensors` holds the shadow weights by parameter name and, in its metadata, the rest of
`EMAModel.state_dict()` (decay, `optimization_step`, warm-up settings): a resumed run continues the average with the
decay the uninterrupted run would use, instead of restarting at decay 0 and replacing the average with the live weights.
"""

import json
import os

import torch
from diffusers.training_utils import EMAModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import TrainerCallback

__all__ = ["EMA_FILE", "EMACallback", "save_ema_state", "load_ema_state", "saved_ema_names", "trainable_names"]

EMA_FILE = "ema.safetensors"
_STATE_KEY = "ema_state"


def save_ema_state(ema: EMAModel, names: list[str], path: str | os.PathLike) -> None:
    """Write the whole `EMAModel` state: shadow weights under `names` (the trainable parameters' names), the other
    entries of `state_dict()` as JSON metadata."""
    state = ema.state_dict()
    shadows = state.pop("shadow_params")
    if len(shadows) != len(names):
        raise ValueError(f"The EMA holds {len(shadows)} weights but {len(names)} parameter names were given.")
    tensors = {name: shadow.detach().cpu().contiguous() for name, shadow in zip(names, shadows)}
    save_file(tensors, str(path), metadata={_STATE_KEY: json.dumps(state)})


def load_ema_state(ema: EMAModel, names: list[str], path: str | os.PathLike) -> None:
    """Restore what [`save_ema_state`] wrote into `ema` (`load_state_dict`), each weight on its current device and
    dtype. Raises a `ValueError` naming the file when it is unreadable or holds other parameters."""
    try:
        with safe_open(str(path), framework="pt") as saved:
            metadata = saved.metadata() or {}
            missing = [name for name in names if name not in saved.keys()]
            if missing:
                raise ValueError(f"{str(path)!r} lacks the EMA weights of {missing[:5]} (another model or run?).")
            tensors = {name: saved.get_tensor(name) for name in names}
    except (OSError, SafetensorError) as error:
        raise ValueError(f"Cannot read the EMA state {str(path)!r}: {error}") from error
    if _STATE_KEY not in metadata:
        raise ValueError(f"{str(path)!r} has no EMA state (optimization_step, decay) in its metadata.")
    state = json.loads(metadata[_STATE_KEY])
    state["shadow_params"] = [
        tensors[name].to(device=current.device, dtype=current.dtype) for name, current in zip(names, ema.shadow_params)
    ]
    ema.load_state_dict(state)


def saved_ema_names(path: str | os.PathLike) -> list[str]:
    """The parameter names whose EMA weights [`save_ema_state`] wrote to `path` (the parameters its run trained).
    Raises a `ValueError` naming the file when it is unreadable."""
    try:
        with safe_open(str(path), framework="pt") as saved:
            return list(saved.keys())
    except (OSError, SafetensorError) as error:
        raise ValueError(f"Cannot read the EMA state {str(path)!r}: {error}") from error


class EMACallback(TrainerCallback):
    """Steps the trainer's EMA after every optimizer step and saves its whole state with each checkpoint."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.ema.step(self.trainer.trainable_parameters())

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            self.trainer.save_ema(os.path.join(folder, EMA_FILE))


def trainable_names(model: torch.nn.Module) -> list[str]:
    """Names of the trainable parameters, in the order `EMAModel` keeps their shadows."""
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]
