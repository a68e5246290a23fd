"""The release layout computed from BAGEL's configs, the streaming safetensors writer, and the 14 B benchmark run end to
end at the bagel-tiny sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from loom_hf.modeling.bagel_layout import (
    BAGEL_7B_LLM_CONFIG,
    BAGEL_7B_VIT_CONFIG,
    TensorSpec,
    ae_layout,
    ema_layout,
    write_safetensors,
)
from loom_hf.modeling.convert_bagel import FLUX_AE_DEFAULTS

from .conftest import FIXTURE

CHECKPOINT = FIXTURE / "checkpoint"
REPO = Path(__file__).resolve().parent.parent


def stored_layout(path: Path) -> dict[str, TensorSpec]:
    dtypes = {"F32": torch.float32, "BF16": torch.bfloat16}
    with safe_open(path, framework="pt") as file:
        return {
            key: TensorSpec(tuple(file.get_slice(key).get_shape()), dtypes[file.get_slice(key).get_dtype()])
            for key in file.keys()
        }


def read_json(name: str) -> dict:
    return json.loads((CHECKPOINT / name).read_text())


def test_layouts_from_the_configs_are_the_fixture_release():
    """Computed from the fixture's configs, the layouts name and shape exactly the tensors its files hold."""
    ema = ema_layout(read_json("llm_config.json"), read_json("vit_config.json"), max_latent_size=8, dtype=torch.float32)
    assert ema == stored_layout(CHECKPOINT / "ema.safetensors")
    assert ae_layout(read_json("ae_config.json")) == stored_layout(CHECKPOINT / "ae.safetensors")


def test_bagel_7b_layout_has_the_published_sizes():
    ema = ema_layout(BAGEL_7B_LLM_CONFIG, BAGEL_7B_VIT_CONFIG)
    layer = [spec for name, spec in ema.items() if name.startswith("language_model.model.layers.0.")]
    per_expert = sum(torch.Size(spec.shape).numel() for spec in layer) // 2
    assert per_expert == 233_058_048
    assert ema["language_model.model.embed_tokens.weight"].shape == (152064, 3584)
    assert ema["vit_model.vision_model.embeddings.patch_embedding.weight"].shape == (1152, 588)
    assert not any(".encoder.layers.26." in name for name in ema)  # 26 ViT layers stored, 27 configured
    assert round(sum(spec.nbytes for spec in ema.values()) / 1e9, 1) == 29.2
    ae = ae_layout(FLUX_AE_DEFAULTS)
    assert round(sum(torch.Size(spec.shape).numel() for spec in ae.values()) / 1e6, 1) == 83.8


def test_write_safetensors_streams_tensors_that_safetensors_reads_back(tmp_path):
    layout = {
        "a.weight": TensorSpec((3, 5), torch.bfloat16),
        "b.bias": TensorSpec((7,), torch.float32),
        "c.table": TensorSpec((2, 2, 2), torch.int8),
    }
    made = {}

    def make(name, spec):
        assert set(made) == {n for n in layout if list(layout).index(n) < list(layout).index(name)}  # one at a time
        made[name] = torch.arange(torch.Size(spec.shape).numel()).reshape(spec.shape).to(spec.dtype) - 3
        return made[name]

    path = tmp_path / "x.safetensors"
    size = write_safetensors(path, layout, make, metadata={"format": "pt"})
    assert size == path.stat().st_size
    loaded = load_file(path)
    assert loaded.keys() == made.keys()
    for name, tensor in made.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)
    with safe_open(path, framework="pt") as file:
        assert file.metadata() == {"format": "pt"}


def test_write_safetensors_refuses_a_tensor_unlike_its_spec(tmp_path):
    layout = {"w": TensorSpec((2, 2), torch.float32)}
    with pytest.raises(ValueError, match=r"`w` was made as \(2, 3\)"):
        write_safetensors(tmp_path / "x.safetensors", layout, lambda name, spec: torch.zeros(2, 3))


@pytest.mark.slow
def test_the_14b_benchmark_runs_end_to_end_at_tiny_size_and_cleans_up(tmp_path):
    """Write, `loom convert-bagel`, int8 load (converted folder and release) and generation, at the fixture's sizes;
    the int8 bytes the memory table computes on the meta device are the bytes the loaded model holds."""
    work, report = tmp_path / "work", tmp_path / "report.json"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "benchmarks" / "bench_bagel_14b.py"), "--tiny", "--from-bagel"]
    options = ["--vae-probe-size", "64", "--workdir", str(work), "--report", str(report)]
    subprocess.run([*command, *options], env=env, check=True)
    assert not list(work.iterdir())
    result = json.loads(report.read_text())
    assert result["convert"]["peak_rss"] > 0 and result["convert"]["wall_s"] > 0
    assert result["write"]["peak_rss"] > 0 and result["vae_probe"]["added_bytes"] > 0
    for kind in ("converted", "release"):
        infer = result[f"infer_{kind}"]
        assert infer["quantized"] == "Int8Tensor" and infer["image_size"] == [64, 64] and infer["answer"]
    int8 = result["memory_table"]["weights_by_component"]["int8"]
    assert result["infer_release"]["model_bytes"] == int8
    bf16 = result["memory_table"]["weights_by_component"]["bf16"]
    assert int8["LLM und expert"] < 0.6 * bf16["LLM und expert"]
