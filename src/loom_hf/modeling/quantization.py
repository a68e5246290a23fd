"""Quantized loading: the backend a quantization config needs (checked before anything loads), weights quantized one
tensor at a time as a release streams in, and the bytes quantized weights really hold.

The configs are the standard ones (transformers' `TorchAoConfig` / `BitsAndBytesConfig`, diffusers'
`PipelineQuantizationConfig`); which modules stay in high precision is the model's `_keep_in_fp32_modules`.
"""

import importlib.util

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass
from transformers import PreTrainedModel
from transformers.quantizers import AutoHfQuantizer, HfQuantizer

__all__ = ["QUANT_EXTRA", "check_quantization_backend", "StreamingQuantizer", "held_bytes", "weight_storage_bytes"]

QUANT_EXTRA = 'pip install "loom-hf[quant]"'
# quant_method -> (import name, how to get it, needs CUDA). bitsandbytes is untested here (no GPU on the CI machine).
_BACKENDS = {
    "torchao": ("torchao", QUANT_EXTRA, False),
    "bitsandbytes": ("bitsandbytes", "pip install bitsandbytes (CUDA machines; untested by loom-hf's CPU suite)", True),
}


def _quant_methods(config) -> list[str]:
    """The backend name(s) a transformers/diffusers quantization config (object or dict) or a diffusers
    `PipelineQuantizationConfig` uses."""
    if config is None:
        return []
    if isinstance(config, dict):
        return [str(config.get("quant_method", ""))]
    mapping = getattr(config, "quant_mapping", None)
    if mapping is not None or hasattr(config, "quant_backend"):  # a PipelineQuantizationConfig
        methods = [m for c in (mapping or {}).values() for m in _quant_methods(c)]
        return methods + ([config.quant_backend.split("_")[0]] if config.quant_backend else [])
    method = getattr(config, "quant_method", "")
    return [str(getattr(method, "value", method))]


def check_quantization_backend(config) -> None:
    """Raise a clear error, before any weight is read, when `config` needs a backend that is not installed or (for
    bitsandbytes) a CUDA device this machine lacks."""
    for method in _quant_methods(config):
        if method not in _BACKENDS:
            continue  # other backends: transformers names its own requirement
        package, install, needs_cuda = _BACKENDS[method]
        if importlib.util.find_spec(package) is None:
            raise ImportError(f"This quantization config uses {method}, which is not installed: {install}.")
        if needs_cuda and not torch.cuda.is_available():
            raise RuntimeError(
                f"This quantization config uses {method}, which loom-hf supports on CUDA only and this machine has no "
                f"CUDA device; on CPU use `TorchAoConfig(Int8WeightOnlyConfig())` ({QUANT_EXTRA})."
            )


class StreamingQuantizer:
    """transformers' quantizer for `config`, applied to one weight at a time as it is assigned to a model built on
    the meta device: only quantized weights and the tensor in hand are ever materialised."""

    def __init__(self, model: PreTrainedModel, config):
        check_quantization_backend(config)
        self.quantizer: HfQuantizer = AutoHfQuantizer.from_config(config, pre_quantized=False)
        self.quantizer.validate_environment(device_map=None)
        self.quantizer.preprocess_model(model)
        self.operation = self.quantizer.get_quantize_ops()
        self.model = model

    def assign(self, name: str, tensor: torch.Tensor) -> bool:
        """Quantize `tensor` into parameter `name` when the config covers it (its module's weight); `False` means
        the caller assigns it as is."""
        if not self.quantizer.param_needs_quantization(self.model, name):
            return False
        self.operation.convert({name: tensor}, model=self.model, full_layer_name=name, missing_keys=set())
        return True

    def finish(self) -> None:
        """Record the config on the model (`model.config.quantization_config`, `is_quantized`), as `from_pretrained`
        does."""
        self.quantizer.postprocess_model(self.model)
        self.model.hf_quantizer = self.quantizer


def held_bytes(tensor: torch.Tensor) -> int:
    """Bytes `tensor` holds: a quantized tensor (torchao's `Int8Tensor`, ...) counts the inner tensors it stores."""
    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        return sum(held_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def weight_storage_bytes(module: nn.Module) -> int:
    """Bytes held by the parameters and buffers of `module`, a quantized tensor (torchao's `Int8Tensor`, ...) counted
    by the inner tensors it stores (`qdata`, `scale`, ...). `get_memory_footprint` counts such a tensor at its logical
    dtype, so it reports an int8 model at its float size."""
    return sum(held_bytes(p) for p in module.parameters()) + sum(held_bytes(b) for b in module.buffers())
