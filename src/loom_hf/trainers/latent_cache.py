"""An optional pre-pass that encodes every image of a training dataset once, so training skips the VAE."""

import datasets
import torch
from datasets.fingerprint import Hasher
from diffusers import AutoencoderKL

from ..modeling.latents import encode_latents, pack_latents
from ..modeling.processing_loom import LoomProcessor
from .schema import IMAGE_FIELDS, validate_rows

__all__ = ["cache_latents", "latent_cache_fingerprint"]


@torch.no_grad()
def _encode(images, *, vae: AutoencoderKL, processor: LoomProcessor, patch_size: int) -> tuple[list, list]:
    """Flattened clean latent tokens and (rows, cols) token grids of PIL images, as the trainer would encode them."""
    flat, grids = [], []
    for image in images:
        pixels = processor.image_processor.vae_pixel_values(processor.image_processor.resize_for_vae(image))
        latents = encode_latents(vae, pixels.to(device=vae.device, dtype=vae.dtype))
        tokens = pack_latents(latents.float().cpu(), patch_size)
        flat.append(tokens.flatten().tolist())
        grids.append([latents.shape[-2] // patch_size, latents.shape[-1] // patch_size])
    return flat, grids


def latent_cache_fingerprint(
    dataset: datasets.Dataset, vae: AutoencoderKL, *, processor: LoomProcessor, patch_size: int
) -> str:
    """A name for the encoded dataset made of what decides its content: the rows, the autoencoder's weights, dtype and
    configuration, the image processor and the patch size. Reloading the same autoencoder from another folder (or in
    another run) gives the same name, so `datasets` reuses the encoded cache instead of encoding again."""
    hasher = Hasher()
    hasher.update(dataset._fingerprint)
    hasher.update({key: value for key, value in vae.config.items() if key != "_name_or_path"})
    hasher.update(str(vae.dtype))
    for name, tensor in vae.state_dict().items():
        hasher.update(name)
        hasher.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    hasher.update(processor.image_processor.to_dict())
    hasher.update(patch_size)
    return hasher.hexdigest()


def cache_latents(
    dataset: datasets.Dataset,
    vae: AutoencoderKL,
    *,
    processor: LoomProcessor,
    patch_size: int = 2,
    batch_size: int = 16,
    num_proc: int | None = None,
    on_error: str = "skip",
) -> datasets.Dataset:
    """`dataset` with the clean latent tokens of every image, computed with `datasets.map` (and its disk cache).

    For each image column (`images`, `step_images`, `targets`) it adds `<column>_latents` (flattened tokens) and
    `<column>_latent_grids`; training instances then carry these latents and the trainer does not run the VAE.
    Encoding uses the posterior mean, exactly as the trainer and the pipeline do.

    Rows are validated first ([`validate_rows`]), as the training dataset would: bad rows (an unreadable or missing
    image, ...) are left out with one counted warning (`on_error="skip"`) or rejected with their indices (`"raise"`),
    so one bad image never stops the encoding.
    """
    valid, problems = validate_rows(dataset, on_error=on_error)
    if problems:
        dataset = dataset.select(valid)
    features = dataset.features.copy()
    for column in IMAGE_FIELDS:
        features[f"{column}_latents"] = datasets.List(datasets.List(datasets.Value("float32")))
        features[f"{column}_latent_grids"] = datasets.List(datasets.List(datasets.Value("int32")))

    def encode_batch(batch: dict) -> dict:
        for column in IMAGE_FIELDS:
            encoded = [_encode(images, vae=vae, processor=processor, patch_size=patch_size) for images in batch[column]]
            batch[f"{column}_latents"] = [flat for flat, _ in encoded]
            batch[f"{column}_latent_grids"] = [grids for _, grids in encoded]
        return batch

    vae.eval()
    return dataset.map(
        encode_batch,
        batched=True,
        batch_size=batch_size,
        features=features,
        num_proc=num_proc,
        new_fingerprint=latent_cache_fingerprint(dataset, vae, processor=processor, patch_size=patch_size),
        desc="Encoding latents",
    )
