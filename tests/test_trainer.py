"""Training: instances, packing collator, token budget, joint loss, expert selection, LoRA, EMA, accelerate launch."""

import inspect
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import TrainerCallback

from loom_hf import LoomImageProcessor, TokenType
from loom_hf.data import build_dataset
from loom_hf.data.synth import FAMILIES
from loom_hf.modeling.history import history_frame_indices
from loom_hf.modeling.latents import pack_latents
from loom_hf.modeling.packing import create_loom_attention_mask
from loom_hf.modeling.processing_loom import ENTITY_TOKENS
from loom_hf.tiny import tiny_pipeline
from loom_hf.trainers import (
    ImageItem,
    LoomDataCollator,
    LoomTrainer,
    LoomTrainingArguments,
    LoomTrainingDataset,
    TextItem,
    build_instance,
    instance_keys,
    select_trainable_parameters,
)
from loom_hf.trainers.collator import DrawnBatch, TokenBudgetBatchSampler
from loom_hf.trainers.hub import loom_model_card, push_pipeline_to_hub
from loom_hf.trainers.latent_cache import cache_latents, latent_cache_fingerprint
from loom_hf.trainers.lora import lora_config, merge_lora_adapter

from .test_packing import reference_mask

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rows():
    return build_dataset(24, seed=0)["train"]


@pytest.fixture
def pipe():
    pipe = tiny_pipeline(seed=0, max_frames=8)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tutorial_row(num_steps: int = 6) -> dict:
    frames = [Image.new("RGB", (64, 64), (20 * i, 40, 90)) for i in range(num_steps)]
    return {
        "task": "tutorial",
        "instruction": "Draw a red house",
        "images": [],
        "answer": "",
        "targets": [],
        "step_texts": [f"Add part {i}" for i in range(1, num_steps + 1)],
        "step_images": frames,
    }


def collate_without_dropout(pipe, instances, packing=True):
    collator = LoomDataCollator(pipe.processor, text_dropout=0, vit_dropout=0, vae_dropout=0, packing=packing)
    return collator(instances)


# ---------------------------------------------------------------- instances and collator


def test_tutorial_instance_layout_mirrors_inference():
    row = tutorial_row(6)
    instance = build_instance(row, key=5, max_history_frames=3)
    kinds = [type(item).__name__ for item in instance]
    assert kinds == ["TextItem", "TextItem", "ImageItem", "ImageItem", "ImageItem", "TextItem", "ImageItem"]
    assert instance[1].loss and not instance[0].loss  # the plan is trained, the instruction is context
    assert [item.frame for item in instance[2:5]] == history_frame_indices(5, 3)
    assert instance[-1].target and instance[-1].frame == 5
    assert instance[5].text == "Step 6: Add part 6"


