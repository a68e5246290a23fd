"""Offload and placement on CPU: accelerate's disk-offloaded `device_map`, diffusers' group offloading to disk and
model offload (placement and moves per tutorial), and clear errors for placements that cannot work."""

import itertools
from pathlib import Path

import pytest
import torch
from accelerate.hooks import CpuOffload
from transformers import PreTrainedModel

import loom_hf
from loom_hf import LoomForInterleavedGeneration, LoomInterleavedPipeline

DEFAULT_MODEL = Path(loom_hf.DEFAULT_MODEL)
NO_ACCELERATOR = pytest.mark.skipif(torch.accelerator.is_available(), reason="checks a machine without accelerator")


def load_pipe(**kwargs) -> LoomInterleavedPipeline:
    pipe = LoomInterleavedPipeline.from_pretrained(DEFAULT_MODEL, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image_and_answer(pipe: LoomInterleavedPipeline) -> tuple[torch.Tensor, list[str]]:
    noise = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)  # the model's scheduler samples stochastically: step noise from it
    image = pipe(["A red square."], num_inference_steps=3, latents=noise, generator=generator, output_type="latent")
    return image.images[0], pipe(["Draw a red house"], task="text", max_new_tokens=12).texts


def tutorial(pipe: LoomInterleavedPipeline) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return pipe(
        ["Draw a red house"], task="interleaved", num_inference_steps=3, generator=generator, output_type="pt"
    ).images


@pytest.fixture(scope="module")
def in_memory():
    pipe = load_pipe()
    return image_and_answer(pipe), tutorial(pipe)


def test_disk_offloaded_device_map_gives_the_in_memory_output(in_memory, tmp_path):
    model = LoomForInterleavedGeneration.from_pretrained(
        DEFAULT_MODEL / "model", device_map="auto", max_memory={"cpu": "14MB"}, offload_folder=tmp_path
    )
    placed = set(model.hf_device_map.values())
    assert placed == {"cpu", "disk"}, model.hf_device_map
    (image, answer), _ = in_memory
    offloaded_image, offloaded_answer = image_and_answer(load_pipe(model=model))
    torch.testing.assert_close(offloaded_image, image, rtol=0, atol=0)
    assert offloaded_answer == answer


def test_group_offloading_to_disk_gives_the_same_tutorial(in_memory, tmp_path):
    pipe = load_pipe()
    pipe.enable_group_offload(
        onload_device="cpu", offload_type="block_level", num_blocks_per_group=1, offload_to_disk_path=str(tmp_path)
    )
    assert list(tmp_path.iterdir())  # the groups' weights live on disk between uses
    _, reference = in_memory
    frames = tutorial(pipe)
    assert len(frames) == len(reference)
    for frame, expected in zip(frames, reference):
        torch.testing.assert_close(frame, expected, rtol=0, atol=0)


def test_model_cpu_offload_fetches_the_model_once_per_tutorial(in_memory, monkeypatch):
    """The VAE stays on the execution device, so decoding a frame never sends the model back to the CPU: in a
    whole tutorial only the model is offload-hooked (with the VAE in the chain it was fetched once per frame)."""
    pipe = load_pipe()
    pipe.enable_model_cpu_offload(device="cpu")  # CPU as the "accelerator": the hooks' placement and order
    hooked = []
    pre_forward = CpuOffload.pre_forward

    def logged(self, module, *args, **kwargs):
        hooked.append("model" if module is pipe.model else type(module).__name__)
        return pre_forward(self, module, *args, **kwargs)

    monkeypatch.setattr(CpuOffload, "pre_forward", logged)
    frames = tutorial(pipe)
    _, reference = in_memory
    assert len(frames) == len(reference) and all(torch.equal(a, b) for a, b in zip(frames, reference))
    assert [name for name, _ in itertools.groupby(hooked)] == ["model"]
    assert not hasattr(pipe.vae, "_hf_hook")
    assert pipe.vae.device.type == pipe._execution_device.type  # placed there by enable_model_cpu_offload


@NO_ACCELERATOR
def test_offload_without_accelerator_is_refused():
    pipe = load_pipe()
    with pytest.raises(RuntimeError, match="requires accelerator"):
        pipe.enable_model_cpu_offload()
    with pytest.raises(RuntimeError, match="requires accelerator"):
        pipe.enable_sequential_cpu_offload()
    with pytest.raises(RuntimeError, match="no accelerator"):
        pipe.enable_group_offload(onload_device="cuda", offload_type="leaf_level")
    assert not hasattr(pipe.model, "_diffusers_hook") and not hasattr(pipe.model, "_hf_hook")


@pytest.fixture
def no_loading(monkeypatch):
    """Fails the test if `from_pretrained` gets as far as reading weights."""
    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("loading")))


@pytest.mark.parametrize("max_memory", [{"cpu": "1KB"}, {"cpu": "5MB", "disk": "1GB"}])
def test_max_memory_below_one_layer_is_refused(no_loading, tmp_path, max_memory):
    """Below one decoder layer (6 MB here) accelerate would silently map the whole model to disk."""
    with pytest.raises(ValueError, match=r"max_memory.*'cpu'.*LoomDecoderLayer \(6036992 bytes\)"):
        LoomForInterleavedGeneration.from_pretrained(
            DEFAULT_MODEL / "model", device_map="auto", max_memory=max_memory, offload_folder=tmp_path
        )


def test_device_map_naming_an_unknown_module_is_refused(no_loading):
    device_map = {"model.language_model.layers.0": "cpu", "model.decoder": "cpu", "": "cpu"}
    with pytest.raises(ValueError, match=r"device_map.*\['model\.decoder'\].*not modules"):
        LoomForInterleavedGeneration.from_pretrained(DEFAULT_MODEL / "model", device_map=device_map)


@NO_ACCELERATOR
@pytest.mark.parametrize(
    "placement", [{"device_map": {"": 0}}, {"device_map": "auto", "max_memory": {0: "1GB", "cpu": "1GB"}}]
)
def test_an_accelerator_placement_is_refused_without_one(no_loading, placement):
    with pytest.raises(RuntimeError, match="has none"):
        LoomForInterleavedGeneration.from_pretrained(DEFAULT_MODEL / "model", **placement)
