"""Saved files checked readable before they are loaded, so that a truncated or corrupted one is named in the error.

transformers, diffusers and safetensors report some of these failures without the file (a truncated safetensors
file: "incomplete metadata"; a broken tokenizer JSON: a bare `JSONDecodeError`) or skip the file silently (a broken
`generation_config.json` leaves the model with a default generation config).
"""

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open

__all__ = ["read_json", "check_safetensors", "check_saved_folder"]


def read_json(path: Path, kind: str) -> dict:
    """The JSON object in `path`; an unreadable file raises an error naming it as a `kind` file."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"The {kind} file {str(path)!r} is not readable JSON: {error}") from error


def check_safetensors(path: Path, kind: str) -> None:
    """Open the header of the safetensors file `path` (a truncated file fails here); errors name it."""
    if not path.is_file():
        raise FileNotFoundError(f"The {kind} lacks the weights file {str(path)!r}.")
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (OSError, SafetensorError) as error:
        raise ValueError(f"The {kind} file {str(path)!r} is not a readable safetensors file: {error}") from error


def check_saved_folder(folder: Path, kind: str) -> None:
    """Every JSON and safetensors file directly inside `folder` can be read."""
    for path in sorted(folder.glob("*.json")):
        read_json(path, kind)
    for path in sorted(folder.glob("*.safetensors")):
        check_safetensors(path, kind)
