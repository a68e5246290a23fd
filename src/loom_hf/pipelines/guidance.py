"""BAGEL's three-context classifier-free guidance with norm rescaling ("renorm")."""

from dataclasses import dataclass

import torch

__all__ = ["GUIDANCE_RENORMS", "GuidanceConfig", "guided_velocity", "guidance_active"]

GUIDANCE_RENORMS = ("global", "channel", "text_channel")


@dataclass(frozen=True)
class GuidanceConfig:
    """The guidance of one image: BAGEL's text/image scales, interval and renorm, and Loom's entity scale.

    `entity_scale` replaces `scale` inside the entity masks (localized guidance); `None` when no mask is given.
    """

    scale: float = 4.0
    image_scale: float = 2.0
    interval: tuple[float, float] = (0.0, 1.0)
    renorm: str = "global"
    renorm_min: float = 0.0
    entity_scale: float | None = None

    @property
    def uses_image_free(self) -> bool:
        """Whether any step reads the image-free context: image guidance on top of text (or entity) guidance."""
        return self.image_scale > 1.0 and max(self.scale, self.entity_scale or 1.0) > 1.0

    def scales_at(self, sigma: float) -> tuple[float, float, float | None]:
        """(text, image, entity) scales at flow time `sigma`: all off outside the interval."""
        if not guidance_active(sigma, self.interval):
            return 1.0, 1.0, None if self.entity_scale is None else 1.0
        return self.scale, self.image_scale, self.entity_scale


def guidance_active(sigma: float, interval: tuple[float, float]) -> bool:
    """Guidance applies where `interval[0] < σ <= interval[1]` (σ is the *shifted* flow time)."""
    return interval[0] < sigma <= interval[1]


def _rescale(reference: torch.Tensor, guided: torch.Tensor, per_token: bool, renorm_min: float) -> torch.Tensor:
    """Shrink `guided` so its norm does not exceed that of `reference` (never below `renorm_min` of it)."""
    dims = -1 if per_token else (-2, -1)
    ratio = reference.norm(dim=dims, keepdim=True) / (guided.norm(dim=dims, keepdim=True) + 1e-8)
    return guided * ratio.clamp(min=renorm_min, max=1.0)


def guided_velocity(
    cond: torch.Tensor,
    text_uncond: torch.Tensor | None,
    image_uncond: torch.Tensor | None,
    guidance_scale: float,
    image_guidance_scale: float,
    renorm: str = "global",
    renorm_min: float = 0.0,
) -> torch.Tensor:
    """Combine the velocities of the three contexts as BAGEL does, on packed `[..., tokens, channels]` velocities
    (leading dims: one image each).

    Text guidance first, `v_t = u_text + s_text·(v − u_text)`, then image guidance on top,
    `v_ti = u_img + s_img·(v_t − u_img)`, then a renorm against the conditional velocity `v`:

    * `"global"`: one ratio over all tokens and channels of an image;
    * `"channel"`: one ratio per token;
    * `"text_channel"`: per token, applied to `v_t` *before* image guidance (none after).

    As in BAGEL, no guidance at all is applied unless `guidance_scale > 1` (image guidance alone is ignored).
    `text_uncond` / `image_uncond` are only read when their scale is above 1.
    """
    if renorm not in GUIDANCE_RENORMS:
        raise ValueError(f"`renorm` must be one of {GUIDANCE_RENORMS}; got {renorm!r}.")
    if guidance_scale <= 1.0:
        return cond
    text_guided = text_uncond + guidance_scale * (cond - text_uncond)
    if renorm == "text_channel":
        text_guided = _rescale(cond, text_guided, per_token=True, renorm_min=renorm_min)
    if image_guidance_scale > 1.0:
        guided = image_uncond + image_guidance_scale * (text_guided - image_uncond)
    else:
        guided = text_guided
    if renorm == "text_channel":
        return guided
    return _rescale(cond, guided, per_token=renorm == "channel", renorm_min=renorm_min)
