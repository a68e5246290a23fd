"""Shared fixtures. Tests run offline on CPU: the Hub is switched off before any Hugging Face import."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "bagel-tiny"
# The fixture's image sizes: (max side, min side, stride) of the VAE and ViT paths.
FIXTURE_VAE_SIZE = (64, 32, 16)
FIXTURE_VIT_SIZE = (56, 28, 14)


@pytest.fixture(scope="session")
def fixture_cases() -> dict:
    return json.loads((FIXTURE / "cases.json").read_text())


def load_fixture_pipeline(**kwargs):
    from loom_hf import LoomInterleavedPipeline

    pipe = LoomInterleavedPipeline.from_bagel(
        FIXTURE / "checkpoint", vae_image_size=FIXTURE_VAE_SIZE, vit_image_size=FIXTURE_VIT_SIZE, **kwargs
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def bagel_pipeline():
    """The bagel-tiny release loaded through the public `from_bagel`, with Loom's (zero) frame table and entity
    tokens (shared: tests must not modify it)."""
    return load_fixture_pipeline()


@pytest.fixture(scope="session")
def plain_bagel_pipeline():
    """The bagel-tiny release as plain BAGEL: no frame table (`max_frames=0`), no entity tokens."""
    return load_fixture_pipeline(max_frames=0, entity_tokens=())


@pytest.fixture
def tiny_pipe():
    """A fresh, randomly initialised tiny pipeline (each test may change it)."""
    from loom_hf.tiny import tiny_pipeline

    pipe = tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def count_model_forwards(pipe) -> list:
    """Make `pipe.model.forward` append to the returned list at every call (to check that refusals come first)."""
    calls, forward = [], pipe.model.forward

    def counting_forward(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    pipe.model.forward = counting_forward
    return calls


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


@pytest.fixture
def framed_pipe():
    """A tiny pipeline with an 8-row temporal table filled with random values (so frame indices matter)."""
    from loom_hf.tiny import tiny_pipeline

    pipe = tiny_pipeline(seed=0, max_frames=8)
    torch.nn.init.normal_(pipe.model.model.frame_embed.weight, std=0.5)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def branch_velocity(pipe, cache, latents: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Packed velocity `[tokens, channels]` of one `(1, C, h, w)` latent image at flow time `sigma` attending
    read-only to `cache`: one plain model forward pass, independent of the pipeline's batched denoising."""
    from loom_hf.modeling import TokenType
    from loom_hf.modeling.latents import pack_latents

    patch = pipe.model.config.latent_patch_size
    tokens = pack_latents(latents, patch)
    ids, types = pipe.processor.image_block(tokens.shape[0], TokenType.LATENT)
    with cache.read_only(), torch.no_grad():
        output = pipe.model(
            input_ids=torch.tensor([ids]),
            mm_token_type_ids=torch.tensor([types]),
            latents=tokens,
            latent_grid_hw=torch.tensor([[latents.shape[-2] // patch, latents.shape[-1] // patch]]),
            timesteps=sigma.reshape(1),
            past_key_values=cache,
        )
    return output.velocity
