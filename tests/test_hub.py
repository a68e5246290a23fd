"""Pushing trained models and pipelines: the exact folder that would be uploaded, checked offline."""

import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from transformers import AutoModel

from loom_hf import LoomInterleavedPipeline
from loom_hf.data import build_dataset
from loom_hf.tiny import tiny_pipeline
from loom_hf.trainers import LoomDataCollator, LoomTrainer, LoomTrainingArguments, LoomTrainingDataset
from loom_hf.trainers.hub import loom_model_card, loss_summary, push_pipeline_to_hub


class _Repository:
    """Captures what `HfApi` would create and upload, copying the uploaded folder before it disappears."""

    def __init__(self, destination: Path):
        self.destination, self.created, self.uploaded = destination, [], None

    def create_repo(self, repo_id, **kwargs):
        self.created.append((repo_id, kwargs.get("private")))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, **kwargs):
        shutil.copytree(folder_path, self.destination)
        self.uploaded = (
            repo_id,
            sorted(str(p.relative_to(self.destination)) for p in self.destination.rglob("*")),
            kwargs.get("ignore_patterns"),
        )
        return "commit"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    repository = _Repository(tmp_path / "uploaded")
    monkeypatch.setattr(HfApi, "create_repo", repository.create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", repository.upload_folder)
    return repository


def test_trainer_push_uploads_model_processor_and_card(hub, tmp_path):
    pipe = tiny_pipeline(seed=0, max_frames=8)
    rows = build_dataset(8, seed=0)["train"]
    collator = LoomDataCollator(pipe.processor)
    arguments = LoomTrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="steps",
        save_steps=1,
        max_tokens_per_batch=1024,
        hub_model_id="someone/loom-tiny",
        hub_private_repo=True,
    )
    trainer = LoomTrainer(
        model=pipe.model,
        args=arguments,
        vae=pipe.vae,
        data_collator=collator,
        train_dataset=LoomTrainingDataset(rows, collator, max_tokens=1024, max_frames=8),
        processing_class=pipe.processor,
    )
    trainer.train()
    trainer.push_to_hub(finetuned_from="ByteDance-Seed/BAGEL-7B-MoT", dataset="loom-procedural")

    assert hub.created == [("someone/loom-tiny", True)]
    repo_id, files, ignored = hub.uploaded
    assert repo_id == "someone/loom-tiny"
    assert {"config.json", "model.safetensors", "README.md", "processor_config.json", "tokenizer.json"} <= set(files)
    assert "checkpoint-*" in " ".join(ignored)  # checkpoints stay local
    card = ModelCard.load(hub.destination / "README.md")
    assert card.data.license == "apache-2.0"
    assert card.data.base_model == "ByteDance-Seed/BAGEL-7B-MoT" and card.data.datasets == ["loom-procedural"]
    assert "ce_loss_weight | 0.25" in card.text and "| step | loss | ce_loss | mse_loss |" in card.text
    # The uploaded folder loads back through the Auto classes.
    reloaded = AutoModel.from_pretrained(hub.destination)
    assert torch.equal(reloaded.lm_head.weight, pipe.model.lm_head.weight)


def test_pipeline_push_uploads_every_component_and_the_card(hub):
    pipe = tiny_pipeline(seed=0)
    history = [
        {"loss": 2.0, "ce_loss": 5.0, "mse_loss": 0.8, "step": 1},
        {"loss": 1.0, "ce_loss": 1.0, "step": 2, "mse_loss": 0.7},
    ]
    card = loom_model_card(
        "someone/loom-pipe",
        base_model="ByteDance-Seed/BAGEL-7B-MoT",
        datasets=["loom-procedural"],
        training_arguments={"learning_rate": 1e-4, "history": "sparse"},
        log_history=history,
        pipeline=True,
    )
    push_pipeline_to_hub(pipe, "someone/loom-pipe", card=card)
    repo_id, files, _ = hub.uploaded
    assert repo_id == "someone/loom-pipe"
    for name in (
        "model_index.json",
        "README.md",
        "model/config.json",
        "vae/config.json",
        "scheduler/scheduler_config.json",
        "processor/processor_config.json",
    ):
        assert name in files
    loaded = LoomInterleavedPipeline.from_pretrained(hub.destination)
    expected = pipe.model.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in loaded.model.state_dict().items())
    text = (hub.destination / "README.md").read_text()
    assert "library_name: diffusers" in text and "LoomInterleavedPipeline.from_pretrained" in text


def test_loss_summary_reports_evenly_spaced_steps_and_minimum():
    history = [{"loss": 10.0 - step, "ce_loss": 5.0, "mse_loss": 1.0 / step, "step": step} for step in range(1, 11)]
    table = loss_summary(history, points=3).splitlines()
    assert [row.split("|")[1].strip() for row in table[2:]] == ["1", "5", "10", "min"]
    assert table[-1].split("|")[2].strip() == "0.0000"
    assert loss_summary([]) == "No training loss was logged."
