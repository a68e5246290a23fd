"""Loading an official BAGEL release folder and converting it into a Hugging Face pipeline folder."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from loom_hf import LoomInterleavedPipeline
from loom_hf.cli import main as loom
from loom_hf.modeling.convert_bagel import REQUIRED_RELEASE_FILES

from .conftest import FIXTURE, FIXTURE_VAE_SIZE, FIXTURE_VIT_SIZE

SIZES = ["--vae-image-size", *map(str, FIXTURE_VAE_SIZE), "--vit-image-size", *map(str, FIXTURE_VIT_SIZE)]


@pytest.fixture
def release(tmp_path):
    """A writable copy of the bagel-tiny release folder."""
    folder = tmp_path / "release"
    shutil.copytree(FIXTURE / "checkpoint", folder)
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


def load(folder):
    return LoomInterleavedPipeline.from_bagel(folder, vae_image_size=FIXTURE_VAE_SIZE, vit_image_size=FIXTURE_VIT_SIZE)


@pytest.mark.parametrize(
    "argument, value, message",
    [
        ("timestep_shift", float("nan"), "`timestep_shift` must be a finite number"),
        ("timestep_shift", -1.0, "`timestep_shift` must be > 0.0"),
        ("timestep_shift", 0.0, "`timestep_shift` must be > 0.0"),
        ("max_frames", -1, "`max_frames` must be an integer >= 0"),
        ("max_frames", 2.5, "`max_frames` must be an integer >= 0"),
    ],
)
@pytest.mark.parametrize("method", ["from_bagel", "convert_bagel"])
def test_release_numbers_are_checked_before_the_release_is_read(
    release, tmp_path, monkeypatch, method, argument, value, message
):
    """A NaN or non-positive `timestep_shift` (saved into the scheduler) and a bad `max_frames` are refused by name
    before the release is read; `convert_bagel` writes nothing."""

    def read_release(*args, **kwargs):
        raise AssertionError("the release was read before the arguments were checked")

    monkeypatch.setattr("loom_hf.pipelines.pipeline_loom.load_bagel_release", read_release)
    destination = [tmp_path / "out"] if method == "convert_bagel" else []
    with pytest.raises((TypeError, ValueError), match=message):
        getattr(LoomInterleavedPipeline, method)(release, *destination, **{argument: value})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", [*REQUIRED_RELEASE_FILES, "vocab.json"])
def test_missing_release_file_is_named(release, name):
    (release / name).unlink()
    with pytest.raises(FileNotFoundError, match=name.split(".")[0]):
        load(release)


def test_pickled_checkpoints_are_not_read(release):
    (release / "ema.safetensors").rename(release / "ema.pt")
    with pytest.raises(FileNotFoundError, match="Only safetensors are read"):
        load(release)


def test_every_release_tensor_is_used(bagel_pipeline):
    """Each release tensor lands in one model parameter (the sin-cos tables are checked, then rebuilt)."""
    with safe_open(FIXTURE / "checkpoint" / "ema.safetensors", framework="pt") as release:
        keys = set(release.keys())
    parameters = dict(bagel_pipeline.model.named_parameters())
    # Loom's temporal table is the only parameter the release lacks; it starts at zero.
    assert torch.count_nonzero(parameters.pop("model.frame_embed.weight")) == 0
    assert len(parameters) == len(keys) - 2
    release_tensors = load_file(FIXTURE / "checkpoint" / "ema.safetensors")
    torch.testing.assert_close(
        parameters["model.time_embedder.embedding.linear_1.weight"], release_tensors["time_embedder.mlp.0.weight"]
    )
    torch.testing.assert_close(
        parameters["model.vision_model.embeddings.patch_embedding.weight"],
        release_tensors["vit_model.vision_model.embeddings.patch_embedding.weight"],
    )
    torch.testing.assert_close(
        bagel_pipeline.model.model.latent_pos_embed.table, release_tensors["latent_pos_embed.pos_embed"]
    )
    vae_tensors = load_file(FIXTURE / "checkpoint" / "ae.safetensors")
    assert sum(p.numel() for p in bagel_pipeline.vae.parameters()) == sum(t.numel() for t in vae_tensors.values())


def test_entity_tokens_take_spare_rows(bagel_pipeline):
    from loom_hf.modeling.processing_loom import ENTITY_TOKENS

    tokenizer, model = bagel_pipeline.processor.tokenizer, bagel_pipeline.model
    ids = [tokenizer.convert_tokens_to_ids(token) for token in ENTITY_TOKENS]
    assert sorted(ids) == model.config.entity_token_ids and max(ids) < 640  # the release's 640 rows, not shrunk
    assert model.get_input_embeddings().weight.shape[0] == 640
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("<upper>", add_special_tokens=False)) == ["<upper>"]


def test_grid_sizes_come_from_tensor_shapes(bagel_pipeline):
    config = bagel_pipeline.model.config
    assert config.max_latent_size == 8  # latent_pos_embed has 64 rows
    assert config.vision_config.max_num_patches_per_side == 70  # position_embedding has 4900 rows
    assert config.vision_config.num_hidden_layers == 2  # vit_config.json says 3; BAGEL drops one
    assert config.text_config.qk_norm and not config.tie_word_embeddings


def test_unexpected_release_tensor_is_rejected(release):
    tensors = load_file(release / "ema.safetensors")
    tensors["extra_head.weight"] = torch.zeros(2, 2)
    save_file(tensors, release / "ema.safetensors")
    with pytest.raises(KeyError, match="extra_head.weight"):
        load(release)


def test_foreign_position_table_is_rejected(release):
    tensors = load_file(release / "ema.safetensors")
    tensors["latent_pos_embed.pos_embed"] = torch.randn_like(tensors["latent_pos_embed.pos_embed"])
    save_file(tensors, release / "ema.safetensors")
    with pytest.raises(ValueError, match="sin-cos table"):
        load(release)


def test_cli_writes_a_sharded_folder_that_round_trips(bagel_pipeline, tmp_path, capsys):
    destination = tmp_path / "converted"
    assert (
        loom(["convert-bagel", str(FIXTURE / "checkpoint"), str(destination), *SIZES, "--max-shard-size", "1MB"]) == 0
    )
    assert "Converting" in capsys.readouterr().err  # a progress bar over the bytes converted
    index = json.loads((destination / "model" / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((destination / "model" / shard).is_file() for shard in shards)
    assert (destination / "vae" / "config.json").is_file() and (destination / "scheduler").is_dir()
    assert (destination / "processor" / "processor_config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".converted")]

    loaded = LoomInterleavedPipeline.from_pretrained(destination)
    for component in ("model", "vae"):
        expected = getattr(bagel_pipeline, component).state_dict()
        actual = getattr(loaded, component).state_dict()
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[key], actual[key]) for key in expected)
    assert loaded.scheduler.config.shift == 3.0
    assert loaded.processor.image_processor.vae_image_size == list(FIXTURE_VAE_SIZE)


def test_converted_vision_config_drops_the_release_siglip_fields(bagel_pipeline):
    """The release's `vit_config.json` holds SigLIP's `image_size` (980); Loom's tower reads no such field, so the
    converted config does not carry it (nor `vision_use_head`)."""
    saved = bagel_pipeline.model.config.vision_config.to_dict()
    assert "image_size" not in saved and "vision_use_head" not in saved
    assert saved["max_num_patches_per_side"] * saved["patch_size"] >= FIXTURE_VIT_SIZE[0]


def test_cli_never_leaves_a_partial_folder(release, tmp_path):
    (release / "ae.safetensors").unlink()
    destination = tmp_path / "out"
    with pytest.raises(SystemExit, match="ae.safetensors"):
        loom(["convert-bagel", str(release), str(destination), *SIZES])
    assert not destination.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["release"]


def test_cli_refuses_to_overwrite_without_flag(tmp_path):
    destination = tmp_path / "out"
    destination.mkdir()
    (destination / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="--overwrite"):
        loom(["convert-bagel", str(FIXTURE / "checkpoint"), str(destination), *SIZES])
    assert (destination / "keep.txt").read_text() == "mine"


def test_bfloat16_conversion(tmp_path):
    destination = tmp_path / "bf16"
    loom(["convert-bagel", str(FIXTURE / "checkpoint"), str(destination), *SIZES, "--dtype", "bfloat16"])
    pipe = LoomInterleavedPipeline.from_pretrained(destination, dtype=torch.bfloat16)
    assert pipe.model.dtype == torch.bfloat16 and pipe.vae.dtype == torch.bfloat16
    pipe.set_progress_bar_config(disable=True)
    image = pipe(["A red square above a blue circle."], num_inference_steps=2).images[0]
    assert image.size == (64, 64)


@pytest.mark.parametrize(
    ("dtype", "max_shard_size"), [(None, "1MB"), (torch.bfloat16, "5GB"), (torch.float16, "200KB")]
)
def test_streamed_conversion_writes_the_bytes_of_loading_then_saving(tmp_path, dtype, max_shard_size):
    """`convert_bagel` (the model on the meta device, each shard read from the release and written in turn) writes the
    folder `from_bagel(...).save_pretrained(...)` writes, file for file and byte for byte."""
    kwargs = {"vae_image_size": FIXTURE_VAE_SIZE, "vit_image_size": FIXTURE_VIT_SIZE, "dtype": dtype}
    LoomInterleavedPipeline.from_bagel(FIXTURE / "checkpoint", **kwargs).save_pretrained(
        tmp_path / "loaded", max_shard_size=max_shard_size
    )
    LoomInterleavedPipeline.convert_bagel(
        FIXTURE / "checkpoint", tmp_path / "streamed", max_shard_size=max_shard_size, **kwargs
    )
    loaded = sorted(p.relative_to(tmp_path / "loaded") for p in (tmp_path / "loaded").rglob("*") if p.is_file())
    streamed = sorted(p.relative_to(tmp_path / "streamed") for p in (tmp_path / "streamed").rglob("*") if p.is_file())
    assert loaded == streamed and len([p for p in loaded if p.suffix == ".safetensors"]) >= 2
    for name in loaded:
        assert (tmp_path / "loaded" / name).read_bytes() == (tmp_path / "streamed" / name).read_bytes(), name
