"""Checks of `from_pretrained`'s placement arguments (`device_map`, `max_memory`), run on a meta-device copy of the
model before any weight is read.

accelerate and transformers accept, without a word, a `device_map` key that names no module, and a `max_memory`
budget too small for the layer accelerate keeps on the execution device (it then maps the whole model to disk); a
device index on a machine without an accelerator fails only deep inside the loading. These checks say so first.
"""

import torch
from accelerate import init_empty_weights
from accelerate.utils import convert_file_size_to_int
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.integrations.accelerate import compute_module_sizes
from transformers.quantizers import AutoHfQuantizer

from .quantization import check_quantization_backend

__all__ = ["check_placement"]

_HOST_DEVICES = ("cpu", "disk", "meta")
_AUTO_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def _is_accelerator(device) -> bool:
    if isinstance(device, torch.device):
        return device.type not in _HOST_DEVICES
    return isinstance(device, int) or str(device).split(":")[0] not in _HOST_DEVICES


def _check_accelerators(device_map, max_memory: dict | None) -> None:
    named = list(device_map.values()) if isinstance(device_map, dict) else []
    named += list(max_memory or {})
    wanted = [device for device in named if _is_accelerator(device)]
    if wanted and not torch.accelerator.is_available():
        raise RuntimeError(
            f"`device_map`/`max_memory` name the accelerator device(s) {sorted(map(str, set(wanted)))}, but this "
            "machine has none; place the model on 'cpu' and 'disk' (with `offload_folder`) instead."
        )


def _meta_model(model_class: type[PreTrainedModel], config: PreTrainedConfig, dtype, quantization_config):
    """The model on the meta device at the loading dtype, with the quantizer that would load it (or `None`)."""
    with init_empty_weights():
        model = model_class(config)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype) if dtype != "auto" else None
    model.to(dtype or getattr(config, "dtype", None) or torch.float32)
    quantizer = None
    if quantization_config is not None:
        quantizer = AutoHfQuantizer.from_config(quantization_config, pre_quantized=False)
        quantizer.preprocess_model(model)
    return model, quantizer


def _check_module_names(model: PreTrainedModel, device_map: dict) -> None:
    names = {name for name, _ in model.named_modules()} | {name for name, _ in model.named_parameters()}
    unknown = sorted(key for key in device_map if key not in names)
    if unknown:
        top = sorted(name for name, _ in model.named_children())
        raise ValueError(
            f"`device_map` names {unknown}, which are not modules of {type(model).__name__}; keys are module names "
            f"such as {top} or 'model.language_model.layers.0', or '' for the whole model."
        )


def _check_main_budget(model: PreTrainedModel, quantizer, max_memory: dict) -> None:
    """The execution device must hold the largest no-split layer: accelerate reserves that much there to run
    offloaded layers, and with less it silently sends every layer to disk."""
    devices = [device for device in max_memory if device != "disk"]
    if not devices:
        return
    main = next((device for device in devices if _is_accelerator(device)), devices[0])
    budget = max_memory[main]
    budget = convert_file_size_to_int(budget) if isinstance(budget, str) else int(budget)
    sizes, _ = compute_module_sizes(model, quantizer)
    layers = {
        type(module).__name__: sizes[name]
        for name, module in model.named_modules()
        if type(module).__name__ in model._no_split_modules
    }
    if not layers:
        return
    name, size = max(layers.items(), key=lambda item: item[1])
    if budget < size:
        raise ValueError(
            f"`max_memory` gives {main!r} {budget} bytes, less than one {name} ({size} bytes): `device_map` never "
            f"splits a layer, and accelerate keeps room for one on the execution device to run offloaded layers, so "
            f"every layer would go to disk. Give {main!r} at least {size} bytes."
        )


def check_placement(
    model_class: type[PreTrainedModel],
    config: PreTrainedConfig,
    device_map=None,
    max_memory: dict | None = None,
    dtype=None,
    quantization_config=None,
) -> None:
    """Raise before loading when `device_map` / `max_memory` name a missing accelerator, a module the model lacks,
    or a budget that cannot hold one layer."""
    check_quantization_backend(quantization_config)
    _check_accelerators(device_map, max_memory)
    names_modules = isinstance(device_map, dict)
    checks_budget = max_memory is not None and device_map in _AUTO_MAPS
    if not (names_modules or checks_budget):
        return
    model, quantizer = _meta_model(model_class, config, dtype, quantization_config)
    if names_modules:
        _check_module_names(model, device_map)
    if checks_budget:
        _check_main_budget(model, quantizer, max_memory)
