"""Frame keeping: a tutorial frame keeps, exactly, the parts of the previous frame that its step leaves alone.

Loom conditions every frame on the earlier ones, yet each frame is still sampled from fresh noise, so a part drawn
in one frame comes back slightly redrawn in the next. With frame keeping on, sampling decides part of the way
through which latent tokens the step changes: those where the model's own estimate of the clean frame (the current
latents moved to sigma 0 along the predicted velocity) differs from the previous frame's latents by at least a
threshold, widened by one token on every side so that the new part can blend into its surroundings, and the one
token it changes most, whatever the threshold (every step adds something). With a text share, the tokens where the
step's text moves the model's velocity most change too: where the conditional and the text-free branch of the
guidance differ by at least that share of their largest difference (DiffEdit's mask, from the two predictions the
guidance computes anyway), which is where the model places the part the text names even when its estimate has only
begun to draw it. Every other token is kept: after each later Euler step it is set to the previous frame's latents
noised to the step's sigma with the frame's own initial noise (the flow's straight path, as RePaint and blended
latent diffusion replace the known region), so it ends equal to the previous frame's latents. Nothing of the ground
truth takes part in the decision; the model's own predictions alone say what changes.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["FrameKeeping", "kept_tokens", "follow_kept_tokens"]


@dataclass(frozen=True)
class FrameKeeping:
    """When and how a frame decides what it keeps of the previous one.

    Args:
        threshold: a token changes when the mean absolute difference between the clean-frame estimate and the
            previous frame's latents over its latent values reaches this.
        decide_at: the decision is taken at the first Euler step whose index is at least this share of the steps.
        text_share: tokens where the step text's effect on the velocity reaches this share of its largest effect
            change too (`None`: the estimate alone decides).
    """

    threshold: float
    decide_at: float
    text_share: float | None = None

    def decision_step(self, num_steps: int) -> int:
        """Index of the Euler step whose velocity decides the kept tokens."""
        return min(math.ceil(self.decide_at * num_steps), num_steps - 1)


def kept_tokens(
    estimate: torch.Tensor,
    previous: torch.Tensor,
    threshold: float,
    *,
    patch_size: int,
    text_effect: torch.Tensor | None = None,
    text_share: float | None = None,
) -> torch.Tensor:
    """A `(N, 1, h, w)` float mask (1: kept) over latents `(N, C, h, w)`, constant over each `patch_size` token.

    A token changes when its mean absolute difference between `estimate` and `previous` reaches `threshold`; the
    tokens next to such a token (its 3 × 3 neighbourhood) change too. A tutorial step always adds something, so the
    token that differs most always changes as well, even below the threshold: a small part (a door, a window) that
    the estimate only begins to draw by the decision step is still drawn. With `text_effect` (`(N, 1, h/p, w/p)`, the
    step text's effect on each token's velocity) and `text_share`, the tokens whose effect reaches that share of the
    frame's largest change as well.
    """
    difference = F.avg_pool2d((estimate - previous).abs().mean(dim=1, keepdim=True), patch_size)
    changes = F.max_pool2d((difference >= threshold).float(), kernel_size=3, stride=1, padding=1)
    most_changed = difference >= difference.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    changes = torch.maximum(changes, most_changed.float())
    if text_effect is not None and text_share is not None:
        named = text_effect >= text_share * text_effect.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
        changes = torch.maximum(changes, named.float())
    return F.interpolate(1.0 - changes, scale_factor=patch_size, mode="nearest")


def follow_kept_tokens(
    latents: torch.Tensor, previous: torch.Tensor, noise: torch.Tensor, *, mask: torch.Tensor, sigma: float
) -> torch.Tensor:
    """`latents` with the kept tokens (`mask` 1) on the flow path from `noise` to `previous`, at `sigma`."""
    on_path = (1.0 - sigma) * previous + sigma * noise
    return torch.lerp(latents, on_path, mask)
