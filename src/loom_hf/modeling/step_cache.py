"""Denoising-step caching for Loom, on diffusers' cache hooks (First Block Cache, TaylorSeer).

The decoder layers serve three kinds of forward passes: context encoding (which writes the KV cache), text decoding,
and the denoising steps of an image (which only read it). A step cache may skip layers, so its hooks must see the
denoising steps only: the model keeps the config and places diffusers' hooks on its decoder layers for the denoising
of each image (`step_cache`), removing them afterwards. Each image thus starts from a fresh cache state, and context
encoding and text decoding always run every layer.
"""

import dataclasses
import math
from contextlib import contextmanager, nullcontext

import torch
from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.utils import logging

__all__ = ["STEP_CACHE_CONFIGS", "LoomStepCacheMixin", "register_decoder_layer"]

logger = logging.get_logger(__name__)

STEP_CACHE_CONFIGS = (FirstBlockCacheConfig, TaylorSeerCacheConfig)


def register_decoder_layer(layer_class: type) -> None:
    """Tell diffusers' block hooks how a decoder layer is called: `forward(hidden_states, ...)` returns the new
    hidden states (a tensor)."""
    TransformerBlockRegistry.register(layer_class, TransformerBlockMetadata(return_hidden_states_index=0))


def loom_cache_config(config, num_layers: int):
    """Check `config` and fill in the modules to hook where the user named none.

    TaylorSeer without identifiers predicts the last decoder layer's output from its history and skips the others
    (diffusers' default identifiers name the blocks of its own transformers, which Loom's layers are not).
    """
    if not isinstance(config, STEP_CACHE_CONFIGS):
        names = ", ".join(kind.__name__ for kind in STEP_CACHE_CONFIGS)
        raise TypeError(f"`config` must be one of {names}; got {type(config).__name__}.")
    if isinstance(config, FirstBlockCacheConfig):
        if not (
            isinstance(config.threshold, (int, float)) and math.isfinite(config.threshold) and config.threshold >= 0
        ):
            raise ValueError(f"`FirstBlockCacheConfig.threshold` must be a finite number >= 0; got {config.threshold}.")
        if num_layers < 2:
            raise ValueError("First Block Cache needs a decoder of at least 2 layers.")
        return config
    for name in ("cache_interval", "disable_cache_before_step", "max_order"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"`TaylorSeerCacheConfig.{name}` must be an integer >= 1 (each image's first step must compute); got "
                f"{value!r}."
            )
    if not isinstance(config.taylor_factors_dtype, torch.dtype) or not config.taylor_factors_dtype.is_floating_point:
        raise TypeError(
            "`TaylorSeerCacheConfig.taylor_factors_dtype` must be a floating torch dtype (e.g. torch.float32); got "
            f"{config.taylor_factors_dtype!r}."
        )
    if config.cache_identifiers is None and config.skip_predict_identifiers is None and not config.use_lite_mode:
        last = num_layers - 1
        skipped = [rf"layers\.{index}" for index in range(last)]
        config = dataclasses.replace(config, cache_identifiers=[rf"layers\.{last}"], skip_predict_identifiers=skipped)
    return config


class LoomStepCacheMixin:
    """diffusers' `CacheMixin` contract on a Loom model: `enable_cache(config)`, `disable_cache()`,
    `is_cache_enabled`, for `FirstBlockCacheConfig` and `TaylorSeerCacheConfig`.

    The hooks live on the decoder layers (`self.model.language_model`, a diffusers `CacheMixin`) only while
    [`step_cache`] is open.
    """

    _step_cache_config = None

    @property
    def is_cache_enabled(self) -> bool:
        return self._step_cache_config is not None

    def enable_cache(self, config) -> None:
        """Cache denoising steps with `config` (a `FirstBlockCacheConfig` or `TaylorSeerCacheConfig`)."""
        if self.is_cache_enabled:
            raise ValueError(
                f"Caching is already enabled with {type(self._step_cache_config).__name__}; call `disable_cache()` "
                "first."
            )
        self._step_cache_config = loom_cache_config(config, len(self.model.language_model.layers))

    def disable_cache(self) -> None:
        """Back to uncached denoising (bit-identical to never having enabled a cache)."""
        if not self.is_cache_enabled:
            logger.warning("Caching has not been enabled, so there is nothing to disable.")
        self._step_cache_config = None

    @contextmanager
    def step_cache(self):
        """The denoising of one image (or of a batch denoised together): the cache hooks are placed for its steps."""
        if not self.is_cache_enabled:
            yield
            return
        language_model = self.model.language_model
        language_model.enable_cache(self._step_cache_config)
        try:
            yield
        finally:
            language_model.disable_cache()

    def step_cache_context(self, name: str):
        """diffusers' cache context of one denoising step; steps with different guidance branches (rows) use
        different names, so each keeps its own history."""
        if not self.is_cache_enabled:
            return nullcontext()
        return self.model.language_model.cache_context(name)
