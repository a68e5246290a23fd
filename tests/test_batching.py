"""Batched requests: a batch gives what its requests give one at a time; guidance branches run as rows of one
forward; text decodes on transformers' generation stack; step caching; thread safety; the batch argument checks."""

import logging
import threading

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.hooks import FasterCacheConfig, FirstBlockCacheConfig, TaylorSeerCacheConfig
from PIL import Image

from loom_hf import LoomCache, TextSegment
from loom_hf.modeling.latents import unpack_latents
from loom_hf.pipelines.guidance import GuidanceConfig, guided_velocity
from loom_hf.pipelines.pipeline_loom import ImageJob

from .conftest import branch_velocity

RED = Image.new("RGB", (64, 64), (200, 30, 30))
BLUE = Image.new("RGB", (64, 64), (20, 60, 210))
TALL = Image.new("RGB", (32, 64), (10, 160, 40))
IMAGE_ARGS = {"num_inference_steps": 3, "output_type": "latent", "guidance_scale": 4.0, "image_guidance_scale": 2.0}


def seeds(*values):
    return [torch.Generator().manual_seed(value) for value in values]


def assert_batch_matches_serial(pipe, requests, **kwargs):
    """Run `requests` as one batch (one generator each) and one by one; every output agrees."""
    batch = pipe(requests, generator=seeds(*range(len(requests))), **kwargs)
    assert len(batch.requests) == len(requests)
    for index, request in enumerate(requests):
        alone = pipe(request, generator=seeds(index), **kwargs)
        together = batch.requests[index]
        assert [type(s) for s in together.segments] == [type(s) for s in alone.segments]
        assert together.texts == alone.texts
        assert [s.token_ids for s in together.segments if isinstance(s, TextSegment)] == [
            s.token_ids for s in alone.segments if isinstance(s, TextSegment)
        ]
        for mine, theirs in zip(together.images, alone.images):
            torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=0)
    return batch


def test_text_to_image_batch_equals_one_at_a_time(tiny_pipe):
    batch = assert_batch_matches_serial(
        tiny_pipe, [["A red square."], ["A blue circle above a green line."], ["Draw a house"]], **IMAGE_ARGS
    )
    assert len(batch.images) == 3 and not torch.allclose(batch.images[0], batch.images[1])


def test_edit_batch_with_different_images_and_sizes_equals_one_at_a_time(tiny_pipe):
    requests = [[RED, "Make it blue."], [BLUE, TALL, "Put image 1 on image 2."], [TALL, "Make it red."]]
    batch = assert_batch_matches_serial(tiny_pipe, requests, **IMAGE_ARGS)
    assert [tuple(image.shape[-2:]) for image in batch.images] == [(8, 8), (8, 4), (8, 4)]


def test_understanding_and_think_batches_equal_one_at_a_time(tiny_pipe):
    questions = [[RED, "What is drawn here?"], ["Describe a tree."], [BLUE, TALL, "Which image is taller?"]]
    assert_batch_matches_serial(tiny_pipe, questions, task="text", max_new_tokens=8)
    assert_batch_matches_serial(tiny_pipe, questions, task="text", think=True, max_new_tokens=6)
    thoughts = assert_batch_matches_serial(
        tiny_pipe, [["Draw a house"], [RED, "Make it blue."]], think=True, max_new_tokens=5, **IMAGE_ARGS
    )
    assert [type(s).__name__ for s in thoughts.requests[1].segments] == ["TextSegment", "ImageSegment"]


