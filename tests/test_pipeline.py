"""Pipeline behaviour: argument checks, image modes, sizes, callbacks, seeding, saving and loading."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from loom_hf import ImageSegment, LoomInterleavedPipeline, TextSegment
from loom_hf.modeling.image_processing_loom import to_rgb

from .conftest import count_model_forwards

PROMPT = ["Draw a red house"]


@pytest.fixture
def counted(tiny_pipe):
    """The tiny pipeline with a counter of model forward passes."""
    return tiny_pipe, count_model_forwards(tiny_pipe)


BAD_CALLS = [
    ({"inputs": []}, ValueError, "`inputs`"),
    ({"inputs": [PROMPT[0], 3]}, TypeError, r"`inputs\[1\]`"),
    ({"task": "video"}, ValueError, "`task`"),
    ({"num_inference_steps": 0}, ValueError, "`num_inference_steps`"),
    ({"guidance_scale": -1.0}, ValueError, "`guidance_scale`"),
    ({"image_guidance_scale": -0.5}, ValueError, "`image_guidance_scale`"),
    ({"guidance_interval": (0.5, 1.5)}, ValueError, "`guidance_interval`"),
    ({"guidance_interval": (0.8, 0.2)}, ValueError, "`guidance_interval`"),
    ({"guidance_renorm": "spatial"}, ValueError, "`guidance_renorm`"),
    ({"guidance_renorm_min": 2.0}, ValueError, "`guidance_renorm_min`"),
    ({"timestep_shift": 0.0}, ValueError, "`timestep_shift`"),
    ({"height": 40}, ValueError, "`height`"),
    ({"width": 0}, ValueError, "`width`"),
    ({"height": 128}, ValueError, "`height`"),
    ({"latents": torch.zeros(1, 4, 8, 8)}, ValueError, "`latents`"),
    ({"latents": torch.zeros(1, 16, 8, 8), "height": 32}, ValueError, "`latents`"),
    ({"max_new_tokens": 0}, ValueError, "`max_new_tokens`"),
    ({"do_sample": True, "temperature": 0.0}, ValueError, "`temperature`"),
    ({"output_type": "jpeg"}, ValueError, "`output_type`"),
    ({"callback_on_step_end_tensor_inputs": ["noise"]}, ValueError, "`callback_on_step_end_tensor_inputs`"),
]


@pytest.mark.parametrize(("overrides", "error", "message"), BAD_CALLS)
def test_bad_input_is_rejected_before_any_work(counted, overrides, error, message):
    pipe, calls = counted
    arguments = {"inputs": PROMPT, "num_inference_steps": 2, **overrides}
    with pytest.raises(error, match=message):
        pipe(**arguments)
    assert calls == []


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "LA"])
def test_image_modes_are_converted_not_rejected(tiny_pipe, mode):
    image = Image.new("RGB", (48, 32), (200, 30, 30)).convert(mode)
    output = tiny_pipe([image, "What is it?"], task="text", max_new_tokens=3)
    assert isinstance(output.segments[0], TextSegment)
    assert to_rgb(image).mode == "RGB"


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)


def test_output_size_follows_the_last_image_then_the_vae_default(tiny_pipe):
    tall = Image.new("RGB", (48, 80))  # VAE rule at (64, 32, 16): 32 x 64
    wide = Image.new("RGB", (80, 40))  # 64 x 32
    assert tiny_pipe([tall, wide, "edit"], num_inference_steps=1).images[0].size == (64, 32)
    assert tiny_pipe([wide, tall, "edit"], num_inference_steps=1).images[0].size == (32, 64)
    assert tiny_pipe(PROMPT, num_inference_steps=1).images[0].size == (64, 64)
    assert tiny_pipe(PROMPT, num_inference_steps=1, height=32, width=48).images[0].size == (48, 32)


def test_output_types_and_segments(tiny_pipe):
    latent = tiny_pipe(PROMPT, num_inference_steps=1, height=32, width=32, output_type="latent").images[0]
    assert latent.shape == (1, 16, 4, 4)
    array = tiny_pipe(PROMPT, num_inference_steps=1, height=32, width=32, output_type="np").images[0]
    assert array.shape == (32, 32, 3) and array.dtype == np.float32
    tensor = tiny_pipe(PROMPT, num_inference_steps=1, height=32, width=32, output_type="pt").images[0]
    assert tensor.shape == (3, 32, 32)
    thought = tiny_pipe(PROMPT, think=True, max_new_tokens=3, num_inference_steps=1, height=32, width=32)
    assert [type(s) for s in thought.segments] == [TextSegment, ImageSegment]
    (segments,) = tiny_pipe(PROMPT, num_inference_steps=1, return_dict=False)
    assert isinstance(segments[0], ImageSegment)


@pytest.mark.parametrize(
    ("task", "system_prompt"), [("text", "vlm_think_system_prompt"), ("image", "gen_think_system_prompt")]
)
def test_think_decodes_after_the_official_system_prompt_of_its_task(
    tiny_pipe, fixture_cases, monkeypatch, task, system_prompt
):
    """With `think`, the context the thought is decoded from holds the official system prompt of the task (reasoning
    for answers, planning for images) as its first turn, then the prompt."""
    cached = []
    decode_texts = tiny_pipe.decode_texts

    def recording_decode_texts(contexts, *args, **kwargs):
        cached.extend(context.token_ids[0].tolist() for context in contexts)
        return decode_texts(contexts, *args, **kwargs)

    monkeypatch.setattr(tiny_pipe, "decode_texts", recording_decode_texts)
    image_args = {"num_inference_steps": 1, "height": 32, "width": 32} if task == "image" else {}
    tiny_pipe(PROMPT, task=task, think=True, max_new_tokens=2, **image_args)

    tokenizer = tiny_pipe.processor.tokenizer
    start, end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])

    def turn(text: str) -> list[int]:
        return [start, *tokenizer.encode(text, add_special_tokens=False), end]

    assert cached == [turn(fixture_cases["config"][system_prompt]) + turn(PROMPT[0])]


def test_generator_reproduces_and_seeds_differ(tiny_pipe):
    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        return tiny_pipe(
            PROMPT, num_inference_steps=2, height=32, width=32, output_type="latent", generator=generator
        ).images[0]

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_sampled_text_is_seeded(tiny_pipe):
    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        return (
            tiny_pipe(PROMPT, task="text", do_sample=True, temperature=1.5, max_new_tokens=8, generator=generator)
            .segments[0]
            .token_ids
        )

    assert run(3) == run(3)


def test_callback_sees_every_step_and_can_replace_latents(tiny_pipe):
    steps = []

    def callback(pipe, step, timestep, tensors):
        steps.append(step)
        return {"latents": torch.zeros_like(tensors["latents"])}

    latent = tiny_pipe(
        PROMPT, num_inference_steps=3, height=32, width=32, output_type="latent", callback_on_step_end=callback
    ).images[0]
    assert steps == [0, 1, 2]
    assert torch.count_nonzero(latent) == 0


@pytest.fixture
def step_rows(tiny_pipe):
    """The tiny pipeline with a record of the batch rows of every denoising forward pass (read-only cache)."""
    rows = []
    forward = tiny_pipe.model.forward

    def recording_forward(*args, **kwargs):
        cache = kwargs.get("past_key_values")
        if cache is not None and cache.is_read_only:
            rows.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    tiny_pipe.model.forward = recording_forward
    return tiny_pipe, rows


@pytest.mark.parametrize(
    ("guidance_scale", "image_guidance_scale", "branches"), [(1.0, 2.0, 1), (4.0, 1.0, 2), (4.0, 2.0, 3)]
)
def test_guidance_branches_run_as_rows_of_one_forward(step_rows, guidance_scale, image_guidance_scale, branches):
    """Each step is one forward pass whose rows are the conditional context, plus the text- and image-free ones only
    when their scale is on."""
    pipe, rows = step_rows
    image = Image.new("RGB", (32, 32))
    pipe(
        [image, PROMPT[0]],
        num_inference_steps=2,
        guidance_scale=guidance_scale,
        image_guidance_scale=image_guidance_scale,
    )
    assert rows == [branches, branches]


def test_guidance_interval_switches_guidance_off(step_rows):
    pipe, rows = step_rows
    pipe(PROMPT, num_inference_steps=4, guidance_interval=(0.0, 0.5))
    # Shifted σ of the 4 steps with shift 3: 1.0, 0.9, 0.75, 0.5 -> the guidance branches only at σ = 0.5.
    assert rows == [1, 1, 1, 3]


def test_saved_pipeline_loads_offline_in_a_fresh_process(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "pipe")
    kwargs = {"num_inference_steps": 2, "height": 32, "width": 32, "output_type": "latent"}
    expected = tiny_pipe(PROMPT, generator=torch.Generator().manual_seed(0), **kwargs).images[0]
    script = f"""
