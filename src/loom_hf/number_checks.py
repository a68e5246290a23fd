"""Checks of numeric (and on/off) arguments shared by the pipeline, the converters and the trainers: each error names
the argument and what is accepted."""

import math
from numbers import Real

__all__ = ["check_number", "check_integer", "check_flag"]


def check_number(
    name: str,
    value,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    optional: bool = False,
) -> None:
    """A finite real number in range (bool is not a number here); the error names the argument and the range."""
    if value is None and optional:
        return
    low = "" if minimum is None else f"{'>' if exclusive_minimum else '>='} {minimum}"
    high = "" if maximum is None else f"<= {maximum}"
    accepted = " and ".join(part for part in (low, high) if part) or "any value"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"`{name}` must be a number ({accepted}); got {type(value).__name__}.")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number ({accepted}); got {value}.")
    below = minimum is not None and (value <= minimum if exclusive_minimum else value < minimum)
    if below or (maximum is not None and value > maximum):
        raise ValueError(f"`{name}` must be {accepted}; got {value}.")


def check_integer(name: str, value, *, minimum: int, optional: bool = False) -> None:
    """An `int` (not a bool) of at least `minimum`."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}; got {value!r}.")


def check_flag(name: str, value) -> None:
    """`True` or `False` (a string such as "no" is truthy, so it would silently switch the option on)."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False; got {value!r}.")
