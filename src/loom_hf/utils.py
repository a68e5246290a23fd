"""Small helpers shared by the command-line tools."""

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["written_atomically"]


@contextmanager
def written_atomically(destination: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder of `destination` to write into; on success it replaces `destination`.

    On any error the temporary folder is removed and an existing `destination` is left untouched, so an interrupted
    conversion, dataset export or model export never leaves a half-written folder behind.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        yield staging
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
