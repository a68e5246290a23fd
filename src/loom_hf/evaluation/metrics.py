"""
Metrics of a generated tutorial against its ground truth.

* [`ssim`] and [`psnr`]: per-frame image similarity (torchmetrics' implementations of the standard definitions).
* [`plan_exact_match`]: whether a written plan has exactly the reference steps.
* [`step_fidelity`]: whether each step was really drawn where the ground truth draws it, rather than the previous
  frame repeated.
* [`temporal_coherence`]: whether what earlier steps drew stays drawn in later frames.

Images are PIL images or `(H, W, 3)` numpy arrays (uint8, or floats in [0, 1]); a generated image is resized to
its reference's size before any comparison.
"""

import math
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ..data import BACKGROUNDS

__all__ = [
    "PSNR_CAP_DB",
    "StepFidelity",
    "ssim",
    "psnr",
    "normalise_step",
    "plan_exact_match",
    "step_fidelity",
    "temporal_coherence",
]

ImageLike = PIL.Image.Image | np.ndarray

# Identical images have an infinite PSNR; it is reported as this value so that means and JSON reports stay finite.
# Any two different 8-bit images of up to ~10^5 megapixels score below it.
PSNR_CAP_DB = 100.0
SSIM_KERNEL_SIZE = 11
SSIM_SIGMA = 1.5
DEFAULT_TOLERANCE = 0.1
_EDGE_CHARACTERS = string.punctuation + string.whitespace


def _as_tensor(image: ImageLike, name: str) -> torch.Tensor:
    """`image` as a float `(3, H, W)` tensor in [0, 1]."""
    if isinstance(image, PIL.Image.Image):
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"`{name}` must be an RGB array of shape (H, W, 3); got shape {image.shape}.")
        if image.dtype == np.uint8:
            array = image.astype(np.float32) / 255.0
        elif np.issubdtype(image.dtype, np.floating):
            if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
                raise ValueError(f"`{name}` is a float array, so its values must lie in [0, 1].")
            array = image.astype(np.float32)
        else:
            raise ValueError(f"`{name}` must be a uint8 array or a float array in [0, 1]; got dtype {image.dtype}.")
    else:
        raise TypeError(f"`{name}` must be a PIL image or an (H, W, 3) numpy array; got {type(image).__name__}.")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def _resized(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`image` (`(3, H, W)`) at `size` = (height, width), antialiased bilinear."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    resized = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", antialias=True)
    return resized[0].clamp(0, 1)


