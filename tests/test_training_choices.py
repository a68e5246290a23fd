"""What trains: LoRA target sets (which projections get adapters; entity-token rows trained, other rows not) and
`--train_experts` end to end through `examples/train_sft.py`, each against a list written out here, by name."""

import sys

import pytest
import torch

from loom_hf import LoomInterleavedPipeline
from loom_hf.data import build_dataset
from loom_hf.tiny import tiny_pipeline
from loom_hf.trainers.lora import lora_config

from .test_training_faults import load_train_sft

LAYERS = 2  # the tiny model's decoder layers
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def expert_projections(expert: str) -> set[str]:
    """The attention and MLP projections of one expert, spelled out (`""`: understanding, `"_moe_gen"`: generation)."""
    return {
        f"model.language_model.layers.{layer}.{name}"
        for layer in range(LAYERS)
        for name in [*(f"self_attn.{p}{expert}" for p in ATTENTION), *(f"mlp{expert}.{p}" for p in MLP)]
    }


@pytest.mark.parametrize(
    "targets, experts", [("generation", ["_moe_gen"]), ("understanding", [""]), ("both", ["", "_moe_gen"])]
)
def test_lora_targets_adapt_exactly_the_chosen_experts(targets, experts):
    pipe = tiny_pipeline(seed=0, max_frames=8)
    pipe.model.add_adapter(lora_config(pipe.model, rank=4, targets=targets))
    adapted = {name for name, module in pipe.model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == set().union(*(expert_projections(expert) for expert in experts))


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"alpha": float("nan")}, "`alpha` must be a finite number"),
        ({"alpha": -8.0}, "`alpha` must be > 0.0"),
        ({"alpha": 0}, "`alpha` must be > 0.0"),
        ({"rank": 2.5}, "`rank` must be an integer >= 1"),
        ({"rank": 0}, "`rank` must be an integer >= 1"),
    ],
)
def test_lora_config_refuses_bad_rank_and_alpha_by_name(settings, message):
    pipe = tiny_pipeline(seed=0, max_frames=8)
    with pytest.raises(ValueError, match=message):
        lora_config(pipe.model, **settings)


def test_lora_trains_adapters_heads_and_entity_rows_only(tmp_path):
    """Two LoRA training steps on rows with entity tokens: the entity rows of the embedding move and no other row;
    base weights stay bit for bit; the latent heads (trained fully, as copies next to the frozen originals) move."""
    from .test_trainer import make_trainer

    pipe = tiny_pipeline(seed=0, max_frames=8)
    model = pipe.model
    before = {name: tensor.clone() for name, tensor in model.named_parameters()}
    vocabulary = torch.arange(before["model.language_model.embed_tokens.weight"].shape[0])
    model.add_adapter(lora_config(model, rank=4, targets="generation"))
    rows = build_dataset(24, seed=0)["train"].filter(lambda row: "<" in row["instruction"])
    assert len(rows) > 0
    make_trainer(pipe, rows, tmp_path, max_steps=2, learning_rate=1e-2).train()

    with torch.no_grad():
        moved = model.get_input_embeddings()(vocabulary) != before["model.language_model.embed_tokens.weight"]
    moved_rows = set(moved.any(dim=1).nonzero().flatten().tolist())
    assert moved_rows and moved_rows <= set(model.config.entity_token_ids)

    after = {name: tensor for name, tensor in model.named_parameters()}
    base = {name.replace(".base_layer", ""): tensor for name, tensor in after.items()}
    for name in (
        "lm_head.weight",
        "model.language_model.layers.0.mlp.up_proj.weight",
        "model.language_model.layers.0.mlp_moe_gen.up_proj.weight",
        "model.vision_model.encoder.layers.0.mlp.fc1.weight",
    ):
        assert torch.equal(base[name], before[name]), name
    assert not torch.equal(after["llm2vae.modules_to_save.default.weight"], before["llm2vae.weight"])


# Representative weights of each part, by name: (understanding expert, ViT, text head, generation expert, latent head).
UNDERSTANDING = "model.language_model.layers.0.mlp.up_proj.weight"
VISION = "model.vision_model.encoder.layers.0.mlp.fc1.weight"
TEXT_HEAD = "lm_head.weight"
GENERATION = "model.language_model.layers.0.mlp_moe_gen.up_proj.weight"
LATENT_HEAD = "llm2vae.weight"


@pytest.mark.parametrize(
    "experts, frozen, trained",
    [
        ("generation", [UNDERSTANDING, VISION, TEXT_HEAD], [GENERATION, LATENT_HEAD]),
        ("freeze_understanding", [UNDERSTANDING, VISION], [TEXT_HEAD, GENERATION, LATENT_HEAD]),
        ("all", [], [UNDERSTANDING, VISION, TEXT_HEAD, GENERATION, LATENT_HEAD]),
    ],
)
def test_train_experts_end_to_end(tmp_path, monkeypatch, experts, frozen, trained):
    build_dataset(8, seed=0)["train"].save_to_disk(str(tmp_path / "data"))
    argv = ["train_sft.py", "--tiny", "--max_frames", "8", "--dataset", str(tmp_path / "data"), "--use_cpu"]
    argv += ["--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--save_strategy", "no", "--report_to", "none"]
    argv += ["--train_experts", experts, "--learning_rate", "1e-2", "--max_tokens_per_batch", "2048"]
    monkeypatch.setattr(sys, "argv", argv)
    load_train_sft().main()
    start = tiny_pipeline(seed=0, max_frames=8).model.state_dict()
    end = LoomInterleavedPipeline.from_pretrained(tmp_path / "out" / "pipeline").model.state_dict()
    assert [name for name in frozen if not torch.equal(end[name], start[name])] == []
    assert [name for name in trained if torch.equal(end[name], start[name])] == []
