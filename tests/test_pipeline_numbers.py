"""Pipeline numbers: a prompt longer than the model's positions, latents on a task that has none, non-finite or
negative entity guidance and entity masks, each refused by name before any forward pass; and a bfloat16 pipeline
running an edit and an understanding question through `pipe(...)` as its float32 twin does."""

import numpy as np
import pytest
import torch
from PIL import Image

from loom_hf.tiny import tiny_pipeline

from .conftest import count_model_forwards

NAN, INF = float("nan"), float("inf")
IMAGE = Image.new("RGB", (64, 64), (200, 30, 30))
LONG_PROMPT = "red house " * 3000  # 6000 tokens; the tiny model has 4096 positions


def quiet_pipeline(dtype: torch.dtype = torch.float32):
    pipe = tiny_pipeline(seed=0).to(dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def counted():
    """The tiny pipeline with a list that grows at every model forward pass."""
    pipe = quiet_pipeline()
    return pipe, count_model_forwards(pipe)


def entity_mask(value: float) -> np.ndarray:
    return np.full((64, 64), value, dtype=np.float32)


EDIT = [IMAGE, "Replace the <upper> with a red sweater"]
REFUSED = {
    "too-long-prompt": (
        {"inputs": [LONG_PROMPT]},
        r"Request 0 holds \d+ text tokens, more than the model's 4096 positions allow",
    ),
    "too-long-second-request": (
        {"inputs": [["Draw a red house"], [LONG_PROMPT]]},
        r"Request 1 holds \d+ text tokens",
    ),
    "latents-on-text": (
        {"inputs": [IMAGE, "What colour is it?"], "task": "text", "latents": torch.zeros(1, 16, 8, 8)},
        r"`latents` give the initial noise of task='image' outputs.*text has none",
    ),
    "nan-entity-scale": (
        {"inputs": EDIT, "entity_masks": {"<upper>": entity_mask(1.0)}, "entity_guidance_scale": NAN},
        r"`entity_guidance_scale` must be a finite number",
    ),
    "negative-entity-scale": (
        {"inputs": EDIT, "entity_masks": {"<upper>": entity_mask(1.0)}, "entity_guidance_scale": -1.0},
        r"`entity_guidance_scale` must be >= 0.0; got -1.0",
    ),
    "inf-entity-mask": (
        {"inputs": EDIT, "entity_masks": {"<upper>": entity_mask(INF)}, "entity_guidance_scale": 4.0},
        r"`entity_masks\['<upper>'\]` must hold finite values in \[0, 1\]",
    ),
    "negative-entity-mask": (
        {"inputs": EDIT, "entity_masks": {"<upper>": entity_mask(-0.5)}, "entity_guidance_scale": 4.0},
        r"`entity_masks\['<upper>'\]` must hold finite values in \[0, 1\]",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_numbers_are_refused_by_name_before_any_forward(counted, case):
    pipe, calls = counted
    arguments, message = REFUSED[case]
    with pytest.raises(ValueError, match=message):
        pipe(**{"num_inference_steps": 2, **arguments})
    assert calls == []


def test_finite_latents_on_the_text_task_are_refused_for_the_task():
    """The refusal names the task, not the values: these latents are finite and well shaped for task='image'."""
    pipe = quiet_pipeline()
    latents = torch.zeros(1, 16, 8, 8)
    pipe([IMAGE, "Make it blue"], num_inference_steps=1, latents=latents, output_type="latent")  # accepted there
    with pytest.raises(ValueError, match="task='image'") as refused:
        pipe([IMAGE, "What colour is it?"], task="text", latents=latents)
    assert "non-finite" not in str(refused.value)


@pytest.fixture(scope="module")
def float32_and_bfloat16():
    return quiet_pipeline(), quiet_pipeline(torch.bfloat16)


def test_bfloat16_pipeline_edits_like_float32(float32_and_bfloat16):
    """Float pixels of the input image meet bfloat16 VAE and ViT weights; the edit's latents match the float32
    pipeline's to bfloat16 precision."""
    float32, bfloat16 = float32_and_bfloat16
    assert bfloat16.model.dtype == torch.bfloat16 and bfloat16.vae.dtype == torch.bfloat16

    def edit(pipe):
        generator = torch.Generator().manual_seed(0)
        return pipe([IMAGE, "Make it blue"], num_inference_steps=2, generator=generator, output_type="latent")

    expected, actual = edit(float32).images[0], edit(bfloat16).images[0]
    assert actual.shape == expected.shape == (1, 16, 8, 8) and bool(torch.isfinite(actual).all())
    torch.testing.assert_close(actual.float(), expected, atol=0.1, rtol=0.05)
    decoded = bfloat16([IMAGE, "Make it blue"], num_inference_steps=1).images[0]  # through the bfloat16 VAE decoder
    assert decoded.size == (64, 64) and decoded.mode == "RGB"


def test_bfloat16_pipeline_answers_like_float32(float32_and_bfloat16):
    """Image understanding on the bfloat16 pipeline decodes the float32 pipeline's greedy tokens."""
    float32, bfloat16 = float32_and_bfloat16

    def answer(pipe):
        return pipe([IMAGE, "What colour is it?"], task="text", max_new_tokens=6).segments[-1].token_ids

    expected = answer(float32)
    assert len(expected) == 6 and answer(bfloat16) == expected
