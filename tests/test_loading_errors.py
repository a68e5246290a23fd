"""Loading errors name the file: a corrupted or truncated safetensors file, unreadable JSON or a config missing a
field in a BAGEL release (through `from_bagel` and `loom convert-bagel`) or in a saved pipeline folder (through
`LoomInterleavedPipeline.from_pretrained` and `loom generate --model`); checkpoints: `test_training_faults.py`."""

import json

import pytest

from loom_hf import LoomInterleavedPipeline
from loom_hf.cli import main as loom
from loom_hf.tiny import tiny_pipeline

from .test_conversion import SIZES, load, release  # noqa: F401 - `release` is a fixture
from .test_training_faults import snapshot


def truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("name", ["ema.safetensors", "ae.safetensors"])
def test_truncated_release_weights_are_named(release, name):  # noqa: F811
    truncate(release / name)
    with pytest.raises(ValueError, match="is not .*readable") as raised:
        load(release)
    assert str(release / name) in str(raised.value)


@pytest.mark.parametrize("name", ["llm_config.json", "vit_config.json", "ae_config.json"])
def test_corrupted_release_json_is_named(release, name):  # noqa: F811
    (release / name).write_text('{"hidden_size": 64,')
    with pytest.raises(ValueError, match="is not valid JSON") as raised:
        load(release)
    assert str(release / name) in str(raised.value)


@pytest.mark.parametrize("name, field", [("llm_config.json", "num_hidden_layers"), ("vit_config.json", "patch_size")])
def test_release_config_missing_a_field_is_named(release, name, field):  # noqa: F811
    config = json.loads((release / name).read_text())
    del config[field]
    (release / name).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"{name}' lacks the field\(s\) {field}"):
        load(release)


def test_convert_reports_a_broken_release_without_writing(release, tmp_path):  # noqa: F811
    truncate(release / "ema.safetensors")
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit, match=r"error: The release file '.*ema.safetensors' is not a readable"):
        loom(["convert-bagel", str(release), str(tmp_path / "out"), *SIZES])
    assert snapshot(tmp_path) == before


@pytest.fixture
def saved_pipeline(tmp_path):
    tiny_pipeline(seed=0).save_pretrained(tmp_path / "pipe")
    return tmp_path / "pipe"


@pytest.mark.parametrize("name", ["model/model.safetensors", "vae/diffusion_pytorch_model.safetensors"])
def test_truncated_pipeline_weights_are_named(saved_pipeline, name):
    truncate(saved_pipeline / name)
    with pytest.raises(ValueError, match="is not a readable safetensors file") as raised:
        LoomInterleavedPipeline.from_pretrained(saved_pipeline)
    assert str(saved_pipeline / name) in str(raised.value)


@pytest.mark.parametrize(
    "name", ["model_index.json", "model/config.json", "model/generation_config.json", "processor/tokenizer.json"]
)
def test_corrupted_pipeline_json_is_named(saved_pipeline, name):
    """`generation_config.json` included: transformers would load the model with a default generation config."""
    (saved_pipeline / name).write_text('{"model_type": "loom",')
    with pytest.raises(ValueError, match="is not readable JSON") as raised:
        LoomInterleavedPipeline.from_pretrained(saved_pipeline)
    assert str(saved_pipeline / name) in str(raised.value)


def test_generate_names_a_broken_model_file_without_writing(saved_pipeline, tmp_path):
    truncate(saved_pipeline / "model" / "model.safetensors")
    before = snapshot(tmp_path)
    output = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"error: The pipeline file '.*model\.safetensors' is not a readable"):
        loom(["generate", "Draw a red house", "--model", str(saved_pipeline), "--output-dir", str(output)])
    assert snapshot(tmp_path) == before
