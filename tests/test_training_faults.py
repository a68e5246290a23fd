"""Training faults: bad numbers refused before work, the first non-finite loss stops the run (naming the step and the
loss part), non-finite weights are never saved, and checkpoints that cannot be resumed exactly are refused by name."""

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import HfArgumentParser, TrainerCallback

from loom_hf.data import build_dataset
from loom_hf.tiny import tiny_pipeline
from loom_hf.trainers import LoomTrainer, LoomTrainingArguments

REPO = Path(__file__).resolve().parents[1]
NAN, INF = float("nan"), float("inf")


def load_train_sft():
    """`examples/train_sft.py` as a module (the examples folder is not a package)."""
    spec = importlib.util.spec_from_file_location("train_sft", REPO / "examples" / "train_sft.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its size and modification time: equal snapshots mean nothing changed."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def rows():
    return build_dataset(6, seed=0)["train"]


@pytest.fixture
def pipe():
    return tiny_pipeline(seed=0, max_frames=8)


def make_trainer(pipe, rows, output_dir: Path, **overrides) -> LoomTrainer:
    """`test_trainer.make_trainer` saving and logging every step, two steps by default."""
    from .test_trainer import make_trainer as make

    settings = {"max_steps": 2, "learning_rate": 1e-3, "save_strategy": "steps", "save_steps": 1, "logging_steps": 1}
    return make(pipe, rows, output_dir, **{**settings, **overrides})


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "argument, value",
    [
        ("learning_rate", NAN),
        ("learning_rate", INF),
        ("learning_rate", -1e-4),
        ("weight_decay", -0.1),
        ("adam_beta1", 1.0),
        ("adam_beta2", NAN),
        ("adam_epsilon", -1e-8),
        ("max_grad_norm", NAN),
        ("num_train_epochs", INF),
        ("max_steps", 0),
        ("gradient_accumulation_steps", 0),
        ("logging_steps", 0),
        ("save_steps", -1),
        ("seed", -1),
        ("ce_loss_weight", NAN),
        ("text_dropout", 1.5),
        ("vit_dropout", -0.1),
        ("vae_dropout", NAN),
        ("timestep_shift", INF),
        ("timestep_shift", -1.0),
        ("max_history_frames", -1),
        ("max_tokens_per_batch", 0),
        ("vae_pixels_per_call", 0),
        ("ema_decay", NAN),
        ("ema_decay", 0.0),
    ],
)
def test_numeric_training_arguments_are_checked_before_work(argument, value, tmp_path):
    output = tmp_path / "out"
    with pytest.raises(ValueError, match=f"`{argument}` must"):
        LoomTrainingArguments(output_dir=str(output), use_cpu=True, report_to=[], **{argument: value})
    assert not output.exists()


def test_on_bad_sample_choice_is_checked(tmp_path):
    with pytest.raises(ValueError, match="`on_bad_sample` must be one of"):
        LoomTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], on_bad_sample="ignore")


@pytest.mark.parametrize(
    "argv, name",
    [
        (["--lora_rank", "-1"], "--lora_rank"),
        (["--lora_alpha", "0"], "--lora_alpha"),
        (["--lora_targets", "vision"], "--lora_targets"),
        (["--max_frames", "-2"], "--max_frames"),
        (["--dataset_format", "csv"], "--dataset_format"),
        (["--learning_rate", "nan"], "`learning_rate`"),
        (["--timestep_shift", "inf"], "`timestep_shift`"),
    ],
)
def test_train_sft_refuses_bad_options_by_name(argv, name, tmp_path):
    module = load_train_sft()
    parser = HfArgumentParser((module.ModelArguments, module.DataArguments, LoomTrainingArguments))
    base = ["--tiny", "--dataset", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"), "--use_cpu"]
    with pytest.raises(ValueError, match=name):
        parser.parse_args_into_dataclasses(args=[*base, *argv])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "output, option",
    [("model", "--model_name_or_path"), ("run", "--model_name_or_path"), ("data/out", "--dataset")],
    ids=["same-as-model", "contains-model", "inside-dataset"],
)
def test_train_sft_never_overwrites_its_inputs(rows, tmp_path, monkeypatch, output, option):
    """An --output_dir that is, contains or lies inside an input is refused by name before loading; the input is
    unchanged."""
    model, data = tmp_path / "run" / "pipeline", tmp_path / "data"
    tiny_pipeline(seed=0, max_frames=8).save_pretrained(model)
    rows.save_to_disk(str(data))
    output = {"model": model, "run": model.parent, "data/out": data / "out"}[output]
    before = snapshot(tmp_path)
    argv = ["--model_name_or_path", str(model), "--dataset", str(data), "--output_dir", str(output)]
    monkeypatch.setattr("sys.argv", ["train_sft.py", *argv, "--use_cpu", "--max_steps", "1", "--report_to", "none"])
    with pytest.raises(ValueError, match=f"--output_dir '.*' overlaps the input {option} "):
        load_train_sft().main()
    assert snapshot(tmp_path) == before


def test_train_sft_resumes_into_its_existing_output_dir(rows, tmp_path, monkeypatch):
    """The input guard leaves the usual case alone: a run resumed from a checkpoint writes into the same folder."""
    rows.save_to_disk(str(tmp_path / "data"))
    base = ["train_sft.py", "--tiny", "--max_frames", "8", "--dataset", str(tmp_path / "data"), "--use_cpu"]
    base += ["--output_dir", str(tmp_path / "out"), "--save_steps", "1", "--report_to", "none"]
    monkeypatch.setattr("sys.argv", [*base, "--max_steps", "1"])
    load_train_sft().main()
    resume = ["--max_steps", "2", "--resume_from_checkpoint", str(tmp_path / "out" / "checkpoint-1")]
    monkeypatch.setattr("sys.argv", [*base, *resume])
    load_train_sft().main()
    assert (tmp_path / "out" / "checkpoint-2").is_dir()