def test_tutorial_batch_renders_frames_together_and_plans_finish_independently(framed_pipe, monkeypatch):
    plans = {"Draw a red house": ["Walls", "Roof", "Door"], "Draw a cat": ["Head"], "Draw a tree": ["Trunk", "Leaves"]}
    written = {
        prompt: TextSegment(text="\n".join(f"Step {i}: {s}" for i, s in enumerate(p, 1))) for prompt, p in plans.items()
    }
    instructions = {}

    def decode_texts(contexts, config, generators):
        return [written[instructions[id(context)]] for context in contexts]

    encode_context = framed_pipe.encode_context

    def record(inputs, *args, **kwargs):
        contexts = encode_context(inputs, *args, **kwargs)
        for prompt in plans:
            if any(isinstance(item, str) and prompt in item for item in inputs):
                instructions[id(contexts.cond)] = prompt
        return contexts

    monkeypatch.setattr(framed_pipe, "decode_texts", decode_texts)
    monkeypatch.setattr(framed_pipe, "encode_context", record)
    rows = []
    denoise = framed_pipe.denoise
    monkeypatch.setattr(
        framed_pipe, "denoise", lambda jobs, settings: rows.append(len(jobs)) or denoise(jobs, settings)
    )
    requests = [[prompt] for prompt in plans]
    kwargs = {"task": "interleaved", "num_inference_steps": 2, "height": 32, "width": 32, "output_type": "latent"}
    batch = assert_batch_matches_serial(framed_pipe, requests, **kwargs)
    assert [request.plan for request in batch.requests] == list(plans.values())
    assert [len(request.images) for request in batch.requests] == [3, 1, 2]
    assert rows[:3] == [3, 2, 1]  # frame t of every tutorial that has a step t, in one denoising


