"""VAE latents as the model reads them: encoded into its latent space, then packed into tokens (and back).

The model's latent space is diffusers' `AutoencoderKL` latent shifted and scaled, `(z - shift) · scale`; a token is
one `p × p` patch of it, flattened `(patch_row, patch_col, channel)` as in BAGEL.
"""

import torch
from diffusers import AutoencoderKL

__all__ = ["encode_latents", "pack_latents", "unpack_latents"]


def encode_latents(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """`[B, 3, H, W]` pixels in [-1, 1] → the VAE posterior mean in the model's latent space (shifted and scaled)."""
    latents = vae.encode(pixels).latent_dist.mode()
    return (latents - vae.config.shift_factor) * vae.config.scaling_factor


def pack_latents(latents: torch.Tensor, patch_size: int = 2) -> torch.Tensor:
    """`(1, C, H, W)` diffusers latents → `(H/p · W/p, p·p·C)` tokens, row-major, each `(patch_row, patch_col, C)`."""
    _, channels, height, width = latents.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    tokens = latents[0, :, : grid_h * patch_size, : grid_w * patch_size]
    tokens = tokens.reshape(channels, grid_h, patch_size, grid_w, patch_size).permute(1, 3, 2, 4, 0)
    return tokens.reshape(grid_h * grid_w, patch_size * patch_size * channels)


def unpack_latents(tokens: torch.Tensor, grid_h: int, grid_w: int, patch_size: int = 2) -> torch.Tensor:
    """Inverse of [`pack_latents`]: `(h·w, p·p·C)` tokens → `(1, C, p·h, p·w)` diffusers latents."""
    channels = tokens.shape[-1] // (patch_size * patch_size)
    latents = tokens.reshape(grid_h, grid_w, patch_size, patch_size, channels).permute(4, 0, 2, 1, 3)
    return latents.reshape(1, channels, grid_h * patch_size, grid_w * patch_size)
