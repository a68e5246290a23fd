"""Text decoding on transformers' generation stack: the generation config of a call, seeded sampling, interruption
and progress.

The pipeline decodes every text (plans, thoughts, answers) with `model.generate()` over a batch of cached contexts;
these pieces adapt a pipeline call to it.
"""

import copy
from collections.abc import Callable, Sequence

import torch
from transformers import GenerationConfig
from transformers.generation import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.streamers import BaseStreamer

__all__ = ["text_generation_config", "SeededSampling", "sampling_processors", "InterruptCriteria", "ProgressStreamer"]


def text_generation_config(
    defaults: GenerationConfig,
    *,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float | None,
    min_new_tokens: int | None,
    eos_token_id: int | list[int] | None,
) -> GenerationConfig:
    """The model's generation config with a pipeline call's decoding options on top (a deep copy, as `generate()`
    makes one: attributes no dict carries, such as a compile config's, are kept)."""
    config = copy.deepcopy(defaults)
    config.update(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_k=top_k if do_sample else None,
        top_p=top_p if do_sample else None,
        repetition_penalty=repetition_penalty,
        min_new_tokens=min_new_tokens,
        max_length=None,
    )
    if eos_token_id is not None:
        config.eos_token_id = eos_token_id
    return config


class SeededSampling(LogitsProcessor):
    """Draws each row's next token from its own `torch.Generator` and leaves only that token possible.

    transformers samples with the global RNG; a pipeline call takes one generator per output (diffusers' rule), so the
    draw happens here, after the warpers, and the greedy step that follows picks the drawn token.
    """

    def __init__(self, generators: Sequence[torch.Generator | None]):
        self.generators = list(generators)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probabilities = scores.float().softmax(-1).cpu()
        drawn = [
            torch.multinomial(probabilities[row], 1, generator=self.generators[row]) for row in range(scores.shape[0])
        ]
        tokens = torch.cat(drawn).to(scores.device)
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter_(1, tokens[:, None], 0.0)


def sampling_processors(config: GenerationConfig, generators: Sequence[torch.Generator | None]) -> LogitsProcessorList:
    """transformers' warpers for `config` (temperature, top-k, top-p, in its order), then the seeded draw."""
    processors = LogitsProcessorList()
    if config.temperature is not None and config.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k is not None and config.top_k != 0:
        processors.append(TopKLogitsWarper(top_k=config.top_k))
    if config.top_p is not None and config.top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p=config.top_p))
    processors.append(SeededSampling(generators))
    return processors


class InterruptCriteria(StoppingCriteria):
    """Stops decoding once `is_interrupted()` is true (the pipeline's `interrupt`, set from a callback)."""

    def __init__(self, is_interrupted: Callable[[], bool]):
        self.is_interrupted = is_interrupted

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.is_interrupted(), dtype=torch.bool, device=input_ids.device)


class ProgressStreamer(BaseStreamer):
    """Advances a progress bar by one per decoded token (`generate()` first puts the prompt, which is skipped)."""

    def __init__(self, progress_bar):
        self.progress_bar = progress_bar
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.progress_bar.update()

    def end(self) -> None:
        self.progress_bar.close()