def test_batched_guidance_forward_equals_the_serial_branches(tiny_pipe):
    """One forward over the left-padded caches of every job's three branches gives each branch's own velocity."""
    requests = [[RED, "Make it blue."], ["A red square."], [BLUE, TALL, "Combine them."]]
    jobs = [ImageJob(tiny_pipe.encode_context(r), (32, 32)) for r in requests]
    latents = torch.randn(3, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor(0.7)
    guidance = GuidanceConfig(scale=4.0, image_scale=2.0, renorm="global")
    batched = tiny_pipe.guided_velocities(jobs, latents, sigma, guidance)

    for index, job in enumerate(jobs):
        branches = [
            branch_velocity(tiny_pipe, job.contexts.branch(name), latents[index : index + 1], sigma)
            for name in ("cond", "text_uncond", "image_uncond")
        ]
        expected = guided_velocity(*branches, 4.0, 2.0, "global")
        torch.testing.assert_close(batched[index : index + 1], unpack_latents(expected, 2, 2), atol=1e-5, rtol=0)


def test_stacked_cache_is_left_padded_with_its_mask():
    model_free = [LoomCache(next_position=n) for n in (3, 0, 5)]
    for cache, length in zip(model_free, (3, 0, 5)):
        if length:
            cache.update(torch.ones(1, 2, length, 4) * length, torch.ones(1, 2, length, 4), 0)
            cache.token_ids = torch.arange(length)[None]
    stacked, mask = LoomCache.stack(model_free, pad_token_id=-7)
    assert mask.tolist() == [[0, 0, 1, 1, 1], [0] * 5, [1] * 5]
    assert stacked.next_position.tolist() == [3, 0, 5]
    assert stacked.layers[0].keys[0, 0, :, 0].tolist() == [0, 0, 3, 3, 3]
    assert stacked.token_ids.tolist() == [[-7, -7, 0, 1, 2], [-7] * 5, [0, 1, 2, 3, 4]]


def test_images_per_prompt_are_flat_in_request_order(tiny_pipe):
    generators = seeds(0, 1, 2, 3)
    batch = tiny_pipe(
        [["A red square."], [RED, "Make it blue."]], num_images_per_prompt=2, generator=generators, **IMAGE_ARGS
    )
    assert len(batch.images) == 4 and [len(r.images) for r in batch.requests] == [2, 2]
    second = tiny_pipe([RED, "Make it blue."], generator=seeds(3), **IMAGE_ARGS).images[0]
    torch.testing.assert_close(batch.images[3], second, atol=1e-4, rtol=0)
    assert not torch.allclose(batch.images[2], batch.images[3])


# ---------------------------------------------------------------- text decoding


def test_sampling_options_act_on_the_whole_history(tiny_pipe):
    question = [RED, "What is drawn here?"]
    greedy = tiny_pipe(question, task="text", max_new_tokens=12).segments[0].token_ids
    # top-k 1 leaves only the greedy token, whatever the temperature.
    sampled = tiny_pipe(question, task="text", max_new_tokens=12, do_sample=True, temperature=2.0, top_k=1)
    assert sampled.segments[0].token_ids == greedy
    # A strong repetition penalty sees earlier generated tokens: no token repeats.
    penalised = tiny_pipe(question, task="text", max_new_tokens=12, repetition_penalty=1e6).segments[0].token_ids
    assert len(set(penalised)) == len(penalised) and len(set(greedy)) < len(greedy)
    # An end token is not allowed before min_new_tokens.
    stopped = tiny_pipe(question, task="text", max_new_tokens=12, eos_token_id=greedy[2]).segments[0].token_ids
    assert stopped == greedy[:2]
    longer = tiny_pipe(question, task="text", max_new_tokens=12, eos_token_id=greedy[2], min_new_tokens=4)
    assert len(longer.segments[0].token_ids) >= 4


def test_sampling_draws_each_row_from_its_own_generator(tiny_pipe):
    questions = [["Describe a tree."], ["Describe a house."]]
    kwargs = {"task": "text", "max_new_tokens": 10, "do_sample": True, "temperature": 3.0}
    batch = tiny_pipe(questions, generator=seeds(5, 6), **kwargs)
    alone = tiny_pipe(questions[1], generator=seeds(6), **kwargs)
    assert batch.requests[1].segments[0].token_ids == alone.segments[0].token_ids
    other = tiny_pipe(questions[1], generator=seeds(7), **kwargs)
    assert other.segments[0].token_ids != alone.segments[0].token_ids


def test_interrupt_stops_text_decoding_and_tutorials(framed_pipe, monkeypatch):
    forward, calls = framed_pipe.model.forward, []

    def interrupting_forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            framed_pipe._interrupt = True
        return forward(*args, **kwargs)

    monkeypatch.setattr(framed_pipe.model, "forward", interrupting_forward)
    answer = framed_pipe(["Describe a tree."], task="text", max_new_tokens=20)
    assert 1 <= len(answer.segments[0].token_ids) <= 3
    monkeypatch.setattr(framed_pipe.model, "forward", forward)

    def stop_after_first_frame(pipe, index, segment):
        if index == 2:
            pipe._interrupt = True

    tutorial = framed_pipe(
        ["Draw a red house"],
        task="interleaved",
        plan=["Walls", "Roof", "Door"],
        num_inference_steps=1,
        height=32,
        width=32,
        callback_on_segment=stop_after_first_frame,
    )
    assert len(tutorial.images) == 1


def test_generate_refuses_image_positions_without_pixels(tiny_pipe):
    inputs = tiny_pipe.processor(inputs=[RED, "What is drawn here?"])
    inputs.pop("pixel_values")
    with pytest.raises(ValueError, match="`pixel_values`"):
        tiny_pipe.model.generate(**inputs, max_new_tokens=2)


# ---------------------------------------------------------------- step caching


def test_step_cache_changes_steps_and_disabling_restores_the_uncached_output(tiny_pipe):
    kwargs = {"num_inference_steps": 8, "output_type": "latent", "height": 32, "width": 32}
    uncached = tiny_pipe(["A red square."], latents=torch.ones(1, 16, 4, 4), **kwargs).images[0]
    tiny_pipe.model.enable_cache(
        TaylorSeerCacheConfig(cache_interval=3, disable_cache_before_step=2, taylor_factors_dtype=torch.float32)
    )
    assert tiny_pipe.model.is_cache_enabled
    cached = tiny_pipe(["A red square."], latents=torch.ones(1, 16, 4, 4), **kwargs).images[0]
    again = tiny_pipe(["A red square."], latents=torch.ones(1, 16, 4, 4), **kwargs).images[0]
    tiny_pipe.model.disable_cache()
    restored = tiny_pipe(["A red square."], latents=torch.ones(1, 16, 4, 4), **kwargs).images[0]
    assert not torch.allclose(cached, uncached)
    assert torch.equal(cached, again)  # each image starts from a fresh cache state
    assert torch.equal(restored, uncached)
    assert not any(
        hasattr(module, "_diffusers_hook") and module._diffusers_hook.hooks for module in tiny_pipe.model.modules()
    )


def test_a_step_cache_under_a_stochastic_scheduler_is_warned_about(tiny_pipe, caplog):
    kwargs = {"num_inference_steps": 2, "output_type": "latent", "height": 32, "width": 32}
    tiny_pipe.model.enable_cache(TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1))
    with caplog.at_level(logging.WARNING, logger="loom_hf.pipelines.pipeline_loom"):
        tiny_pipe(["A red square."], **kwargs)
        assert "stochastic_sampling" not in caplog.text  # the ODE scheduler: caching fits
        tiny_pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            tiny_pipe.scheduler.config, stochastic_sampling=True
        )
        tiny_pipe(["A red square."], generator=seeds(0), **kwargs)
        assert "A step cache is enabled while the scheduler draws fresh noise" in caplog.text
        caplog.clear()
        tiny_pipe.model.disable_cache()
        tiny_pipe(["A red square."], generator=seeds(0), **kwargs)
    assert "step cache" not in caplog.text  # stochastic sampling alone is fine


