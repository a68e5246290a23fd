"""A checkpoint folder checked before resuming from it: every file a resume reads is present and readable.

transformers would otherwise skip a missing `optimizer.pt` / `scheduler.pt` silently (the run then continues with a
fresh optimizer, so its losses differ from the interrupted run's), and a truncated file fails deep inside torch or
safetensors with a message that does not name it.
"""

import zipfile
from pathlib import Path

from ..file_checks import check_safetensors, read_json

__all__ = ["OPTIMIZER_FILES", "check_checkpoint"]

OPTIMIZER_FILES = ("optimizer.pt", "scheduler.pt")
TRAINER_STATE = "trainer_state.json"
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors")
WEIGHT_INDEX = "model.safetensors.index.json"


def _check_torch_archive(path: Path) -> None:
    """A `torch.save` file is a zip archive; a truncated one has lost its central directory."""
    try:
        with zipfile.ZipFile(path):
            pass
    except (OSError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"The checkpoint file {str(path)!r} is truncated or not a torch.save archive: {error}"
        ) from error


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files holding the checkpoint's weights (one file, the shards of an index, or an adapter)."""
    index = folder / WEIGHT_INDEX
    if index.is_file():
        weight_map = read_json(index, "checkpoint").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"The checkpoint file {str(index)!r} has no `weight_map`.")
        return [folder / name for name in sorted(set(weight_map.values()))]
    present = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not present:
        raise FileNotFoundError(f"The checkpoint {str(folder)!r} holds no weights ({' or '.join(WEIGHT_FILES)}).")
    return present


def check_checkpoint(checkpoint: str | Path, *, fresh_optimizer: bool) -> Path:
    """Raise a clear error, naming the file, when `checkpoint` cannot be resumed from exactly.

    The trainer state, the weights and (unless `fresh_optimizer`) the optimizer and scheduler states must be present
    and readable. Returns the folder as a `Path`.
    """
    folder = Path(checkpoint)
    if not folder.is_dir():
        raise FileNotFoundError(f"`resume_from_checkpoint` {str(folder)!r} is not a checkpoint folder.")
    state = folder / TRAINER_STATE
    if not state.is_file():
        raise FileNotFoundError(f"The checkpoint lacks {str(state)!r}.")
    if "global_step" not in read_json(state, "checkpoint"):
        raise ValueError(f"The checkpoint file {str(state)!r} has no `global_step`.")
    for path in _weight_files(folder):
        check_safetensors(path, "checkpoint")
    if fresh_optimizer:
        return folder
    missing = [name for name in OPTIMIZER_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"The checkpoint {str(folder)!r} lacks {', '.join(missing)}: resuming would restart the optimizer. "
            "Pass `fresh_optimizer=True` (--fresh_optimizer) to resume the weights with a fresh optimizer and schedule."
        )
    for name in OPTIMIZER_FILES:
        _check_torch_archive(folder / name)
    return folder