def test_history_frames_follow_the_sampling_function_with_rotation():
    """Training draws the rotation offset of eq. 6; the chosen frames are eq. 4 shifted by it."""
    row = tutorial_row(12)
    seen = set()
    for seed in range(40):
        instance = build_instance(row, key=11, max_history_frames=4, rng=random.Random(seed))
        frames = [item.frame for item in instance if isinstance(item, ImageItem) and not item.target]
        offsets = {offset for offset in range(0, 11 // 5) if frames == history_frame_indices(11, 4, "sparse", offset)}
        assert offsets, frames
        seen |= offsets
    assert seen == {0, 1}  # o in [0, floor(11 / 5)) = {0, 1}


def test_packed_batch_mask_isolates_noise_and_samples(pipe):
    row = tutorial_row(3)
    instances = [build_instance(row, key=1, max_history_frames=4), build_instance(row, key=0, max_history_frames=4)]
    batch = collate_without_dropout(pipe, instances)
    config = pipe.model.config.text_config
    mask = create_loom_attention_mask(
        config,
        torch.zeros(1, batch["input_ids"].shape[1], 8),
        None,
        None,
        batch["block_ids"],
        batch["noised"],
        batch["document_ids"],
    )[0, 0]

    # Expected: per document, BAGEL's split rule over (causal text | full image block | noise target) splits.
    expected = torch.zeros_like(mask)
    for document in range(2):
        tokens = (batch["document_ids"][0] == document).nonzero().flatten()
        blocks, noised = batch["block_ids"][0, tokens], batch["noised"][0, tokens]
        splits, modes, previous = [], [], None
        for block, is_noised in zip(blocks.tolist(), noised.tolist()):
            mode = "causal" if block < 0 else ("noise" if is_noised else "full")
            if block >= 0 and block == previous:
                splits[-1] += 1
            else:
                splits.append(1)
                modes.append(mode)
            previous = block if block >= 0 else None
        start, end = tokens[0].item(), tokens[-1].item() + 1
        expected[start:end, start:end] = reference_mask(splits, modes)
    assert torch.equal(mask, expected)
    target = batch["noised"][0]
    assert target.any() and not mask[~target][:, target].any()


def test_loss_index_sets(pipe):
    row = tutorial_row(3)
    batch = collate_without_dropout(pipe, [build_instance(row, key=2, max_history_frames=4)])
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    supervised = (labels != -100).nonzero().flatten()
    plan_ids = pipe.processor.text_block("Step 1: Add part 1\nStep 2: Add part 2\nStep 3: Add part 3")
    # Cross-entropy covers the plan's tokens after its start marker, through its end marker.
    assert ids[supervised].tolist() == plan_ids[1:] and torch.equal(labels[supervised], ids[supervised])
    # The flow loss covers exactly the latent tokens of the noised target block.
    types, noised = batch["mm_token_type_ids"][0], batch["noised"][0]
    assert batch["latent_is_target"].tolist() == [False, False, True]  # two clean history frames, one target
    target_tokens = (types == TokenType.LATENT) & noised
    grids = batch["latent_grid_hw"]
    assert int(target_tokens.sum()) == int((grids[:, 0] * grids[:, 1])[batch["latent_is_target"]].sum())
    # History frames and the target carry their frame indices; text never does.
    frames = batch["frame_ids"][0]
    assert set(frames[types != TokenType.TEXT].tolist()) == {0, 1, 2} and (frames[types == TokenType.TEXT] == -1).all()


def door_row() -> dict:
    """A two-step tutorial whose second step draws an 8x12 px door on a blank canvas."""
    blank = Image.new("RGB", (64, 64), (240, 240, 240))
    door = blank.copy()
    ImageDraw.Draw(door).rectangle([20, 36, 27, 47], fill=(120, 60, 20))
    return {**tutorial_row(2), "step_images": [blank, door]}


def test_changed_tokens_are_what_a_step_draws(pipe):
    """A tutorial target's latent tokens whose pixels differ from the frame before it are marked (for
    `changed_token_loss_weight`); the first frame has no frame before it and marks none."""
    row = door_row()
    batch = collate_without_dropout(pipe, [build_instance(row, key=1), build_instance(row, key=0)])
    stride = pipe.processor.image_processor.vae_image_size[2]
    expected = torch.zeros(64 // stride, 64 // stride, dtype=torch.bool)
    expected[36 // stride : 47 // stride + 1, 20 // stride : 27 // stride + 1] = True
    assert 0 < int(expected.sum()) < expected.numel()
    assert batch["latent_changed"].tolist() == expected.flatten().tolist() + [False] * expected.numel()


def test_a_frame_of_another_size_than_the_one_before_marks_no_changed_token(pipe):
    """A tutorial may change its frame size; its frame then has no pixel to compare and trains unweighted."""
    row = {**tutorial_row(2), "step_images": [Image.new("RGB", (64, 64)), Image.new("RGB", (64, 48), (200, 0, 0))]}
    batch = collate_without_dropout(pipe, [build_instance(row, key=1)])
    grid = batch["latent_grid_hw"][batch["latent_is_target"]][0]
    assert batch["latent_changed"].tolist() == [False] * int(grid.prod())


@pytest.mark.parametrize("weight", [1.0, 4.0])
def test_changed_tokens_weigh_in_the_flow_loss_and_its_token_count(pipe, rows, tmp_path, weight):
    """With `changed_token_loss_weight` w the changed tokens of a target count w times, both in the MSE's weights and
    in the accumulation window's token count; history frames count nothing."""
    row = door_row()
    trainer = make_trainer(pipe, rows, tmp_path, max_steps=1, changed_token_loss_weight=weight)
    batch = collate_without_dropout(pipe, [build_instance(row, key=1)])
    changed = batch["latent_changed"]
    _, counts = trainer.get_batch_samples(iter([batch]), 1, torch.device("cpu"))
    assert counts.tolist() == [
        float((batch["labels"][:, 1:] != -100).sum()),
        len(changed) + (weight - 1) * changed.sum(),
    ]
    weights = trainer._latents(dict(batch)).weights
    history, target = weights.split([len(weights) - len(changed), len(changed)])
    assert (history == 0).all()
    assert target.tolist() == (1 + (weight - 1) * changed.float()).tolist()


def test_plan_row_trains_the_planner_on_text_alone(pipe):
    """A text-only plan row is one instance laid out like a tutorial's planning turn, with nothing to drop."""
    row = {**tutorial_row(2), "task": "plan", "step_images": []}
    tutorial = build_instance(tutorial_row(2), key=0, max_history_frames=4)
    (instance,) = [build_instance(row, key) for key in instance_keys("plan", 2, 0)]
    assert [(item.text, item.loss) for item in instance] == [(item.text, item.loss) for item in tutorial[:2]]
    assert not any(item.droppable for item in instance)
    collator = LoomDataCollator(pipe.processor, text_dropout=1.0, vit_dropout=1.0, vae_dropout=1.0)
    batch = collator([instance, tutorial])
    ids, labels, types = batch["input_ids"][0], batch["labels"][0], batch["mm_token_type_ids"][0]
    plan_ids = pipe.processor.text_block("Step 1: Add part 1\nStep 2: Add part 2")
    first = batch["document_ids"][0] == batch["document_ids"][0, 0]
    assert ids[first & (labels != -100)].tolist() == plan_ids[1:]
    assert (types[first] == TokenType.TEXT).all()


def test_padded_batches_hold_one_instance_per_row(pipe):
    row = tutorial_row(3)
    instances = [build_instance(row, key=k, max_history_frames=4) for k in range(3)]
    batch = collate_without_dropout(pipe, instances, packing=False)
    assert batch["input_ids"].shape[0] == 3 and "document_ids" not in batch
    lengths = batch["attention_mask"].sum(1).tolist()
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


def test_condition_dropout_rates(pipe):
    torch.manual_seed(0)
    collator = LoomDataCollator(pipe.processor, text_dropout=0.1, vit_dropout=0.3, vae_dropout=0.3)
    image = Image.new("RGB", (32, 32), "red")
    instance = [ImageItem(image), TextItem("Make it green"), ImageItem(image, target=True)]
    kept = {"text": 0, "vit": 0, "vae": 0}
    draws = 1500
    for _ in range(draws):
        batch = collator([instance])
        types = batch["mm_token_type_ids"][0]
        kept["vit"] += int((types == TokenType.VIT).any())
        kept["vae"] += int(len(batch["latent_is_target"]) == 2)
        kept["text"] += int((batch["input_ids"][0] == pipe.processor.eos_token_id).any())
    for name, rate in (("text", 0.1), ("vit", 0.3), ("vae", 0.3)):
        assert abs(1 - kept[name] / draws - rate) < 0.04, (name, kept[name])


def test_dropped_image_keeps_its_rope_slot_and_dropped_text_does_not(pipe):
    image = Image.new("RGB", (32, 32))
    instance = [ImageItem(image), TextItem("edit"), ImageItem(image, target=True)]
    full = collate_without_dropout(pipe, [instance])
    no_image = LoomDataCollator(pipe.processor, text_dropout=0, vit_dropout=1, vae_dropout=1)([instance])
    no_text = LoomDataCollator(pipe.processor, text_dropout=1, vit_dropout=0, vae_dropout=0)([instance])

    def text_start(batch):
        return batch["position_ids"][0][batch["input_ids"][0] == pipe.processor.bos_token_id][0]

    assert text_start(no_image) == text_start(full) == 2
    assert no_text["position_ids"][0, -1] == 2  # the target follows the two image blocks directly


def test_num_tokens_is_the_collated_length_of_every_task(pipe):
    """`num_tokens` is an instance's packed length with nothing dropped, and no dropout draw exceeds it, for every task
    the synthetic data writes: tutorial frames with their history, edit, t2i, style, compose and decompose with entity
    tokens, the text-only plan and understanding."""
    rows = build_dataset(len(FAMILIES), seed=0, mix=dict.fromkeys(FAMILIES, 1))["train"]
    assert set(rows["task"]) == set(FAMILIES.values())
    instances = [
        build_instance(row, key, max_history_frames=4)
        for row in rows
        for key in instance_keys(row["task"], len(row["step_texts"]), len(row["targets"]))
    ]
    history = [
        sum(isinstance(i, ImageItem) and not i.target and i.frame is not None for i in inst) for inst in instances
    ]
    assert max(history) >= 2
    texts = [item.text for instance in instances for item in instance if isinstance(item, TextItem)]
    assert any(token in text for text in texts for token in ENTITY_TOKENS)

    def lengths(batch: dict) -> list[int]:
        return batch["attention_mask"].sum(1).tolist()

    exact = LoomDataCollator(pipe.processor, text_dropout=0, vit_dropout=0, vae_dropout=0, packing=False)
    counts = [exact.num_tokens(instance) for instance in instances]
    assert lengths(exact(instances)) == counts
    packed = LoomDataCollator(pipe.processor, text_dropout=0, vit_dropout=0, vae_dropout=0)
    assert packed(instances)["input_ids"].shape == (1, sum(counts))
    for probability in (0.5, 1.0):
        dropping = LoomDataCollator(
            pipe.processor, text_dropout=probability, vit_dropout=probability, vae_dropout=probability, packing=False
        )
        assert dropping.num_tokens(instances[0]) == counts[0]  # the count never drops
        drawn = [lengths(dropping(DrawnBatch(instances, seed))) for seed in range(4)]
        assert all(length <= count for draw in drawn for length, count in zip(draw, counts))
        assert any(length < count for draw in drawn for length, count in zip(draw, counts))


def test_cached_latents_match_encoding_during_training(pipe, rows, tmp_path):
    """The `datasets.map` pre-pass stores the latents the trainer would encode, and skips the VAE."""
    subset = rows.select(range(6))
    cached = cache_latents(subset, pipe.vae, processor=pipe.processor)
    assert {"step_images_latents", "targets_latent_grids"} <= set(cached.column_names)
    trainer = make_trainer(pipe, subset, tmp_path, max_steps=1)
    collator = trainer.data_collator
    plain, fast = (LoomTrainingDataset(data, collator, max_tokens=2048, max_frames=8) for data in (subset, cached))
    torch.manual_seed(0)
    plain_batch = collator([plain[0], plain[1]])
    torch.manual_seed(0)
    cached_batch = collator([fast[0], fast[1]])
    assert all(tensor.ndim == 2 for tensor in cached_batch["vae_pixel_values"])  # tokens, not pixels
    torch.manual_seed(1)
    expected = trainer._latents(dict(plain_batch))
    torch.manual_seed(1)
    for actual, reference in zip(trainer._latents(dict(cached_batch)), expected):
        # The pre-pass encodes image by image, the trainer a batch's same-size images in one call: float rounding.
        torch.testing.assert_close(actual, reference, rtol=0, atol=1e-5)


def test_trainer_encodes_same_size_images_together_in_order(pipe, rows, tmp_path):
    """Same-size images share VAE calls up to the pixel budget; each gets the latents of encoding it alone, in order."""
    trainer = make_trainer(pipe, rows.select(range(2)), tmp_path, max_steps=1, vae_pixels_per_call=2 * 64 * 64)
    generator = torch.Generator().manual_seed(0)
    sizes = ((64, 64), (32, 48), (64, 64), (64, 64))
    pixels = [torch.rand(3, *size, generator=generator) * 2 - 1 for size in sizes]
    cached = torch.randn(6, pipe.model.config.latent_token_dim, generator=generator)
    batch = [pixels[0], cached, pixels[1], pixels[2], pixels[3]]
    calls = []
    encode = pipe.vae.encode
    pipe.vae.encode = lambda images: calls.append(tuple(images.shape)) or encode(images)
    try:
        encoded = trainer._clean_latent_tokens(batch)
    finally:
        del pipe.vae.encode
    assert calls == [(2, 3, 64, 64), (1, 3, 64, 64), (1, 3, 32, 48)]
    assert torch.equal(encoded[1], cached)
    for tokens, image in zip([encoded[0], encoded[2], encoded[3], encoded[4]], pixels):
        alone = pipe.vae.encode(image[None]).latent_dist.mode()
        alone = (alone - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
        expected = pack_latents(alone, pipe.model.config.latent_patch_size)
        torch.testing.assert_close(tokens, expected, rtol=0, atol=1e-5)


def test_latent_cache_is_named_by_content_not_by_object(pipe, rows):
    """A reloaded copy of the same autoencoder reuses the encoded cache; other weights or settings do not."""
    import copy

    def fingerprint(dataset, vae, patch_size=2):
        return latent_cache_fingerprint(dataset, vae, processor=pipe.processor, patch_size=patch_size)

    subset = rows.select(range(2))
    reference = fingerprint(subset, pipe.vae)
    assert fingerprint(subset, copy.deepcopy(pipe.vae)) == reference
    changed = copy.deepcopy(pipe.vae)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    assert fingerprint(subset, changed) != reference
    assert fingerprint(subset, pipe.vae, patch_size=1) != reference
    assert fingerprint(rows.select(range(3)), pipe.vae) != reference


def test_token_budget_and_bad_rows(pipe, rows):
    collator = LoomDataCollator(pipe.processor)
    dataset = LoomTrainingDataset(rows, collator, max_tokens=1024, max_frames=8)
    sampler = TokenBudgetBatchSampler(dataset.num_tokens, 1024, seed=0)
    batches = list(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(len(dataset)))
    assert all(sum(dataset.num_tokens[i] for i in batch) <= 1024 for batch in batches)
    sampler.set_epoch(1)
    assert list(sampler) != batches

    broken = rows.select(range(4)).map(
        lambda row, index: {**row, "task": "juggling"} if index == 2 else row, with_indices=True
    )
    with pytest.warns(UserWarning):
        skipped = LoomTrainingDataset(broken, collator, max_tokens=1024, max_frames=8, on_error="skip")
    assert all(row != 2 for row, _ in skipped.keys)
    with pytest.raises(ValueError, match="row 2"):
        LoomTrainingDataset(broken, collator, max_tokens=1024, max_frames=8, on_error="raise")
    with pytest.raises(ValueError, match="token budget"):
        LoomTrainingDataset(rows.select(range(4)), collator, max_tokens=100, max_frames=8, on_error="raise")
    with pytest.raises(ValueError, match="more than max_frames=2"):
        LoomTrainingDataset(rows.select(range(8)), collator, max_tokens=1024, max_frames=2, on_error="raise")


@pytest.mark.parametrize(
    "function, positional",
    [
        (LoomTrainingDataset.__init__, ["self", "dataset", "collator"]),
        (TokenBudgetBatchSampler.__init__, ["self", "num_tokens", "max_tokens"]),
        (cache_latents, ["dataset", "vae"]),
        (latent_cache_fingerprint, ["dataset", "vae"]),
        (loom_model_card, ["model_id"]),
        (push_pipeline_to_hub, ["pipe", "repo_id"]),
    ],
    ids=lambda value: getattr(value, "__qualname__", None),
)
def test_trainer_helpers_take_their_settings_by_keyword(function, positional):
    """Only the one or two arguments a call reads as its subject are positional; the settings are keyword-only."""
    parameters = inspect.signature(function).parameters.values()
    assert [parameter.name for parameter in parameters if parameter.kind is not parameter.KEYWORD_ONLY] == positional


# ---------------------------------------------------------------- trainer


@pytest.mark.parametrize(
    "argument, value",
    [
        ("history", "recent"),
        ("train_experts", "vision"),
        ("ce_loss_weight", -0.1),
        ("timestep_shift", 0.0),
        ("ema_decay", 1.0),
        ("vae_pixels_per_call", 0),
        ("changed_token_loss_weight", 0.0),
        ("changed_token_loss_weight", float("nan")),
    ],
)
def test_training_arguments_reject_bad_values_by_name(argument, value, tmp_path):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        LoomTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], **{argument: value})


def make_trainer(pipe, dataset, tmp_path, **overrides) -> LoomTrainer:
    collator = LoomDataCollator(pipe.processor, text_dropout=0, vit_dropout=0, vae_dropout=0)
    arguments = {
        "output_dir": str(tmp_path),
        "max_steps": 40,
        "learning_rate": 3e-3,
        "logging_steps": 5,
        "report_to": [],
        "use_cpu": True,
        "save_strategy": "no",
        "max_tokens_per_batch": 2048,
        "lr_scheduler_type": "constant",
        "seed": 0,
        **overrides,
    }
    train = LoomTrainingDataset(dataset, collator, max_tokens=arguments["max_tokens_per_batch"], max_frames=8)
    return LoomTrainer(
        model=pipe.model,
        args=LoomTrainingArguments(**arguments),
        vae=pipe.vae,
        train_dataset=train,
        data_collator=collator,
        processing_class=pipe.processor,
    )


def losses(trainer, name):
    return [entry[name] for entry in trainer.state.log_history if name in entry]


class _FixedNoise(TrainerCallback):
    """Reseeds torch before every step, so each step sees the same noise and flow times: one fixed batch."""

    def on_step_begin(self, args, state, control, **kwargs):
        torch.manual_seed(0)


@pytest.mark.parametrize("use_lora", [False, True])
def test_overfits_one_batch(pipe, rows, tmp_path, use_lora):
    """On one fixed tutorial batch, both parts of the loss fall by at least half within 40 steps."""
    single = rows.filter(lambda row: row["task"] == "tutorial").select([0])
    single = single.map(lambda row: {**row, "step_texts": row["step_texts"][:1], "step_images": row["step_images"][:1]})
    if use_lora:
        # A trained model's text head is large enough for adapters below it to move the logits; a tiny random
        # head (std 0.02) caps the logit gap, so give it a trained scale first.
        torch.nn.init.normal_(pipe.model.lm_head.weight, std=0.5)
        pipe.model.add_adapter(lora_config(pipe.model, rank=8, targets="both"))
    trainer = make_trainer(pipe, single, tmp_path, max_steps=40, learning_rate=1e-2 if use_lora else 3e-3)
    trainer.add_callback(_FixedNoise())
    trainer.train()
    ce, mse = losses(trainer, "ce_loss"), losses(trainer, "mse_loss")
    assert ce[-1] < 0.5 * ce[0] and mse[-1] < 0.5 * mse[0], (ce, mse)


def test_one_latent_pixel_per_token_trains_at_the_matching_stride(rows, tmp_path):
    """`latent_patch_size=1` (an 8 px latent token, four times BAGEL's tokens per image) trains once the processor's
    VAE stride is 8 px, and then overfits one batch as BAGEL's layout does; at the 16 px stride the collator's token
    grid and the model's disagree, and the trainer refuses before training, naming both."""
    single = rows.filter(lambda row: row["task"] == "tutorial").select([0])
    single = single.map(lambda row: {**row, "step_texts": row["step_texts"][:1], "step_images": row["step_images"][:1]})
    pipe = tiny_pipeline(seed=0, max_frames=8, latent_patch_size=1, max_latent_size=8)
    with pytest.raises(ValueError, match=r"`vae_image_size` stride \(16 px\).*= 8\)"):
        make_trainer(pipe, single, tmp_path)
    vit_image_size = pipe.processor.image_processor.vit_image_size
    pipe.processor.image_processor = LoomImageProcessor(vae_image_size=(64, 32, 8), vit_image_size=vit_image_size)
    trainer = make_trainer(pipe, single, tmp_path, max_steps=40)
    trainer.add_callback(_FixedNoise())
    trainer.train()
    mse = losses(trainer, "mse_loss")
    assert mse[-1] < 0.5 * mse[0], mse
    image = pipe(["Draw a red house"], task="image", num_inference_steps=2, height=64, width=64).images[0]
    assert image.size == (64, 64)


def test_joint_loss_weights_and_gradient_accumulation(pipe, rows, tmp_path):
    """`loss` is λ·CE + MSE, token-normalised over the whole accumulation window."""
    trainer = make_trainer(pipe, rows, tmp_path, max_steps=1, ce_loss_weight=0.25, max_tokens_per_batch=1024)
    loader = trainer.get_train_dataloader()
    iterator = iter(loader)
    batches, counts = trainer.get_batch_samples(iterator, 2, torch.device("cpu"))
    assert counts.tolist() == [
        sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches),
        sum(int((b["latent_grid_hw"].prod(1) * b["latent_is_target"]).sum()) for b in batches),
    ]
    torch.manual_seed(0)
    total = sum(trainer.compute_loss(pipe.model, dict(batch), num_items_in_batch=counts) for batch in batches)
    sums = trainer._loss_sums
    expected = 0.25 * sums["ce_sum"] / counts[0] + sums["mse_sum"] / counts[1]
    torch.testing.assert_close(total.double(), expected, rtol=1e-5, atol=1e-6)


def test_expert_selection(pipe):
    model = pipe.model
    select_trainable_parameters(model, "generation")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(
        any(k in n for k in ("_moe_gen", "vae2llm", "llm2vae", "time_embedder", "frame_embed")) for n in trainable
    )
    select_trainable_parameters(model, "freeze_understanding")
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert (
        "model.vision_model.post_layernorm.weight" in frozen
        and "model.language_model.layers.0.mlp.up_proj.weight" in frozen
    )
    assert "model.language_model.layers.0.mlp_moe_gen.up_proj.weight" not in frozen
    assert "lm_head.weight" not in frozen
    select_trainable_parameters(model, "all")
    assert all(p.requires_grad for p in model.parameters())


class _RecordTrainable(TrainerCallback):
    """A copy of the trainable weights after every optimizer step."""

    def __init__(self, model):
        self.model, self.history = model, []

    def on_step_end(self, args, state, control, **kwargs):
        self.history.append([p.detach().clone() for p in self.model.parameters() if p.requires_grad])


def test_ema_follows_the_decay_formula_and_is_saved_whole(pipe, rows, tmp_path):
    """After n optimizer steps the EMA is e_n = d_n·e_(n-1) + (1 - d_n)·p_n with diffusers' warm-up decay
    d_n = min(decay, (1 + s) / (10 + s)), s = n - 1 (d_1 = 0: e_1 = p_1); checkpoints keep it with its step count."""
    decay = 0.2  # below the warm-up value from step 3 on, so both branches of the min take part
    trainer = make_trainer(pipe, rows, tmp_path, max_steps=4, ema_decay=decay, save_strategy="steps", save_steps=4)
    recorder = _RecordTrainable(pipe.model)
    trainer.add_callback(recorder)
    trainer.train()

    expected = None
    for n, live in enumerate(recorder.history, start=1):
        step = n - 1
        d = 0.0 if step == 0 else min(decay, (1 + step) / (10 + step))
        expected = live if expected is None else [d * e + (1 - d) * p for e, p in zip(expected, live)]
    assert len(recorder.history) == 4 and trainer.ema.optimization_step == 4
    for shadow, value in zip(trainer.ema.shadow_params, expected):
        torch.testing.assert_close(shadow, value, rtol=0, atol=1e-6)
    assert any(
        not torch.allclose(shadow, live) for shadow, live in zip(trainer.ema.shadow_params, recorder.history[-1])
    )

    from safetensors import safe_open

    with safe_open(str(tmp_path / "checkpoint-4" / "ema.safetensors"), framework="pt") as saved:
        assert json.loads(saved.metadata()["ema_state"])["optimization_step"] == 4
        names = [name for name, p in pipe.model.named_parameters() if p.requires_grad]
        for name, shadow in zip(names, trainer.ema.shadow_params):
            assert torch.equal(saved.get_tensor(name), shadow)

    from loom_hf import LoomForInterleavedGeneration

    trainer.save_ema_model(str(tmp_path / "ema"))
    averaged = LoomForInterleavedGeneration.from_pretrained(tmp_path / "ema").state_dict()
    for name, shadow in zip(names, trainer.ema.shadow_params):
        assert torch.equal(averaged[name], shadow)


def test_lora_adapter_saves_reloads_merges_and_runs_in_the_pipeline(pipe, tmp_path):
    model = pipe.model
    model.add_adapter(lora_config(model, rank=4))
    with torch.no_grad():
        for parameter in (p for p in model.parameters() if p.requires_grad):
            parameter.add_(torch.randn_like(parameter) * 0.05)
    noise = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    adapted = pipe(["Draw a red house"], num_inference_steps=2, latents=noise, output_type="latent").images[0]
    model.save_pretrained(tmp_path / "adapter")
    assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}

    fresh = tiny_pipeline(seed=0, max_frames=8)
    fresh.set_progress_bar_config(disable=True)
    fresh.load_lora_weights(tmp_path / "adapter")
    reloaded = fresh(["Draw a red house"], num_inference_steps=2, latents=noise, output_type="latent").images[0]
    torch.testing.assert_close(reloaded, adapted)

    merged_pipe = tiny_pipeline(seed=0, max_frames=8)
    merged_pipe.set_progress_bar_config(disable=True)
    merged_pipe.model = merge_lora_adapter(merged_pipe.model, tmp_path / "adapter")
    merged = merged_pipe(["Draw a red house"], num_inference_steps=2, latents=noise, output_type="latent").images[0]
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-4)


