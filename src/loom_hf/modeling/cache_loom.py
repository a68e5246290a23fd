"""The KV caches of an interleaved context: a growing one for building contexts, a preallocated one for compiled
text decoding."""

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import Cache
from transformers.utils import is_torchdynamo_compiling

__all__ = ["LoomCache", "LoomStaticCache", "POSITION_KEEPING_CACHES", "next_positions"]


class LoomCache(DynamicCache):
    """A `DynamicCache` that knows BAGEL's next RoPE position and the token ids it holds, and can be read without
    being written.

    * `next_position` (`[batch]` tensor): the RoPE position the next token will take. Positions do not follow the
      cache length, because a whole image block shares one position.
    * `token_ids` (`[batch, length]`): the ids of the cached positions (image blocks hold their placeholder ids), so
      that text decoding from a cache shows its logits processors the whole sequence.
    * `positions` (`[batch, length]`): the RoPE position of every cached token, so that [`crop`] knows where the
      counter stands after the tokens it keeps.
    * transformers' batch operations (`reorder_cache` for beam search, `batch_repeat_interleave`,
      `batch_select_indices`) and `crop` keep `next_position`, `token_ids` and `positions` in step with the tensors.
    * [`read_only`]: inside this context, attention reads the cached keys plus the query's own keys but stores
      nothing. The noisy latents of an image being generated attend to the context this way at every denoising step.
    * [`fork`]: an independent copy that shares the cached tensors (they are never modified in place), used for the
      guidance contexts that share a prefix; [`prefix`]: a copy of the first positions only.
    * [`stack`]: several single-row caches as the rows of one batch, left-padded to the longest.
    """

    def __init__(
        self,
        next_position: int | torch.Tensor = 0,
        token_ids: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.next_position = torch.as_tensor(next_position, dtype=torch.long).reshape(-1)
        self.token_ids = token_ids
        self.positions = positions
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

    def advance(self, position_ids: torch.LongTensor, input_ids: torch.LongTensor | None = None) -> None:
        """Record the positions (and ids) just written: the next token goes one past the largest of each row."""
        if self._read_only:
            return
        self.next_position = position_ids.amax(dim=-1) + 1
        self.positions = position_ids if self.positions is None else torch.cat([self.positions, position_ids], dim=-1)
        if input_ids is not None:
            self.token_ids = input_ids if self.token_ids is None else torch.cat([self.token_ids, input_ids], dim=-1)

    def crop(self, tokens_to_remove: int) -> None:
        """transformers' `crop` (a negative count removes that many tokens from the end); the counter goes back to
        one past the last kept token's position (0 when none is kept)."""
        super().crop(tokens_to_remove)
        if tokens_to_remove == 0:
            return
        kept = self.get_seq_length()
        if self.token_ids is not None:
            self.token_ids = self.token_ids[:, :kept]
        if self.positions is None:
            raise ValueError("This LoomCache does not record its tokens' positions, so it cannot be cropped.")
        self.positions = self.positions[:, :kept]
        self.next_position = self.positions[:, -1] + 1 if kept else torch.zeros_like(self.next_position)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        rows = self._rows()
        super().reorder_cache(beam_idx)
        self._per_row(rows, lambda value: value.index_select(0, beam_idx.to(value.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        rows = self._rows()
        super().batch_select_indices(indices)
        self._per_row(rows, lambda value: value[indices.to(value.device)])

    def batch_repeat_interleave(self, repeats: int) -> None:
        rows = self._rows()
        super().batch_repeat_interleave(repeats)
        self._per_row(rows, lambda value: value.repeat_interleave(repeats, dim=0))

    def _rows(self) -> int | None:
        """The cached tensors' batch size (`None` while nothing is cached)."""
        return self.layers[0].keys.shape[0] if self.get_seq_length() else None

    def _per_row(self, rows: int | None, change: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """`change` applied to the records that hold one entry per row of the `rows` the tensors had (a one-entry
        counter of a several-row cache is shared by all its rows and stays as it is)."""
        for name in ("next_position", "token_ids", "positions"):
            value = getattr(self, name)
            if value is not None and rows is not None and value.shape[0] == rows:
                setattr(self, name, change(value))

    def fork(self) -> "LoomCache":
        """A copy that can grow independently; cached tensors are shared, not duplicated."""
        forked = LoomCache(next_position=self.next_position.clone(), token_ids=self.token_ids, positions=self.positions)
        forked.layers = [copy.copy(layer) for layer in self.layers]
        return forked

    def prefix(self, length: int, next_position: torch.Tensor) -> "LoomCache":
        """A copy holding only the first `length` cached positions (views of the cached tensors), after which the
        next token takes `next_position`: a context that branched off this one before its last pieces were written
        together with the rest."""
        prefix = self.fork()
        DynamicCache.crop(prefix, length - self.get_seq_length())
        prefix.next_position = torch.as_tensor(next_position, dtype=torch.long).reshape(-1).clone()
        for name in ("token_ids", "positions"):
            if getattr(self, name) is not None:
                setattr(prefix, name, getattr(self, name)[:, :length])
        return prefix

    @classmethod
    def stack(cls, caches: Sequence["LoomCache"], pad_token_id: int = 0) -> tuple["LoomCache", torch.Tensor]:
        """The single-row `caches` as one batch, left-padded to the longest; returns it with its `[batch, length]`
        padding mask (1 for cached tokens, 0 for padding).

        Left padding keeps every row's next tokens at the end, so one forward pass serves contexts of any lengths;
        padded keys are masked out and do not move RoPE positions (each row keeps its own `next_position`).
        """
        for index, cache in enumerate(caches):
            if cache.next_position.numel() > 1 or (cache._rows() or 1) > 1:
                raise ValueError(f"`caches[{index}]` holds several rows; `LoomCache.stack` takes single-row caches.")
        lengths = [cache.get_seq_length() for cache in caches]
        longest = max(lengths)
        reference = next((cache for cache in caches if cache.get_seq_length() > 0), None)
        device = reference.layers[0].keys.device if reference is not None else caches[0].next_position.device
        mask = torch.zeros(len(caches), longest, dtype=torch.long, device=device)
        for row, length in enumerate(lengths):
            mask[row, longest - length :] = 1
        ids = torch.full((len(caches), longest), pad_token_id, dtype=torch.long, device=device)
        for row, (cache, length) in enumerate(zip(caches, lengths)):
            if length and cache.token_ids is not None and cache.token_ids.shape[-1] == length:
                ids[row, longest - length :] = cache.token_ids[0].to(device)
        positions = None
        known = [
            not length or (c.positions is not None and c.positions.shape[-1] == length)
            for c, length in zip(caches, lengths)
        ]
        if all(known):
            positions = torch.zeros(len(caches), longest, dtype=torch.long, device=device)
            for row, (cache, length) in enumerate(zip(caches, lengths)):
                if length:
                    positions[row, longest - length :] = cache.positions[0].to(device)
        next_position = torch.cat([cache.next_position.to(device) for cache in caches])
        stacked = cls(next_position=next_position, token_ids=ids, positions=positions)
        if reference is None:
            return stacked, mask
        for layer_idx, layer in enumerate(reference.layers):
            keys, values = [], []
            for cache, length in zip(caches, lengths):
                if length:
                    row_keys, row_values = cache.layers[layer_idx].keys, cache.layers[layer_idx].values
                else:
                    row_keys, row_values = layer.keys[:1, :, :0], layer.values[:1, :, :0]
                padding = (0, 0, longest - length, 0)
                keys.append(torch.nn.functional.pad(row_keys, padding))
                values.append(torch.nn.functional.pad(row_values, padding))
            stacked.update(torch.cat(keys), torch.cat(values), layer_idx)
        return stacked, mask


class LoomStaticCache(StaticCache):
    """transformers' `StaticCache` (preallocated keys and values, written in place) that also knows BAGEL's next RoPE
    position, so that image blocks may be written into it.

    A static cache is what lets `generate()` compile its decoding step (on CUDA it does so by itself, with CUDA
    graphs): set `generation_config.cache_implementation = "static"` on the model. [`from_cache`] copies a built
    context into one; unlike [`LoomCache`] it does not record token ids (`generate()` holds them) and cannot be read
    without being written.
    """

    def __init__(self, config, max_cache_len: int, next_position: int | torch.Tensor = 0, **kwargs):
        super().__init__(config=config, max_cache_len=max_cache_len, **kwargs)
        self._set_next_position(torch.as_tensor(next_position, dtype=torch.long).reshape(-1).clone())

    @classmethod
    def from_cache(cls, cache: LoomCache, config, max_cache_len: int) -> "LoomStaticCache":
        """A static cache of `max_cache_len` positions holding `cache`'s keys, values and next position."""
        length = cache.get_seq_length()
        if max_cache_len < length:
            raise ValueError(f"`max_cache_len` ({max_cache_len}) is shorter than the cached context ({length}).")
        static = cls(config, max_cache_len, next_position=cache.next_position)
        for layer_idx, layer in enumerate(cache.layers):
            if layer.get_seq_length():
                static.update(layer.keys, layer.values, layer_idx)
        return static

    def advance(self, position_ids: torch.LongTensor, input_ids: torch.LongTensor | None = None) -> None:
        """Record the positions just written (in place, so that a compiled step keeps the tensor's address)."""
        next_position = position_ids.amax(dim=-1) + 1
        if next_position.shape != self.next_position.shape:  # the first write sets the batch size
            self._set_next_position(next_position.to(self.next_position.device))
        else:
            self.next_position.copy_(next_position)

    def _set_next_position(self, next_position: torch.LongTensor) -> None:
        """Hold a new counter tensor, marked (as transformers marks its cache tensors) as an input whose address stays
        fixed: a compiled step writes it in place, and CUDA graphs skip a step that writes any other input."""
        self.next_position = next_position
        if not is_torchdynamo_compiling():
            torch._dynamo.mark_static_address(self.next_position)


# The caches that record BAGEL's position counter (a whole image block shares one RoPE position).
POSITION_KEEPING_CACHES = (LoomCache, LoomStaticCache)


def next_positions(cache: Cache | None) -> torch.LongTensor:
    """The RoPE position the next token takes after `cache` (`[batch]` or `[1]`, integer).

    A [`LoomCache`] or [`LoomStaticCache`] knows it (a whole image block shares one position); any other cache knows
    only its length, which is the next position when it holds text only. No cache: 0.
    """
    if isinstance(cache, POSITION_KEEPING_CACHES):
        return cache.next_position
    return torch.tensor([cache.get_seq_length() if cache is not None else 0])
