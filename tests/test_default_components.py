"""Components of the default Loom model: the caption tokenizer trained on the procedural dataset and the autoencoder
training script (run end to end, scaled down)."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler

from loom_hf.data import build_dataset
from loom_hf.data.tokenizer import CONTROL_TOKENS, caption_texts, train_caption_tokenizer
from loom_hf.modeling import LoomImageProcessor, LoomProcessor
from loom_hf.modeling.processing_loom import ENTITY_TOKENS
from loom_hf.planning import format_plan, plan_instruction
from loom_hf.tiny import tiny_pipeline

TRAIN_VAE = Path(__file__).parents[1] / "examples" / "default_model" / "train_vae.py"


@pytest.fixture(scope="module")
def dataset() -> datasets.DatasetDict:
    return build_dataset(8, seed=0)


@pytest.fixture(scope="module")
def tokenizer(dataset):
    return train_caption_tokenizer(dataset, vocab_size=600)


@pytest.fixture(scope="module")
def tutorial(dataset) -> dict:
    rows = dataset["train"].select_columns(["task", "instruction", "step_texts"])
    return next(row for row in rows if row["task"] == "tutorial")


def load_train_vae_module():
    spec = importlib.util.spec_from_file_location("train_vae", TRAIN_VAE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_special_and_entity_tokens_are_single_tokens_with_fixed_ids(tokenizer):
    specials = [*CONTROL_TOKENS, *ENTITY_TOKENS]
    assert tokenizer.convert_tokens_to_ids(specials) == list(range(len(specials)))
    for token in specials:
        ids = tokenizer.encode(f"Put the{token}of image 1 here", add_special_tokens=False)
        assert ids.count(tokenizer.convert_tokens_to_ids(token)) == 1
    assert (tokenizer.pad_token, tokenizer.eos_token) == ("<|endoftext|>", "<|im_end|>")


def test_processor_accepts_the_tokenizer(tokenizer):
    processor = LoomProcessor(LoomImageProcessor(), tokenizer)
    block = processor.text_block("Draw a red house")
    assert block[0] == processor.bos_token_id and block[-1] == processor.eos_token_id
    assert processor.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")


def test_round_trips_training_texts_and_unseen_text(dataset, tokenizer):
    unseen = ["Dessine un château 🏰 en 3 étapes", "Place the <product> of image 2 into the <scene>\tof image 1  "]
    for text in [*caption_texts(dataset), *unseen]:
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_texts_cover_every_turn_of_a_tutorial(dataset, tutorial):
    texts = set(caption_texts(dataset))
    steps = tutorial["step_texts"]
    assert {format_plan(steps), plan_instruction(tutorial["instruction"], len(steps)), f"Step 1: {steps[0]}"} <= texts


def test_texts_cover_the_turns_of_a_text_only_plan(dataset):
    rows = dataset["train"].select_columns(["task", "instruction", "step_texts"])
    plan = next(row for row in rows if row["task"] == "plan")
    texts = set(caption_texts(dataset))
    assert {format_plan(plan["step_texts"]), plan_instruction(plan["instruction"], len(plan["step_texts"]))} <= texts


def test_training_is_deterministic(dataset, tokenizer):
    again = train_caption_tokenizer(dataset, vocab_size=600)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_plans_and_instructions_encode_compactly(tokenizer, tutorial):
    plan = format_plan(tutorial["step_texts"])
    instruction = plan_instruction(tutorial["instruction"], len(tutorial["step_texts"]))
    for text in (plan, instruction):
        assert len(tokenizer.encode(text, add_special_tokens=False)) * 3 < len(text.encode("utf-8"))


def test_bad_tokenizer_arguments_are_named(dataset):
    with pytest.raises(ValueError, match="vocab_size"):
        train_caption_tokenizer(dataset, vocab_size=100)
    with pytest.raises(TypeError, match="dataset_or_datasets"):
        train_caption_tokenizer("runs/data")
    with pytest.raises(ValueError, match="dataset_or_datasets"):
        train_caption_tokenizer(dataset["train"].remove_columns("step_texts"))


def test_train_vae_rejects_channels_its_norm_cannot_split(capsys):
    train_vae = load_train_vae_module()
    with pytest.raises(SystemExit):
        train_vae.parse_args(["--dataset", "d", "--output-dir", "o", "--block-out-channels", "8", "8", "8", "12"])
    assert "--block-out-channels" in capsys.readouterr().err


def test_train_vae_rejects_a_latent_space_without_channels(capsys):
    train_vae = load_train_vae_module()
    with pytest.raises(SystemExit):
        train_vae.parse_args(["--dataset", "d", "--output-dir", "o", "--latent-channels", "0"])
    assert "--latent-channels must be at least 1; got 0" in capsys.readouterr().err


def test_train_vae_end_to_end(dataset, tmp_path):
    dataset.save_to_disk(str(tmp_path / "data"))
    output_dir = tmp_path / "vae"
    command = [
        sys.executable,
        str(TRAIN_VAE),
        "--dataset",
        str(tmp_path / "data"),
        "--output-dir",
        str(output_dir),
        "--block-out-channels",
        "8",
        "8",
        "8",
        "8",
        "--norm-num-groups",
        "8",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--held-out-rows",
        "2",
        "--num-threads",
        "1",
        "--log-every",
        "1",
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)

    vae = AutoencoderKL.from_pretrained(output_dir).eval()
    config = vae.config
    assert (config.latent_channels, config.use_quant_conv, config.use_post_quant_conv) == (16, False, False)
    assert math.isfinite(config.scaling_factor) and config.scaling_factor > 0 and math.isfinite(config.shift_factor)
    results = json.loads((output_dir / "training_results.json").read_text())
    assert results["steps"] == 2 and math.isfinite(results["held_out_psnr"])

    train_vae = load_train_vae_module()
    _, held_out = train_vae.split_rows(train_vae.load_row_images(str(tmp_path / "data")), 2, seed=0)
    with torch.no_grad():
        latents = vae.encode(train_vae.to_model_pixels(held_out)).latent_dist.mode()
    assert latents.shape[-2:] == (held_out.shape[-2] // 8, held_out.shape[-1] // 8)
    normalised = (latents - config.shift_factor) * config.scaling_factor
    assert normalised.mean().abs() < 1e-3 and (normalised.std() - 1).abs() < 1e-3


def test_ablation_table_has_one_row_per_report_and_marks_missing_values():
    spec = importlib.util.spec_from_file_location("ablation_table", TRAIN_VAE.parent / "ablation_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = {
        "gt_plan": {"ssim": 0.5, "psnr": 20.0, "step_fidelity": 0.8, "temporal_coherence": 0.9},
        "own_plan": {"plan_exact_match": 0.85, "ssim": None},
    }
    lines = module.table({"full": report, "no_history": report}).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| full | 85% | 0.500 | 20.00 | 0.800 | 0.900 | n/a |")
    assert lines[3].startswith("| no_history |")


def test_export_refuses_stochastic_sampling_for_a_scheduler_without_it(tmp_path):
    spec = importlib.util.spec_from_file_location("export_default_model", TRAIN_VAE.parent / "export_default_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pipe = tiny_pipeline(seed=0)
    pipe.scheduler = EulerDiscreteScheduler()
    pipe.save_pretrained(tmp_path / "pipeline")
    with pytest.raises(ValueError, match="stochastic_sampling: the pipeline's EulerDiscreteScheduler has no such"):
        module.export(str(tmp_path / "pipeline"), tmp_path / "exported", stochastic_sampling=True)
    assert not (tmp_path / "exported").exists() and sorted(path.name for path in tmp_path.iterdir()) == ["pipeline"]


@pytest.mark.parametrize("steps", [0, 1.5])
def test_export_refuses_a_bad_default_step_count_before_loading_anything(tmp_path, steps):
    spec = importlib.util.spec_from_file_location("export_default_model", TRAIN_VAE.parent / "export_default_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(ValueError, match="`num_inference_steps` must be an integer >= 1"):
        module.export(str(tmp_path / "no-such-pipeline"), tmp_path / "exported", num_inference_steps=steps)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("experts", ["all", "generation"])
def test_eval_checkpoints_copies_in_the_ema_weights_the_run_kept(tmp_path, experts):
    """A checkpoint's EMA file holds the weights its run trained (only the generation side under `--train_experts
    generation`); those, and no others, replace the model's."""
    from diffusers.training_utils import EMAModel

    from loom_hf.trainers.ema import EMA_FILE, save_ema_state, trainable_names
    from loom_hf.trainers.trainer import select_trainable_parameters

    spec = importlib.util.spec_from_file_location("eval_checkpoints", TRAIN_VAE.parent / "eval_checkpoints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    trained = tiny_pipeline(seed=0).model
    select_trainable_parameters(trained, experts)
    names = trainable_names(trained)
    ema = EMAModel([p for p in trained.parameters() if p.requires_grad])
    for shadow in ema.shadow_params:
        shadow.data.add_(1.0)  # shadows that differ from the live weights
    save_ema_state(ema, names, tmp_path / EMA_FILE)

    model = tiny_pipeline(seed=0).model  # freshly loaded: every parameter trainable
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    module.with_ema_weights(model, tmp_path)
    for name, parameter in model.named_parameters():
        expected = before[name] + 1.0 if name in names else before[name]
        torch.testing.assert_close(parameter.detach(), expected, msg=name)
    assert experts == "all" or len(names) < len(before)


def test_eval_checkpoints_refuses_an_ema_file_of_another_model(tmp_path):
    from diffusers.training_utils import EMAModel

    from loom_hf.trainers.ema import EMA_FILE, save_ema_state

    spec = importlib.util.spec_from_file_location("eval_checkpoints", TRAIN_VAE.parent / "eval_checkpoints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    other = torch.nn.Linear(2, 2)
    save_ema_state(EMAModel(list(other.parameters())), ["other.weight", "other.bias"], tmp_path / EMA_FILE)
    model = tiny_pipeline(seed=0).model
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    with pytest.raises(SystemExit, match="holds EMA weights of other parameters: \\['other.bias', 'other.weight'\\]"):
        module.with_ema_weights(model, tmp_path)
    (tmp_path / EMA_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="Cannot read the EMA state"):
        module.with_ema_weights(model, tmp_path)
    assert all(torch.equal(parameter, before[name]) for name, parameter in model.named_parameters())
