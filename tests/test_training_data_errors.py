"""Training data errors: bad rows are skipped (or rejected by index) everywhere, `--cache_latents` included, and a
dataset that cannot be trained on at all is named in the error."""

import io
import sys

import datasets
import pytest
import torch
from PIL import Image

from loom_hf.data import build_dataset
from loom_hf.tiny import tiny_pipeline
from loom_hf.trainers import LOOM_FEATURES, LoomDataCollator, LoomTrainingDataset
from loom_hf.trainers.latent_cache import cache_latents

from .test_training_faults import load_train_sft, snapshot


def png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def edit_row(target: dict) -> dict:
    return {
        "task": "edit",
        "instruction": "Make it green",
        "images": [{"bytes": png("red"), "path": None}],
        "step_texts": [],
        "step_images": [],
        "targets": [target],
        "answer": "",
        "meta": "{}",
    }


def bad_rows(missing: dict | None) -> datasets.Dataset:
    """Four edit rows: row 1's target is unreadable bytes, row 2's is `missing`."""
    targets = [
        {"bytes": png("green"), "path": None},
        {"bytes": b"\x89PNG not really", "path": None},
        missing,
        {"bytes": png("blue"), "path": None},
    ]
    return datasets.Dataset.from_list([edit_row(target) for target in targets], features=LOOM_FEATURES)


@pytest.fixture(scope="module")
def rows() -> datasets.Dataset:
    """Row 2's target names a file that does not exist."""
    return bad_rows({"bytes": None, "path": "/nonexistent/target.png"})


@pytest.fixture(scope="module")
def saved_rows(tmp_path_factory) -> str:
    """Saved with `save_to_disk` (which cannot hold a path to no file): row 2's target is null."""
    folder = tmp_path_factory.mktemp("data") / "rows"
    bad_rows(None).save_to_disk(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(seed=0, max_frames=8)


def test_cache_latents_skips_bad_rows_with_one_counted_warning(pipe, rows):
    with pytest.warns(UserWarning, match=r"Skipping 2 of 4 rows are invalid \(rows 1, 2\)"):
        cached = cache_latents(rows, pipe.vae, processor=pipe.processor, on_error="skip")
    assert len(cached) == 2 and cached[0]["targets_latent_grids"] == [[2, 2]]
    # The cached rows train: every instance carries latent tokens instead of pixels.
    dataset = LoomTrainingDataset(cached, LoomDataCollator(pipe.processor), max_tokens=1024, max_frames=8)
    assert len(dataset) == 2 and all(item.latents is not None for item in dataset[0] if hasattr(item, "latents"))


def test_cache_latents_raises_with_the_bad_row_indices(pipe, rows):
    with pytest.raises(ValueError, match=r"2 of 4 rows are invalid \(rows 1, 2\)") as raised:
        cache_latents(rows, pipe.vae, processor=pipe.processor, on_error="raise")
    assert "targets[0] cannot be decoded" in str(raised.value)


@pytest.mark.parametrize("policy", ["skip", "raise"])
def test_train_sft_cache_latents_follows_on_bad_sample(saved_rows, tmp_path, monkeypatch, policy):
    """`examples/train_sft.py --cache_latents`: one step on the good rows (skip), or an error naming them (raise)."""
    module = load_train_sft()
    argv = ["train_sft.py", "--tiny", "--max_frames", "8", "--dataset", saved_rows, "--cache_latents"]
    argv += ["--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--save_strategy", "no", "--use_cpu"]
    argv += ["--report_to", "none", "--on_bad_sample", policy, "--max_tokens_per_batch", "1024"]
    monkeypatch.setattr(sys, "argv", argv)
    torch.manual_seed(0)
    if policy == "raise":
        with pytest.raises(ValueError, match=r"rows 1, 2"):
            module.main()
        assert not (tmp_path / "out").exists()
    else:
        with pytest.warns(UserWarning, match="Skipping 2 of 4 rows"):
            module.main()
        assert (tmp_path / "out" / "pipeline" / "model_index.json").is_file()


def _data_args(module, path, split="train"):
    return module.DataArguments(dataset=str(path), split=split)


def test_empty_dataset_is_named(tmp_path):
    module = load_train_sft()
    build_dataset(4, seed=0)["train"].filter(lambda row: False).save_to_disk(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"--dataset '.*empty' \(split 'train'\) holds no rows"):
        module.load_dataset(_data_args(module, tmp_path / "empty"), "skip")


def test_unknown_split_is_named_with_the_splits_held(tmp_path):
    module = load_train_sft()
    build_dataset(4, seed=0).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(ValueError, match=r"--split 'test' is not in --dataset '.*dict'; it holds train, eval"):
        module.load_dataset(_data_args(module, tmp_path / "dict", split="test"), "skip")


def test_missing_or_unreadable_dataset_folder_is_named(tmp_path):
    module = load_train_sft()
    with pytest.raises(ValueError, match=r"--dataset '.*nowhere' is not a readable save_to_disk folder"):
        module.load_dataset(_data_args(module, tmp_path / "nowhere"), "skip")
    build_dataset(4, seed=0)["train"].save_to_disk(str(tmp_path / "broken"))
    (tmp_path / "broken" / "dataset_info.json").write_text("{truncated")
    before = snapshot(tmp_path / "broken")
    with pytest.raises(ValueError, match=r"--dataset '.*broken' is not a readable save_to_disk folder"):
        module.load_dataset(_data_args(module, tmp_path / "broken"), "skip")
    assert snapshot(tmp_path / "broken") == before


def test_a_dataset_of_only_bad_rows_says_so(pipe, rows):
    with pytest.warns(UserWarning, match="Skipping 2 of 2 rows"):
        with pytest.raises(ValueError, match="No usable training instance"):
            LoomTrainingDataset(rows.select([1, 2]), LoomDataCollator(pipe.processor), max_tokens=1024)


def test_train_sft_refuses_a_latent_stride_the_model_does_not_use(saved_rows, tmp_path, monkeypatch):
    """A pipeline whose model makes one token per latent pixel (8 px) beside a processor resizing to 16 px multiples:
    `examples/train_sft.py` names the mismatch before it reads the dataset or caches a latent, and writes nothing."""
    module = load_train_sft()
    tiny_pipeline(seed=0, max_frames=8, latent_patch_size=1, max_latent_size=8).save_pretrained(tmp_path / "patch1")
    argv = ["train_sft.py", "--model_name_or_path", str(tmp_path / "patch1"), "--dataset", saved_rows]
    argv += ["--cache_latents", "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--use_cpu"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(module, "load_dataset", lambda *args: pytest.fail("the dataset was read"))
    with pytest.raises(ValueError, match=r"`vae_image_size` stride \(16 px\) must equal .* = 8\)"):
        module.main()
    assert not (tmp_path / "out").exists()
