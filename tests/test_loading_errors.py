"""Loading errors name the file: a corrupted or truncated safetensors file, unreadable JSON or a config missing a
field in a BAGEL release, through `from_bagel` and `loom convert-bagel` (checkpoints: `test_training_faults.py`)."""

import json

import pytest

from loom_hf.cli import main as loom

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