# ---------------------------------------------------------------- non-finite losses and weights


class _Poison(TrainerCallback):
    """Fill one trained weight with NaN at the start of step `step` (as a diverging run would)."""

    def __init__(self, parameter: torch.nn.Parameter, step: int):
        self.parameter, self.step = parameter, step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            with torch.no_grad():
                self.parameter.fill_(NAN)


@pytest.mark.parametrize("weight, part", [("lm_head", "CE"), ("llm2vae", "MSE")])
def test_first_non_finite_loss_stops_training_naming_step_and_part(pipe, rows, tmp_path, weight, part):
    """A NaN text head poisons only CE, a NaN latent head only MSE; the run stops at step 3 and keeps its earlier,
    finite checkpoints."""
    trainer = make_trainer(pipe, rows, tmp_path, max_steps=5)
    trainer.add_callback(_Poison(getattr(pipe.model, weight).weight, step=3))
    with pytest.raises(FloatingPointError, match=rf"The {part} loss is nan at step 3"):
        trainer.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]


def test_non_finite_weights_are_never_saved(pipe, rows, tmp_path):
    """A NaN learning step (weights broken after the optimizer) is refused at the checkpoint it would write."""

    class BreakAfterStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            with torch.no_grad():
                pipe.model.llm2vae.weight.fill_(INF)

    trainer = make_trainer(pipe, rows, tmp_path, max_steps=3)
    trainer.add_callback(BreakAfterStep())
    with pytest.raises(FloatingPointError, match=r"Not saving: 1 trained weight\(s\) hold NaN or inf at step 1"):
        trainer.train()
    assert not list(tmp_path.glob("checkpoint-*"))
    with pytest.raises(FloatingPointError, match="llm2vae.weight"):
        trainer.save_model(str(tmp_path / "final"))
    assert not (tmp_path / "final").exists()


# ---------------------------------------------------------------- checkpoints


@pytest.fixture
def checkpoint(pipe, rows, tmp_path_factory) -> Path:
    """A finished two-step run with EMA; its `checkpoint-2` is what the tests below damage."""
    output = tmp_path_factory.mktemp("run")
    make_trainer(pipe, rows, output, save_steps=2, ema_decay=0.9).train()
    return output / "checkpoint-2"


def _resume(pipe, rows, checkpoint: Path, **overrides) -> LoomTrainer:
    trainer = make_trainer(pipe, rows, checkpoint.parent, max_steps=3, save_steps=3, ema_decay=0.9, **overrides)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    return trainer


@pytest.mark.parametrize("missing", ["optimizer.pt", "scheduler.pt"])
def test_checkpoint_without_optimizer_state_is_refused_unless_fresh_optimizer(pipe, rows, checkpoint, missing):
    (checkpoint / missing).unlink()
    before = snapshot(checkpoint.parent)
    with pytest.raises(FileNotFoundError, match=rf"lacks {missing}.*--fresh_optimizer"):
        _resume(pipe, rows, checkpoint)
    assert snapshot(checkpoint.parent) == before

    trainer = _resume(pipe, rows, checkpoint, fresh_optimizer=True)
    assert trainer.state.global_step == 3
    assert trainer.ema.optimization_step == 3  # the EMA resumed with its step count


def test_fresh_optimizer_does_not_load_the_saved_optimizer(pipe, rows, checkpoint):
    """With the flag, the optimizer starts empty (Adam's step count restarts) although `optimizer.pt` is there."""
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert {int(state["step"]) for state in saved["state"].values()} == {2}
    trainer = _resume(pipe, rows, checkpoint, fresh_optimizer=True)
    assert {int(state["step"]) for state in trainer.optimizer.state_dict()["state"].values()} == {1}


@pytest.mark.parametrize(
    "damaged, error, message",
    [
        ("model.safetensors", ValueError, "not a readable safetensors file"),
        ("optimizer.pt", ValueError, "truncated or not a torch.save archive"),
        ("scheduler.pt", ValueError, "truncated or not a torch.save archive"),
        ("trainer_state.json", ValueError, "not readable JSON"),
        ("ema.safetensors", ValueError, "Cannot read the EMA state"),
    ],
)
def test_truncated_checkpoint_files_are_named(pipe, rows, checkpoint, damaged, error, message):
    path = checkpoint / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = snapshot(checkpoint.parent)
    with pytest.raises(error, match=message) as raised:
        _resume(pipe, rows, checkpoint)
    assert str(path) in str(raised.value)
    assert snapshot(checkpoint.parent) == before


def test_missing_checkpoint_files_are_named(pipe, rows, checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a checkpoint folder") as raised:
        _resume(pipe, rows, tmp_path / "checkpoint-9")
    assert str(tmp_path / "checkpoint-9") in str(raised.value)
    (checkpoint / "trainer_state.json").unlink()
    with pytest.raises(FileNotFoundError, match="trainer_state.json"):
        _resume(pipe, rows, checkpoint)
    (checkpoint / "trainer_state.json").write_text('{"epoch": 1.0}')
    with pytest.raises(ValueError, match="trainer_state.json' has no `global_step`"):
        _resume(pipe, rows, checkpoint)
    (checkpoint / "model.safetensors").unlink()
    (checkpoint / "trainer_state.json").write_text('{"global_step": 2}')
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        _resume(pipe, rows, checkpoint)


def test_resume_true_without_checkpoint_names_the_output_dir(pipe, rows, tmp_path):
    trainer = make_trainer(pipe, rows, tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no checkpoint to resume from"):
        trainer.train(resume_from_checkpoint=True)
    assert not list(tmp_path.iterdir())