def _image_pair(generated: ImageLike, reference: ImageLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images as float64 `(1, 3, H, W)` tensors at the reference's size (float64 keeps SSIM's variance terms
    exact enough that identical images score 1)."""
    target = _as_tensor(reference, "reference")
    candidate = _resized(_as_tensor(generated, "generated"), tuple(target.shape[-2:]))
    return candidate[None].double(), target[None].double()


def ssim(generated: ImageLike, reference: ImageLike) -> float:
    """
    Structural similarity of `generated` to `reference` on [0, 1] RGB images: an 11x11 Gaussian window of sigma 1.5,
    constants K1 = 0.01 and K2 = 0.03, the SSIM map (without the borders the window cannot cover) averaged over
    pixels and channels. 1 means identical.
    """
    candidate, target = _image_pair(generated, reference)
    if min(target.shape[-2:]) < SSIM_KERNEL_SIZE:
        raise ValueError(f"`reference` must be at least {SSIM_KERNEL_SIZE} pixels on each side for SSIM.")
    value = structural_similarity_index_measure(
        candidate, target, gaussian_kernel=True, sigma=SSIM_SIGMA, kernel_size=SSIM_KERNEL_SIZE, data_range=1.0
    )
    return float(value)


def psnr(generated: ImageLike, reference: ImageLike) -> float:
    """Peak signal-to-noise ratio in dB on [0, 1] RGB images, `10 log10(1 / MSE)` with the MSE over every pixel and
    channel; identical images give [`PSNR_CAP_DB`] instead of infinity."""
    candidate, target = _image_pair(generated, reference)
    return min(float(peak_signal_noise_ratio(candidate, target, data_range=1.0)), PSNR_CAP_DB)


def _check_texts(name: str, texts: Sequence[str]) -> None:
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"`{name}` must be a list of step strings; got {type(texts).__name__}.")


def normalise_step(text: str) -> str:
    """A step text for comparison: case-folded, runs of whitespace made single spaces, and the punctuation and
    whitespace around it removed."""
    return re.sub(r"\s+", " ", text).strip(_EDGE_CHARACTERS).casefold()


def plan_exact_match(predicted_steps: Sequence[str], reference_steps: Sequence[str]) -> bool:
    """Whether the predicted plan has as many steps as the reference and each equals its reference step after
    [`normalise_step`]. An empty prediction (an unparsable plan) never matches."""
    _check_texts("predicted_steps", predicted_steps)
    _check_texts("reference_steps", reference_steps)
    if not reference_steps:
        raise ValueError("`reference_steps` must hold at least one step.")
    return len(predicted_steps) == len(reference_steps) and all(
        normalise_step(predicted) == normalise_step(reference)
        for predicted, reference in zip(predicted_steps, reference_steps, strict=True)
    )


def _check_frame_lists(generated_frames: Sequence[ImageLike], reference_frames: Sequence, reference_name: str) -> None:
    for name, frames in (("generated_frames", generated_frames), (reference_name, reference_frames)):
        if not isinstance(frames, Sequence) or not frames:
            raise ValueError(f"`{name}` must be a non-empty list; got {type(frames).__name__}.")
    if len(generated_frames) != len(reference_frames):
        raise ValueError(
            f"`generated_frames` has {len(generated_frames)} frames but `{reference_name}` has "
            f"{len(reference_frames)}; they must match step for step."
        )


def _as_mask(mask: np.ndarray, shape: tuple[int, int], name: str) -> torch.Tensor:
    """A boolean `(H, W)` mask tensor of the given shape, from a boolean or 0/1 array."""
    array = np.asarray(mask)
    if array.shape != shape:
        raise ValueError(f"`{name}` must be a mask of shape {shape} (the reference frames); got {array.shape}.")
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        raise ValueError(f"`{name}` must be a boolean or 0/1 mask.")
    return torch.from_numpy(array.astype(bool))


def _background_colour(background: str | Sequence[int], shape: tuple[int, int]) -> torch.Tensor:
    """A blank `(3, H, W)` canvas of `background`: a name of [`BACKGROUNDS`] or an (R, G, B) triple of 0-255 ints."""
    if isinstance(background, str):
        if background not in BACKGROUNDS:
            raise ValueError(f"`background` {background!r} is not one of {', '.join(BACKGROUNDS)}.")
        background = BACKGROUNDS[background]
    if (
        not isinstance(background, Sequence)
        or len(background) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in background)
    ):
        raise ValueError(
            f"`background` must be a name of {', '.join(BACKGROUNDS)} or an (R, G, B) triple of ints in 0-255; "
            f"got {background!r}."
        )
    colour = torch.tensor(background, dtype=torch.float32) / 255.0
    return colour[:, None, None].expand(3, *shape)


@dataclass(frozen=True)
class StepFidelity:
    """Per-step fidelity scores (`None` for a step whose region is empty) and their mean (`None` when every step
    was skipped)."""

    per_step: list[float | None]
    mean: float | None


def step_fidelity(
    generated_frames: Sequence[ImageLike],
    reference_frames: Sequence[ImageLike],
    step_masks: Sequence[np.ndarray],
    background: str | Sequence[int],
) -> StepFidelity:
    """
    Whether each step really draws its part, or only repeats the frame before it.

    For step t, the region R_t holds the pixels of the step's part mask that the ground-truth step actually changes
    (`F_{t-1} != F_t`, with F_0 the blank canvas of `background`). The score is the mean absolute error of the
    generated frame there, `mean_R |G_t - F_t|`, divided by the error that repeating the previous generated frame
    would have there, `mean_R |G_{t-1} - F_t|` (G_0 is the blank canvas; means over the region's pixels and the RGB
    channels, on [0, 1]). So 0 is a perfect step, 1 is a step that leaves the region as it was, below 1 the step
    moved the region towards the part, above 1 away from it. Comparing with the model's own previous frame (not the
    ground truth's) keeps the score about the step: a drawing placed or coloured differently from the reference
    already differs from it before the step. Steps whose region is empty (the part only repaints pixels with their
    existing colour) or that have nothing left to draw there (`G_{t-1}` already equals `F_t`) have no score and are
    left out of the mean.

    Args:
        generated_frames: one generated frame per step (resized to the reference size).
        reference_frames: the ground-truth frames, all of one size.
        step_masks: per step, a boolean `(H, W)` mask of the pixels its part paints (a synthetic tutorial's
            `meta["steps"][t]["mask_rle"]`, decoded with `rle_to_mask`).
        background: the canvas colour, a name of [`BACKGROUNDS`] or an (R, G, B) triple of 0-255 ints.
    """
    _check_frame_lists(generated_frames, reference_frames, "reference_frames")
    if not isinstance(step_masks, Sequence) or len(step_masks) != len(reference_frames):
        raise ValueError(f"`step_masks` must be a list of one mask per reference frame ({len(reference_frames)}).")
    references = [_as_tensor(frame, f"reference_frames[{t}]") for t, frame in enumerate(reference_frames)]
    shape = tuple(references[0].shape[-2:])
    if any(tuple(frame.shape[-2:]) != shape for frame in references):
        raise ValueError("`reference_frames` must all have the same size.")
    previous_reference = previous_generated = _background_colour(background, shape)
    per_step: list[float | None] = []
    for t, (generated, reference) in enumerate(zip(generated_frames, references, strict=True)):
        candidate = _resized(_as_tensor(generated, f"generated_frames[{t}]"), shape)
        changed = (reference - previous_reference).abs().amax(dim=0) > 0
        region = _as_mask(step_masks[t], shape, f"step_masks[{t}]") & changed
        repeat_error = (previous_generated - reference).abs()[:, region].mean() if region.any() else None
        if repeat_error is not None and repeat_error > 0:
            per_step.append(float((candidate - reference).abs()[:, region].mean() / repeat_error))
        else:
            per_step.append(None)
        previous_reference, previous_generated = reference, candidate
    scored = [value for value in per_step if value is not None]
    return StepFidelity(per_step=per_step, mean=math.fsum(scored) / len(scored) if scored else None)


def temporal_coherence(
    generated_frames: Sequence[ImageLike], part_masks: Sequence[np.ndarray], tolerance: float = DEFAULT_TOLERANCE
) -> float | None:
    """
    The share of already drawn pixels that stay unchanged from one generated frame to the next.

    For each pair of consecutive frames (G_k, G_{k+1}), the kept region is P_k, the union of the part masks of
    steps 1..k, minus the mask of step k+1 (which may legitimately paint over earlier parts). Within it, a pixel is
    kept when its largest channel difference `|G_{k+1} - G_k|` (on [0, 1]) is below `tolerance`. Returns the mean of
    the kept fractions over the pairs, in [0, 1] (1: nothing drawn ever disappears); pairs with an empty kept
    region are skipped, and `None` is returned when no pair is left (for instance a one-step tutorial).

    Args:
        generated_frames: one generated frame per step, resized to the masks' size.
        part_masks: per step, the boolean `(H, W)` mask of the pixels its ground-truth part paints.
        tolerance: the largest per-pixel change, in (0, 1], that still counts as unchanged.
    """
    _check_frame_lists(generated_frames, part_masks, "part_masks")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance <= 1:
        raise ValueError(f"`tolerance` must be a number in (0, 1]; got {tolerance!r}.")
    shape = np.asarray(part_masks[0]).shape
    if len(shape) != 2:
        raise ValueError(f"`part_masks` must hold (H, W) masks; got shape {shape}.")
    masks = [_as_mask(mask, shape, f"part_masks[{k}]") for k, mask in enumerate(part_masks)]
    frames = [_resized(_as_tensor(frame, f"generated_frames[{k}]"), shape) for k, frame in enumerate(generated_frames)]
    drawn = torch.zeros(shape, dtype=torch.bool)
    fractions = []
    for k in range(len(frames) - 1):
        drawn |= masks[k]
        kept = drawn & ~masks[k + 1]
        if kept.any():
            unchanged = (frames[k + 1] - frames[k]).abs().amax(dim=0) < tolerance
            fractions.append(float(unchanged[kept].float().mean()))
    return math.fsum(fractions) / len(fractions) if fractions else None
