"""The demo's own checks of what a person typed or uploaded, turned into pipeline arguments; errors name the field."""

import os
from pathlib import Path

import PIL.Image
import torch

__all__ = ["generator_from_seed", "read_images", "required_text", "whole_number"]

MAX_SEED = 2**63 - 1


def required_text(value: str | None, field: str) -> str:
    """The stripped text of a field that must not be empty."""
    text = (value or "").strip()
    if not text:
        raise ValueError(f"The {field} is empty: type what the model should do.")
    return text


def whole_number(value: str | float | None, field: str) -> int | None:
    """A typed or picked number as an int (`None` when left blank); the pipeline checks the range and names its
    argument."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is None or not number.is_integer():
        raise ValueError(f"{field} must be a whole number; got {value!r}.")
    return int(number)


def generator_from_seed(seed: float | None) -> torch.Generator:
    """A CPU generator for the seed field, so the same seed gives the same result."""
    number = whole_number(seed, "Seed")
    if number is None or not 0 <= number <= MAX_SEED:
        raise ValueError(f"Seed must be a whole number from 0 to {MAX_SEED}; got {seed}.")
    return torch.Generator().manual_seed(number)


def read_images(paths: list[str | os.PathLike]) -> list[PIL.Image.Image]:
    """Open uploaded files as images, in upload order; an unreadable one is named in the error."""
    images = []
    for path in paths:
        try:
            with PIL.Image.open(path) as image:
                images.append(image.copy())
        except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as error:
            raise ValueError(f"The upload {Path(path).name!r} is not a readable image ({error}).") from error
    return images