import json, os, torch
assert os.environ["HF_HUB_OFFLINE"] == "1"
from loom_hf import LoomInterleavedPipeline
pipe = LoomInterleavedPipeline.from_pretrained({str(tmp_path / "pipe")!r})
pipe.set_progress_bar_config(disable=True)
latent = pipe({PROMPT!r}, generator=torch.Generator().manual_seed(0), **{kwargs!r}).images[0]
torch.save(latent, {str(tmp_path / "latent.pt")!r})
print(json.dumps([type(pipe.model).__name__, type(pipe.processor).__name__]))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={**_env(), "HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == ["LoomForInterleavedGeneration", "LoomProcessor"]
    assert torch.equal(torch.load(tmp_path / "latent.pt"), expected)


def _env() -> dict:
    import os

    return dict(os.environ)


def test_pipeline_class_is_recorded(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "LoomInterleavedPipeline"
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert isinstance(LoomInterleavedPipeline.from_pretrained(tmp_path), LoomInterleavedPipeline)


def test_default_guidance_comes_from_the_pipeline_config(step_rows, tmp_path):
    """A call that names no guidance uses the pipeline's saved defaults (the embedded model ships its own)."""
    pipe, rows = step_rows
    pipe.register_to_config(default_guidance_scale=1.0, default_image_guidance_scale=1.0)
    pipe(PROMPT, num_inference_steps=2, height=32, width=32)
    assert rows == [1, 1]  # guidance off: the conditional branch only
    rows.clear()
    pipe(PROMPT, num_inference_steps=1, height=32, width=32, guidance_scale=4.0, image_guidance_scale=2.0)
    assert rows == [3]  # the call's own scales win: conditional, text-free and image-free rows
    pipe.save_pretrained(tmp_path / "saved")
    reloaded = LoomInterleavedPipeline.from_pretrained(tmp_path / "saved")
    assert (reloaded.config.default_guidance_scale, reloaded.config.default_image_guidance_scale) == (1.0, 1.0)


def test_default_euler_steps_come_from_the_pipeline_config(tiny_pipe, tmp_path):
    """A call that names no `num_inference_steps` runs the pipeline's saved `default_num_inference_steps`."""
    steps = []

    def count(pipe, step, timestep, tensors):
        steps.append(step)
        return tensors

    tiny_pipe.register_to_config(default_num_inference_steps=3)
    tiny_pipe(PROMPT, height=32, width=32, callback_on_step_end=count)
    assert steps == [0, 1, 2]
    steps.clear()
    tiny_pipe(PROMPT, height=32, width=32, num_inference_steps=1, callback_on_step_end=count)
    assert steps == [0]  # the call's own count wins
    tiny_pipe.save_pretrained(tmp_path / "saved")
    reloaded = LoomInterleavedPipeline.from_pretrained(tmp_path / "saved")
    assert reloaded.config.default_num_inference_steps == 3
    assert reloaded.resolved_defaults("image")["num_inference_steps"] == 3


def test_a_pipeline_saved_without_a_default_step_count_loads_with_50(tiny_pipe, tmp_path):
    """Pipelines saved before `default_num_inference_steps` existed keep the step count they ran with."""
    tiny_pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    del index["default_num_inference_steps"]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    assert LoomInterleavedPipeline.from_pretrained(tmp_path).resolved_defaults("image")["num_inference_steps"] == 50


@pytest.mark.parametrize("value", [0, -2, 2.5, True, float("nan")])
def test_a_bad_default_step_count_is_refused_when_the_pipeline_is_built(tiny_pipe, value):
    with pytest.raises(ValueError, match="`default_num_inference_steps` must be an integer >= 1"):
        LoomInterleavedPipeline(**tiny_pipe.components, default_num_inference_steps=value)