def test_fsdp2_step_on_two_processes_matches_one_unsharded_step(tmp_path):
    """The layers `examples/accelerate/fsdp.yaml` wraps shard under FSDP2 (gloo, two CPU processes) and a training
    step there gives the unsharded step's loss and gradients."""
    result = tmp_path / "fsdp.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run = subprocess.run(
        [*command, str(REPO / "tests" / "fsdp_worker.py"), str(result)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(result.read_text())
    assert report["wrapped_layers"] == ["LoomDecoderLayer"] * 2 + ["SiglipEncoderLayer"] * 2
    assert report["shard_units"] == len(report["wrapped_layers"]) + 1 and report["sharded_parameters"]
    assert min(report["loss_tokens"]) > 0  # both the text and the flow loss take part
    assert report["loss"][0] == pytest.approx(report["loss"][1], rel=1e-6)
    assert report["gradients"] > 100 and not report["missing_gradients"]
    assert report["max_gradient_difference"] <= 1e-5 * report["max_gradient"]


def test_accelerate_launch_two_processes_and_resume(rows, tmp_path):
    """`accelerate launch` with two CPU processes: both losses logged, checkpoints written; a second launch resumed
    from checkpoint 2 runs only steps 3-4 and logs exactly the uninterrupted run's losses."""
    data = tmp_path / "data"
    rows.save_to_disk(str(data))
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "examples" / "accelerate" / "cpu_2proc.yaml"),
        str(REPO / "examples" / "train_sft.py"),
        "--tiny",
        "--max_frames",
        "8",
        "--dataset",
        str(data),
        "--use_cpu",
        "--logging_steps",
        "1",
        "--save_steps",
        "2",
        "--max_tokens_per_batch",
        "1024",
        "--report_to",
        "none",
        "--seed",
        "0",
        "--max_steps",
        "4",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    output, resumed_output = tmp_path / "run", tmp_path / "resumed"
    first = subprocess.run([*command, "--output_dir", str(output)], capture_output=True, text=True, env=environment)
    assert first.returncode == 0, first.stderr[-3000:]
    state = json.loads((output / "checkpoint-4" / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in logged] == [1, 2, 3, 4] and state["epoch"] > 0
    assert all("ce_loss" in entry and "mse_loss" in entry for entry in logged)
    assert (output / "pipeline" / "model_index.json").is_file()

    resumed = subprocess.run(
        [*command, "--output_dir", str(resumed_output), "--resume_from_checkpoint", str(output / "checkpoint-2")],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (resumed_output / "checkpoint-2").exists()  # steps 1-2 were not run again
    state = json.loads((resumed_output / "checkpoint-4" / "trainer_state.json").read_text())
    assert [entry for entry in state["log_history"] if "loss" in entry] == logged


RESUME_WORKER = [sys.executable, str(REPO / "tests" / "resume_worker.py")]


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    """The resume worker's run from start to end, in the main process: the reference of the kill -9 tests."""
    output = tmp_path_factory.mktemp("reference")
    reference = subprocess.run(
        [*RESUME_WORKER, str(output)], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    return output


@pytest.mark.parametrize("num_workers", [0, 2])
def test_kill_9_mid_run_then_resume_reproduces_the_uninterrupted_run(uninterrupted_run, tmp_path, num_workers):
    """A run killed with SIGKILL after step 5 and resumed from its last checkpoint (step 4) runs only steps 5-7 and
    logs the uninterrupted run's per-step losses exactly, ending with the same weights and EMA, bit for bit. With
    `num_workers` the killed and resumed runs build their batches in dataloader worker processes and still match the
    uninterrupted run built in the main process (dropout and history draws do not depend on the worker)."""
    worker = [*RESUME_WORKER, "--num-workers", str(num_workers)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}

    run = tmp_path / "run"
    killed = subprocess.Popen(
        [*worker, str(run), "--pause-after", "5"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment
    )
    deadline = time.monotonic() + 600
    while not (run / "paused").is_file():
        assert killed.poll() is None, killed.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the run never reached step 5"
        time.sleep(0.1)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    killed.stderr.close()
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    resumed = subprocess.run(
        [*worker, str(run), "--resume", str(run / "checkpoint-4")], capture_output=True, text=True, env=environment
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = json.loads((uninterrupted_run / "result.json").read_text())
    actual = json.loads((run / "result.json").read_text())
    assert actual["executed_steps"] == [5, 6, 7] and expected["executed_steps"] == list(range(1, 8))
    fields = ("step", "loss", "ce_loss", "mse_loss", "grad_norm", "learning_rate")
    assert [[entry[f] for f in fields] for entry in actual["log"]] == [
        [entry[f] for f in fields] for entry in expected["log"]
    ]
    assert actual["ema_optimization_step"] == expected["ema_optimization_step"] == 7
    from safetensors.torch import load_file

    final, reference_final = (
        load_file(run / "final.safetensors"),
        load_file(uninterrupted_run / "final.safetensors"),
    )
    assert final.keys() == reference_final.keys() and any(key.startswith("ema.") for key in final)
    assert all(torch.equal(final[key], reference_final[key]) for key in final)


def test_instances_without_step_text():
    row = tutorial_row(3)
    with_text = build_instance(row, key=2, max_history_frames=4)
    without = build_instance(row, key=2, max_history_frames=4, use_step_text=False)
    assert len(without) == len(with_text) - 1
    assert all(not (isinstance(item, TextItem) and item.text.startswith("Step 3:")) for item in without)