def test_taylorseer_skips_the_decoder_layers_on_predicted_steps(tiny_pipe, monkeypatch):
    calls = []
    layer = tiny_pipe.model.model.language_model.layers[0]
    original = type(layer).forward
    monkeypatch.setattr(
        type(layer), "forward", lambda self, *a, **k: calls.append(self is layer) or original(self, *a, **k)
    )
    kwargs = {"num_inference_steps": 8, "output_type": "latent", "height": 32, "width": 32, "guidance_scale": 1.0}
    tiny_pipe.model.enable_cache(TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=2))
    tiny_pipe(["A red square."], **kwargs)
    cached_calls = calls.count(True)
    calls.clear()
    tiny_pipe.model.disable_cache()
    tiny_pipe(["A red square."], **kwargs)
    # Context encoding always runs every layer; 8 steps: steps 0, 1 (warm-up), then every other step compute.
    assert calls.count(True) - cached_calls == 3


def test_first_block_cache_with_zero_threshold_is_exact(tiny_pipe):
    kwargs = {"num_inference_steps": 4, "output_type": "latent", "height": 32, "width": 32}
    uncached = tiny_pipe(["A red square."], latents=torch.ones(1, 16, 4, 4), **kwargs).images[0]
    tiny_pipe.model.enable_cache(FirstBlockCacheConfig(threshold=0.0))
    exact = tiny_pipe(["A red square."], latents=torch.ones(1, 16, 4, 4), **kwargs).images[0]
    tiny_pipe.model.disable_cache()
    tiny_pipe.model.enable_cache(FirstBlockCacheConfig(threshold=10.0))
    skipping = tiny_pipe(["A red square."], latents=torch.ones(1, 16, 4, 4), **kwargs).images[0]
    tiny_pipe.model.disable_cache()
    torch.testing.assert_close(exact, uncached, atol=1e-6, rtol=0)
    assert not torch.allclose(skipping, uncached)


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        (FasterCacheConfig(), TypeError, "FirstBlockCacheConfig, TaylorSeerCacheConfig"),
        ("taylorseer", TypeError, "`config`"),
        (TaylorSeerCacheConfig(disable_cache_before_step=0), ValueError, "disable_cache_before_step"),
        (FirstBlockCacheConfig(threshold=float("nan")), ValueError, "threshold"),
        (TaylorSeerCacheConfig(taylor_factors_dtype="float32"), TypeError, "taylor_factors_dtype"),
        (TaylorSeerCacheConfig(taylor_factors_dtype=torch.int32), TypeError, "taylor_factors_dtype"),
    ],
)
def test_unsupported_cache_configs_are_refused(tiny_pipe, config, error, message):
    with pytest.raises(error, match=message):
        tiny_pipe.model.enable_cache(config)
    assert not tiny_pipe.model.is_cache_enabled


