"""Small helpers shared by the command-line tools: number types for argparse, output checks run before any work,
and atomic folder writes."""

import argparse
import math
import os
import shutil
import stat
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "FRAME_KEEP_HELP",
    "FRAME_KEEP_TEXT_HELP",
    "finite_float",
    "share_float",
    "positive_float",
    "non_negative_float",
    "positive_int",
    "non_negative_int",
    "check_output_folder",
    "check_output_file",
    "written_atomically",
]


# The help of `--frame-keep-threshold`, shared by `loom generate` and `loom eval`.
FRAME_KEEP_HELP = (
    "frame keeping: tokens of the previous frame that a step's own estimate changes by less than this are kept "
    "exactly (default: the model's; 0: off)"
)
# The help of `--frame-keep-text-share`, shared likewise.
FRAME_KEEP_TEXT_HELP = (
    "with frame keeping, tokens where the step text moves the velocity by at least this share of its largest effect "
    "change too, in (0, 1] (default: the model's)"
)


def _number(text: str, kind: type, accepted: str, test) -> int | float:
    """`text` as a `kind` passing `test`, else the `ArgumentTypeError` argparse reports with the option's name."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {accepted}, got {text!r}") from None
    if not test(value):
        raise argparse.ArgumentTypeError(f"expected {accepted}, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number (no nan or inf)."""
    return _number(text, float, "a finite number", math.isfinite)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(text, float, "a finite number > 0", lambda v: math.isfinite(v) and v > 0)


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number(text, float, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)


def share_float(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    return _number(text, float, "a number in (0, 1]", lambda v: math.isfinite(v) and 0 < v <= 1)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _number(text, int, "an integer >= 1", lambda v: v >= 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _number(text, int, "an integer >= 0", lambda v: v >= 0)


def _writable_parent(path: Path, option: str) -> None:
    """The nearest existing folder above `path` must be a writable folder (where `path` would be created)."""
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{option} {str(path)!r} cannot be created: {str(parent)!r} is a file.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {str(path)!r} cannot be written: {str(parent)!r} is not writable.")


def _overlaps(a: Path, b: Path) -> bool:
    """Whether `a` and `b` are the same path or one contains the other (symbolic links resolved)."""
    a, b = a.resolve(), b.resolve()
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def check_output_folder(
    folder: str | os.PathLike,
    *,
    option: str,
    overwrite: bool,
    inputs: Mapping[str, str | os.PathLike] | None = None,
) -> Path:
    """Refuse, before any work, an output folder that cannot be written or whose writing would destroy an input.

    `option` names the argument in the messages, and `inputs` maps each input's argument name to its path. An
    existing folder needs `overwrite` (it is replaced or written into); a file, an unwritable location, or a folder
    that is, contains or lies inside one of `inputs` is always refused.
    """
    folder = Path(folder)
    for name, source in (inputs or {}).items():
        if _overlaps(folder, Path(source)):
            raise ValueError(
                f"{option} {str(folder)!r} overlaps the input {name} {str(source)!r} (the same folder, or one "
                "inside the other): writing it would destroy the input. Choose another output folder."
            )
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{option} {str(folder)!r} is a file, not a folder.")
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{option} {str(folder)!r} exists; pass --overwrite to replace it.")
    if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {str(folder)!r} is not writable.")
    _writable_parent(folder, option)
    return folder


def check_output_file(path: str | os.PathLike, *, option: str) -> Path:
    """Refuse, before any work, an output file path that is a folder or cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{option} {str(path)!r} is a folder, not a file.")
    if path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(f"{option} {str(path)!r} is not writable.")
    _writable_parent(path, option)
    return path


def user_folder_mode(parent: str | Path) -> int:
    """The permission bits a plain `mkdir` gives under the user's umask, read from a probe folder made in `parent`
    (files get the same bits without the execute ones: `& 0o666`).

    Reading the umask with `os.umask` means setting it for a moment, which is process-wide: a file another thread
    creates in that moment would get the wrong mode. The probe lets the OS apply the umask instead.
    """
    probe = Path(parent) / f".umask-probe-{uuid.uuid4().hex}"
    probe.mkdir()
    try:
        return stat.S_IMODE(probe.stat().st_mode) & 0o777
    finally:
        probe.rmdir()


def _apply_umask(folder: Path) -> None:
    """Give `folder` and everything in it the modes a plain `mkdir` / `open` would (some writers, safetensors shards
    saved through a temporary file for one, create private 0600 files)."""
    folder_mode = user_folder_mode(folder)
    file_mode = folder_mode & 0o666
    folder.chmod(folder_mode)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(folder_mode if path.is_dir() else file_mode)


@contextmanager
def written_atomically(destination: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder of `destination` to write into; on success it replaces `destination`.

    On any error the temporary folder is removed and an existing `destination` is left untouched, so an interrupted
    conversion, dataset export or model export never leaves a half-written folder behind. What is written gets the
    user's umask, like any other folder or file they make.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.parent / f".{destination.name}.{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        yield staging
        _apply_umask(staging)
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
