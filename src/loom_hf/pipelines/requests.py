"""The requests of a pipeline call: one input list or a batch of them, their generators, and argument checks shared
by the pipeline's validation."""

from collections.abc import Sequence

import PIL.Image
import torch

from ..number_checks import check_number

__all__ = ["as_requests", "per_output_generators", "check_sequence_of_numbers"]


def as_requests(inputs) -> tuple[list[list[str | PIL.Image.Image]], bool]:
    """`inputs` as a list of requests, and whether the call was batched.

    One request is a list of strings and PIL images; a batch is a list of such lists. Every item is checked here, so
    a bad element is named (`inputs[1][0]`) before any work starts.
    """
    if not isinstance(inputs, (list, tuple)) or len(inputs) == 0:
        raise ValueError("`inputs` must be a non-empty list of strings and PIL images, or a list of such lists.")
    batched = isinstance(inputs[0], (list, tuple))
    requests = []
    for index, request in enumerate(inputs):
        if batched != isinstance(request, (list, tuple)):
            raise TypeError(
                f"`inputs[{index}]` is a {type(request).__name__} but `inputs[0]` is "
                f"{'a list' if batched else 'not a list'}: pass one request (strings and images) or a batch (a list "
                "of such lists), not a mix."
            )
        items = list(request) if batched else list(inputs)
        prefix = f"inputs[{index}]" if batched else "inputs"
        if not items:
            raise ValueError(f"`{prefix}` is an empty request; each request needs at least one string or image.")
        for position, item in enumerate(items):
            if isinstance(item, str):
                if not item.strip():
                    raise ValueError(f"`{prefix}[{position}]` is a blank string; every text turn needs some text.")
            elif isinstance(item, PIL.Image.Image):
                if item.width == 0 or item.height == 0:
                    raise ValueError(f"`{prefix}[{position}]` is an empty ({item.width}x{item.height}) image.")
            else:
                raise TypeError(
                    f"`{prefix}[{position}]` must be a str or a PIL.Image.Image; got {type(item).__name__}."
                )
        requests.append(items)
        if not batched:
            break
    return requests, batched


def per_output_generators(generator, count: int) -> list[torch.Generator | None]:
    """One generator (or `None`) per output, by diffusers' rule: a single generator serves every output in turn, a
    list must hold exactly one per output."""
    if generator is None or isinstance(generator, torch.Generator):
        return [generator] * count
    if isinstance(generator, (list, tuple)):
        if len(generator) != count:
            raise ValueError(
                f"`generator` is a list of {len(generator)} generators but the call makes {count} outputs "
                "(requests × num_images_per_prompt); pass one generator, or exactly one per output."
            )
        for index, item in enumerate(generator):
            if not isinstance(item, torch.Generator):
                raise TypeError(f"`generator[{index}]` must be a torch.Generator; got {type(item).__name__}.")
        return list(generator)
    raise TypeError(f"`generator` must be a torch.Generator or a list of them; got {type(generator).__name__}.")


def check_sequence_of_numbers(name: str, value, length: int) -> Sequence:
    """A list or tuple of `length` finite numbers."""
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise ValueError(f"`{name}` must be a tuple of {length} numbers; got {value!r}.")
    for index, item in enumerate(value):
        check_number(f"{name}[{index}]", item)
    return value
