"""The KV cache of an interleaved context."""

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import DynamicCache

__all__ = ["LoomCache"]


class LoomCache(DynamicCache):
    """A `DynamicCache` that knows BAGEL's next RoPE position and can be read without being written.

    * `next_position` (`[batch]` tensor): the RoPE position the next token will take. Positions do not follow the
      cache length, because a whole image block shares one position.
    * [`read_only`]: inside this context, attention reads the cached keys plus the query's own keys but stores
      nothing. The noisy latents of an image being generated attend to the context this way at every denoising step.
    * [`fork`]: an independent copy that shares the cached tensors (they are never modified in place), used for the
      guidance contexts that share a prefix.
    """

    def __init__(self, next_position: int | torch.Tensor = 0, **kwargs):
        super().__init__(**kwargs)
        self.next_position = torch.as_tensor(next_position, dtype=torch.long).reshape(-1)
        self._read_only = False

    @property
    def is_read_only(self) -> bool:
        return self._read_only

    @contextmanager
    def read_only(self) -> Iterator["LoomCache"]:
        """Attend to the cache without appending to it (nor advancing `next_position`)."""
        previous, self._read_only = self._read_only, True
        try:
            yield self
        finally:
            self._read_only = previous

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if not self._read_only:
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if layer_idx >= len(self.layers) or self.layers[layer_idx].get_seq_length() == 0:
            return key_states, value_states
        layer = self.layers[layer_idx]
        return torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2)

    def advance(self, position_ids: torch.LongTensor) -> None:
        """Record the positions just written: the next token goes one past the largest of each row."""
        if not self._read_only:
            self.next_position = position_ids.amax(dim=-1).to("cpu") + 1

    def fork(self) -> "LoomCache":
        """A copy that can grow independently; cached tensors are shared, not duplicated."""
        forked = LoomCache(next_position=self.next_position.clone())
        forked.layers = [copy.copy(layer) for layer in self.layers]
        return forked
