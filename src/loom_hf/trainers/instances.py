"""Training instances: the ordered text and image items one dataset row trains, laid out as the pipeline reads them.

A tutorial with N frames yields N instances; instance t holds the planning instruction, the plan (cross-entropy),
the earlier frames chosen by Loom's sparse history sampling (with the random rotation offset of training), the step's
text and the noised frame t (flow-matching loss). A text-only plan row yields one instance: instruction and plan.
Other tasks yield one instance per target image.
"""

import random
from dataclasses import dataclass

import PIL.Image
import torch

from ..modeling.history import history_frame_indices, rotation_offset_limit
from ..planning import format_plan, plan_instruction, step_turn

__all__ = ["TextItem", "ImageItem", "Instance", "instance_keys", "build_instance"]


@dataclass
class TextItem:
    """A text turn. `loss`: trained with cross-entropy; `droppable`: condition dropout may remove it."""

    text: str
    loss: bool = False
    droppable: bool = True


@dataclass
class ImageItem:
    """An image. A condition enters as clean latents (`use_vae`) and ViT tokens (`use_vit`), each removable by
    condition dropout when `droppable`; a target enters as noised latents trained with the flow loss. `frame` is its
    temporal index in a tutorial; `previous`, a tutorial target's frame before it (what its step changes is marked
    from the two, for `changed_token_loss_weight`)."""

    image: PIL.Image.Image
    target: bool = False
    use_vae: bool = True
    use_vit: bool = True
    droppable: bool = True
    frame: int | None = None
    latents: torch.Tensor | None = None  # cached clean latent tokens `[h·w, p·p·C]` (see `cache_latents`)
    previous: PIL.Image.Image | None = None


Instance = list[TextItem | ImageItem]


def instance_keys(task: str, num_steps: int, num_targets: int) -> list[int]:
    """The instances of one row, by index: one per tutorial frame, one per target, one for an answer."""
    if task == "tutorial":
        return list(range(num_steps))
    if task in ("understanding", "plan"):
        return [0]
    return list(range(num_targets))


def _images(row: dict, column: str) -> list[tuple[PIL.Image.Image, torch.Tensor | None]]:
    """The images of a row column, each with its cached latent tokens when the row carries them."""
    images = list(row[column])
    if f"{column}_latents" not in row:
        return [(image, None) for image in images]
    latents = [
        torch.tensor(flat, dtype=torch.float32).reshape(height * width, -1)
        for flat, (height, width) in zip(row[f"{column}_latents"], row[f"{column}_latent_grids"])
    ]
    return list(zip(images, latents))


def build_instance(
    row: dict,
    key: int,
    *,
    max_history_frames: int = 4,
    history: str = "sparse",
    rng: random.Random | None = None,
    use_step_text: bool = True,
) -> Instance:
    """Instance `key` of a dataset row in the training schema (images decoded to PIL).

    `rng` draws the history rotation offset of training (eq. 6); without it the offset is 0, as at inference.
    `use_step_text=False` leaves out the text turn before the target frame (the "w/o stepwise prompt" ablation).
    """
    task, instruction, inputs = row["task"], row["instruction"], _images(row, "images")
    conditions: Instance = [ImageItem(image, latents=latents) for image, latents in inputs]
    if task == "tutorial":
        steps, frames = row["step_texts"], _images(row, "step_images")
        offset = rng.randrange(rotation_offset_limit(key, max_history_frames)) if rng is not None else 0
        if history != "sparse" or key <= max_history_frames:
            offset = 0
        chosen = history_frame_indices(key, max_history_frames, history, offset)
        return [
            *conditions,
            TextItem(plan_instruction(instruction, len(steps))),
            TextItem(format_plan(steps), loss=True),
            *[ImageItem(frames[index][0], frame=index, latents=frames[index][1]) for index in chosen],
            *([TextItem(step_turn(key + 1, steps[key]))] if use_step_text else []),
            ImageItem(
                frames[key][0],
                target=True,
                frame=key,
                latents=frames[key][1],
                previous=frames[key - 1][0] if key > 0 else None,
            ),
        ]
    if task == "plan":
        return [
            TextItem(plan_instruction(instruction, len(row["step_texts"])), droppable=False),
            TextItem(format_plan(row["step_texts"]), loss=True, droppable=False),
        ]
    if task == "understanding":
        return [
            *[ImageItem(image, use_vae=False, droppable=False) for image, _ in inputs],
            TextItem(instruction, droppable=False),
            TextItem(row["answer"], loss=True, droppable=False),
        ]
    target, target_latents = _images(row, "targets")[key]
    return [*conditions, TextItem(instruction), ImageItem(target, target=True, latents=target_latents)]