# ---------------------------------------------------------------- threads


def test_two_threads_sharing_a_pipeline_get_the_sequential_results(tiny_pipe):
    prompts = [["A red square."], [RED, "Make it blue."]]
    kwargs = {"num_inference_steps": 4, "output_type": "latent", "height": 32, "width": 32}
    sequential = [tiny_pipe(p, generator=seeds(i), **kwargs).images[0] for i, p in enumerate(prompts)]
    results = [None, None]

    def work(index):
        for _ in range(3):
            results[index] = tiny_pipe(prompts[index], generator=seeds(index), **kwargs).images[0]

    threads = [threading.Thread(target=work, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for mine, expected in zip(results, sequential):
        assert torch.equal(mine, expected)


# ---------------------------------------------------------------- bad input

BAD_BATCHES = [
    ({"inputs": [["A red square."], "A blue circle."]}, TypeError, r"`inputs\[1\]`"),
    ({"inputs": ["A red square.", ["A blue circle."]]}, TypeError, r"`inputs\[1\]`"),
    ({"inputs": [["A red square."], []]}, ValueError, r"`inputs\[1\]` is an empty request"),
    ({"inputs": [["A red square."], [3]]}, TypeError, r"`inputs\[1\]\[0\]`"),
    ({"inputs": ["   "]}, ValueError, "blank"),
    ({"generator": seeds(0)}, ValueError, "`generator` is a list of 1"),
    ({"generator": [torch.Generator(), 3]}, TypeError, r"`generator\[1\]`"),
    ({"generator": 5}, TypeError, "`generator`"),
    ({"num_images_per_prompt": 0}, ValueError, "`num_images_per_prompt`"),
    ({"num_images_per_prompt": 2, "task": "text"}, ValueError, "`num_images_per_prompt`"),
    ({"entity_masks": [{"<upper>": np.ones((64, 64))}], "entity_guidance_scale": 5.0}, ValueError, "one dict"),
    ({"top_p": 0.0}, ValueError, "`top_p`"),
    ({"top_p": 1.5}, ValueError, "`top_p`"),
    ({"top_k": -1}, ValueError, "`top_k`"),
    ({"repetition_penalty": 0.0}, ValueError, "`repetition_penalty`"),
    ({"repetition_penalty": -1.0}, ValueError, "`repetition_penalty`"),
    ({"min_new_tokens": 9, "max_new_tokens": 4}, ValueError, "`min_new_tokens`"),
    ({"eos_token_id": []}, ValueError, "`eos_token_id` is an empty list"),
    ({"entity_masks": [None, None], "entity_guidance_scale": 5.0}, ValueError, "no mask for any request"),
    ({"task": "text", "max_new_tokens": 4090}, ValueError, "Lower `max_new_tokens`"),
    ({"guidance_scale": float("nan")}, ValueError, "`guidance_scale`"),
    ({"image_guidance_scale": float("inf")}, ValueError, "`image_guidance_scale`"),
    ({"guidance_scale": "4"}, TypeError, "`guidance_scale`"),
    ({"guidance_interval": None}, ValueError, "`guidance_interval`"),
    ({"guidance_interval": (0.0, float("nan"))}, ValueError, "guidance_interval"),
    ({"timestep_shift": float("inf")}, ValueError, "`timestep_shift`"),
    ({"timestep_shift": 1e300}, ValueError, "`timestep_shift` = 1e\\+300 collapses the 2-step schedule"),
    ({"latents": torch.full((2, 16, 8, 8), float("nan"))}, ValueError, "`latents`"),
    ({"latents": torch.full((2, 16, 8, 8), float("nan")), "task": "text"}, ValueError, "`latents`"),
    ({"latents": torch.randn(2, 16, 7, 7)}, ValueError, "`latents` of shape .* give a 56x56 image"),
    ({"latents": torch.randn(2, 16, 16, 16)}, ValueError, "at most 64 pixels"),
    ({"latents": torch.zeros(2, 16, 8, 8, dtype=torch.long)}, ValueError, "`latents` must be a real floating"),
    ({"latents": torch.zeros(2, 16, 8, 8, dtype=torch.complex64)}, ValueError, "`latents` must be a real floating"),
    ({"latents": torch.zeros(2, 16, 8, 8, device="meta")}, ValueError, "`latents` must be a real floating"),
    ({"temperature": float("nan")}, ValueError, "`temperature`"),
    ({"temperature": -1.0}, ValueError, "`temperature`"),
    ({"temperature": 0.0, "do_sample": True}, ValueError, "`temperature`"),
    ({"do_sample": "no"}, TypeError, "`do_sample` must be True or False"),
    ({"think": "yes"}, TypeError, "`think` must be True or False"),
    ({"use_step_text": "no"}, TypeError, "`use_step_text`"),
    ({"return_dict": "no"}, TypeError, "`return_dict`"),
    ({"callback_on_step_end": 5}, TypeError, "`callback_on_step_end` must be a callable"),
    ({"callback_on_segment": 5}, TypeError, "`callback_on_segment` must be a callable"),
    ({"callback_on_step_end_tensor_inputs": None}, TypeError, "`callback_on_step_end_tensor_inputs`"),
    ({"callback_on_step_end_tensor_inputs": "latents"}, TypeError, "`callback_on_step_end_tensor_inputs`"),
    (
        {"entity_masks": [{"<upper>": np.full((64, 64), np.nan)}, None], "entity_guidance_scale": 5.0},
        ValueError,
        r"`entity_masks\[0\]\['<upper>'\]` must hold finite values",
    ),
    (
        {"entity_masks": [None, {"<upper>": np.ones((32, 32))}], "entity_guidance_scale": 5.0},
        ValueError,
        r"`entity_masks\[1\]\['<upper>'\]` must be 64x64",
    ),
]


@pytest.mark.parametrize(("overrides", "error", "message"), BAD_BATCHES)
def test_bad_batch_input_is_rejected_before_any_work(tiny_pipe, monkeypatch, overrides, error, message):
    calls = []
    monkeypatch.setattr(tiny_pipe.model, "forward", lambda *a, **k: calls.append(1))
    arguments = {"inputs": [["Replace the <upper>"], ["A red square."]], "num_inference_steps": 2, **overrides}
    with pytest.raises(error, match=message):
        tiny_pipe(**arguments)
    assert calls == []


def test_batch_saves_one_folder_per_request_with_the_users_umask(framed_pipe, tmp_path):
    import os

    batch = framed_pipe(
        [["Draw a red house"], ["Draw a cat"]],
        task="interleaved",
        plan=["Walls", "Roof"],
        num_inference_steps=1,
        height=32,
        width=32,
    )
    umask = os.umask(0o022)
    try:
        batch.save(tmp_path / "out")
    finally:
        os.umask(umask)
    for request in ("request_01", "request_02"):
        folder = tmp_path / "out" / request
        assert sorted(p.name for p in folder.iterdir()) == [
            "frame_01.png",
            "frame_02.png",
            "tutorial.html",
            "tutorial.md",
        ]
        assert all((p.stat().st_mode & 0o777) == 0o644 for p in folder.iterdir())
    latent = framed_pipe(["A red square."], num_inference_steps=1, height=32, width=32, output_type="latent")
    with pytest.raises(ValueError, match="Latent outputs"):
        latent.save(tmp_path / "latent")
    assert not (tmp_path / "latent").exists()


def test_a_smaller_batch_saved_over_a_larger_one_removes_the_stale_request_folders(framed_pipe, tmp_path):
    def tutorials(count):
        requests = [[f"Draw a house number {index}"] for index in range(count)]
        options = {"plan": ["Walls"], "num_inference_steps": 1, "height": 32, "width": 32}
        return framed_pipe(requests, task="interleaved", **options)

    out = tmp_path / "out"
    tutorials(4).save(out)
    (out / "request_04" / "notes.txt").write_text("mine")
    (out / "request_05").mkdir()  # a folder with no tutorial in it, and a name the saver never writes
    (out / "request_05" / "frame_01.png").write_bytes(b"not ours")
    (out / "request_7").mkdir()
    tutorials(2).save(out)
    assert sorted(p.name for p in out.iterdir()) == [
        "request_01",
        "request_02",
        "request_04",
        "request_05",
        "request_7",
    ]
    assert [p.name for p in (out / "request_04").iterdir()] == ["notes.txt"]
    assert (out / "request_05" / "frame_01.png").read_bytes() == b"not ours"
    assert sorted(p.name for p in (out / "request_02").iterdir()) == ["frame_01.png", "tutorial.html", "tutorial.md"]


@pytest.mark.parametrize(
    ("kwargs", "prefills"),
    [
        ({"guidance_scale": 4.0, "image_guidance_scale": 2.0}, 2),  # the text turn in cond and image-free contexts
        ({"guidance_scale": 4.0, "image_guidance_scale": 1.0}, 1),  # image guidance off: no image-free context
        ({"guidance_scale": 1.0, "image_guidance_scale": 2.0}, 1),  # image guidance needs text guidance on
        ({"task": "text", "max_new_tokens": 1}, 1),  # an answer reads the conditional context only
    ],
)
def test_contexts_nobody_reads_are_not_encoded(tiny_pipe, monkeypatch, kwargs, prefills):
    calls = []
    write_context = tiny_pipe.write_context

    def record(cache, blocks):
        if blocks.pieces:
            calls.append(1)
        return write_context(cache, blocks)

    monkeypatch.setattr(tiny_pipe, "write_context", record)
    tiny_pipe(["A red square."], num_inference_steps=1, height=32, width=32, **kwargs)
    assert len(calls) == prefills


def test_a_batch_of_tutorials_takes_one_plan_per_request(framed_pipe):
    kwargs = {"task": "interleaved", "num_inference_steps": 1, "height": 32, "width": 32, "output_type": "latent"}
    plans = [["Walls", "Roof"], ["Head", "Ears", "Tail"]]
    requests = [["Draw a red house"], ["Draw a cat"]]
    batch = framed_pipe(requests, plan=plans, generator=seeds(0, 1), **kwargs)
    assert [request.plan for request in batch.requests] == plans
    for index, (request, plan) in enumerate(zip(requests, plans)):
        alone = framed_pipe(request, plan=plan, generator=seeds(index), **kwargs)
        for mine, theirs in zip(batch.requests[index].images, alone.images):
            torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=0)
    shared = framed_pipe(requests, plan=["Outline"], **kwargs)
    assert [request.plan for request in shared.requests] == [["Outline"], ["Outline"]]
    with pytest.raises(ValueError, match="holds 1 plans for 2 requests"):
        framed_pipe(requests, plan=[["Walls"]], **kwargs)
    with pytest.raises(ValueError, match=r"`plan\[1\]` must hold"):
        framed_pipe(requests, plan=[["Walls"], []], **kwargs)


def test_a_stochastic_scheduler_draws_each_images_step_noise_from_its_own_generator(tiny_pipe, monkeypatch):
    deterministic = tiny_pipe(["A red square."], generator=seeds(0), **IMAGE_ARGS).images[0]
    stochastic = FlowMatchEulerDiscreteScheduler.from_config(tiny_pipe.scheduler.config, stochastic_sampling=True)
    monkeypatch.setattr(tiny_pipe, "scheduler", stochastic)
    requests = [["A red square."], ["A blue circle above a green line."], ["Draw a house"]]
    assert_batch_matches_serial(tiny_pipe, requests, **IMAGE_ARGS)
    first = tiny_pipe(["A red square."], generator=seeds(0), **IMAGE_ARGS).images[0]
    torch.manual_seed(123)  # the global generator plays no part
    again = tiny_pipe(["A red square."], generator=seeds(0), **IMAGE_ARGS).images[0]
    torch.testing.assert_close(again, first, atol=0, rtol=0)
    assert not torch.allclose(first, deterministic, atol=1e-3)
