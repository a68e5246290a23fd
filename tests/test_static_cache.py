"""Text decoding from a static cache: the same tokens as from the growing cache, one compiled graph per decoded
token that writes only static inputs (as CUDA graphs need), no host synchronisation in a decoding step, and the
pipeline's decoding through it."""

import gc
import weakref

import pytest
import torch
from functorch.compile import make_boxed_func
from PIL import Image
from torch._dynamo.backends.common import aot_autograd
from torch._guards import TracingContext
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import CompileConfig, StaticCache

from loom_hf import LoomCache, LoomStaticCache
from loom_hf.pipelines import pipeline_loom

RED = Image.new("RGB", (64, 64), (200, 30, 30))
TALL = Image.new("RGB", (32, 64), (10, 160, 40))


def prompts(processor) -> dict:
    return {
        "text": processor(text="Draw a red house"),
        "image": processor(inputs=[RED, "What is drawn here?"]),
    }


@pytest.mark.parametrize("prompt", ["text", "image"])
@torch.no_grad()
def test_generate_with_a_static_cache_equals_the_dynamic_cache(tiny_pipe, prompt):
    model = tiny_pipe.model
    inputs = prompts(tiny_pipe.processor)[prompt]
    options = {"max_new_tokens": 10, "min_new_tokens": 10, "do_sample": False}
    dynamic = model.generate(**inputs, **options)
    static = model.generate(**inputs, **options, cache_implementation="static", return_dict_in_generate=True)
    assert isinstance(static.past_key_values, LoomStaticCache)
    assert static.sequences.tolist() == dynamic.tolist()
    model.generation_config.cache_implementation = "static"  # the model's default, as a user sets it
    assert model.generate(**inputs, **options).tolist() == dynamic.tolist()


@torch.no_grad()
def test_compiled_decoding_step_is_one_graph_and_exact(tiny_pipe):
    """`fullgraph=True` fails on any graph break (a Python branch on a tensor's value is one), so the decoding step
    compiles into one graph, as CUDA graphs need; `_compile_all_devices` is transformers' switch for compiling on
    CPU in tests."""
    model = tiny_pipe.model
    options = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False}
    compile_config = CompileConfig(fullgraph=True, mode="default")
    compile_config._compile_all_devices = True
    torch._dynamo.reset()
    try:
        for inputs in prompts(tiny_pipe.processor).values():
            expected = model.generate(**inputs, **options)
            compiled = model.generate(**inputs, **options, cache_implementation="static", compile_config=compile_config)
            assert compiled.tolist() == expected.tolist()
    finally:
        torch._dynamo.reset()


def recording_written_inputs() -> tuple[object, list[list[int]]]:
    """A `torch.compile` backend, and the list it fills: for each compiled graph, the inputs the graph writes in place
    that are not static inputs (fixed addresses). CUDA graphs skip any graph that writes one (inductor's "mutated
    inputs"). A closure, not an object's state: `CompileConfig` deep-copies its backend."""
    graphs: list[list[int]] = []

    def inspect(graph_module, example_inputs):
        metadata = TracingContext.get().fw_metadata
        static = set(metadata.static_input_indices)
        written = [index for index, info in enumerate(metadata.input_info) if info.mutates_data]
        graphs.append([index for index in written if index not in static])
        return make_boxed_func(graph_module.forward)

    return aot_autograd(fw_compiler=inspect), graphs


@pytest.mark.parametrize("caller", ["generate", "pipeline"])
@torch.no_grad()
def test_the_compiled_decoding_step_writes_only_static_inputs(tiny_pipe, caller):
    """The step writes the cache's keys, values and position counter in place; all must be marked static (as
    transformers marks its own cache tensors), or CUDA graphs (`generate()`'s default on CUDA) skip the step."""
    backend, graphs = recording_written_inputs()
    compile_config = CompileConfig(fullgraph=True, backend=backend, mode=None)
    compile_config._compile_all_devices = True
    torch._dynamo.reset()
    try:
        if caller == "generate":
            tiny_pipe.model.generate(
                **prompts(tiny_pipe.processor)["image"],
                max_new_tokens=3,
                min_new_tokens=3,
                do_sample=False,
                cache_implementation="static",
                compile_config=compile_config,
            )
        else:
            config = tiny_pipe.model.generation_config
            config.cache_implementation, config.compile_config = "static", compile_config
            tiny_pipe([RED, "What is drawn here?"], task="text", max_new_tokens=3, min_new_tokens=3)
    finally:
        torch._dynamo.reset()
    assert graphs == [[]]  # one graph, writing static inputs only


class HostReads(TorchDispatchMode):
    """Counts the operations that make the host wait for the device: reading a value, `nonzero`, boolean indexing."""

    SYNCING = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::item"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        boolean_index = name in ("aten::index.Tensor", "aten::index_put_") and any(
            index is not None and index.dtype == torch.bool for index in args[1]
        )
        self.count += name in self.SYNCING or boolean_index
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("cache_type", [LoomCache, LoomStaticCache])
@torch.no_grad()
def test_a_decoding_step_never_waits_for_the_device(tiny_pipe, cache_type):
    """One decoded token of an image prompt (with the processor's token types, as `generate()` passes them)."""
    model = tiny_pipe.model
    inputs = prompts(tiny_pipe.processor)["image"]
    cache = LoomCache()
    model(**inputs, past_key_values=cache, use_cache=True)
    if cache_type is LoomStaticCache:
        cache = LoomStaticCache.from_cache(cache, model.config.text_config, max_cache_len=cache.get_seq_length() + 4)
    step = {
        "input_ids": torch.tensor([[7]]),
        "position_ids": cache.next_position[:, None].clone(),
        "mm_token_type_ids": torch.zeros(1, 1, dtype=torch.long),
    }
    with HostReads() as reads:
        model(**step, past_key_values=cache, use_cache=True)
    assert reads.count == 0


def test_from_cache_refuses_a_length_shorter_than_the_context(tiny_pipe):
    with torch.no_grad():
        cache = LoomCache()
        tiny_pipe.model(**tiny_pipe.processor(text="Draw a red house"), past_key_values=cache, use_cache=True)
    with pytest.raises(ValueError, match="`max_cache_len` \\(3\\) is shorter than the cached context"):
        LoomStaticCache.from_cache(cache, tiny_pipe.model.config.text_config, max_cache_len=3)


def test_a_plain_static_cache_refuses_image_blocks(tiny_pipe):
    """transformers' own StaticCache does not keep BAGEL's position counter: an image prompt is refused."""
    model = tiny_pipe.model
    cache = StaticCache(config=model.config.text_config, max_cache_len=128)
    with pytest.raises(ValueError, match="cannot be written into a StaticCache"):
        model.generate(**prompts(tiny_pipe.processor)["image"], past_key_values=cache, max_new_tokens=2)


@torch.no_grad()
def test_pipeline_decodes_from_a_static_cache_when_the_config_asks(tiny_pipe, monkeypatch):
    requests = [[RED, "What is drawn here?"], ["Describe a tree."], [RED, TALL, "Which image is taller?"]]
    variants = [
        {"task": "text", "max_new_tokens": 8},
        {"task": "text", "max_new_tokens": 8, "do_sample": True, "top_k": 5},
        {"task": "text", "think": True, "max_new_tokens": 6},
    ]

    def run(kwargs):
        generators = [torch.Generator().manual_seed(index) for index in range(len(requests))]
        output = tiny_pipe(requests, generator=generators, **kwargs)
        return [[segment.token_ids for segment in request.segments] for request in output.requests]

    expected = [run(kwargs) for kwargs in variants]
    lengths, from_cache = [], LoomStaticCache.from_cache

    def recording_from_cache(cache, config, max_cache_len):
        lengths.append((cache.get_seq_length(), max_cache_len))
        return from_cache(cache, config, max_cache_len)

    monkeypatch.setattr(LoomStaticCache, "from_cache", recording_from_cache)
    tiny_pipe.model.generation_config.cache_implementation = "static"
    assert [run(kwargs) for kwargs in variants] == expected
    assert len(lengths) == len(variants)  # each call decodes all its rows in one `generate()`
    bucket = pipeline_loom.STATIC_CACHE_BUCKET
    for context, length in lengths:  # room for the start token and 6 or 8 new tokens, rounded up to the bucket
        assert length % bucket == 0 and length >= context + 1 + 6 and length - bucket < context + 1 + 8


def test_static_decoding_holds_the_stacked_context_once(tiny_pipe, monkeypatch):
    """Once the stacked context is copied into the static cache, only the copy stays alive while text decodes (and the
    requests' own contexts, which the call keeps)."""
    copied, alive_during_decoding = [], []
    from_cache, generate = LoomStaticCache.from_cache, tiny_pipe.model.generate

    def recording_from_cache(cache, config, max_cache_len):
        copied.append(weakref.ref(cache))
        return from_cache(cache, config, max_cache_len)

    def checking_generate(*args, **kwargs):
        gc.collect()
        alive_during_decoding.append(copied[-1]() is not None)
        return generate(*args, **kwargs)

    monkeypatch.setattr(LoomStaticCache, "from_cache", recording_from_cache)
    monkeypatch.setattr(tiny_pipe.model, "generate", checking_generate)
    tiny_pipe.model.generation_config.cache_implementation = "static"
    tiny_pipe([[RED, "What is drawn here?"], ["Describe a tree."]], task="text", max_new_tokens=4)
    assert alive_during_decoding == [False]


@torch.no_grad()
def test_a_call_can_opt_out_of_the_models_static_cache(tiny_pipe):
    """With the model's config asking for a static cache, `cache_implementation=None` or `"dynamic"` in a call wins
    (transformers' precedence) and decodes from a `LoomCache`, image prompts included."""
    model = tiny_pipe.model
    inputs = prompts(tiny_pipe.processor)["image"]
    options = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}
    expected = model.generate(**inputs, **options).tolist()
    model.generation_config.cache_implementation = "static"
    for opt_out in (None, "dynamic"):
        output = model.generate(**inputs, **options, cache_implementation=opt_out, return_dict_in_generate=True)
        assert isinstance(output.past_key_values, LoomCache)
        assert output.sequences.tolist() == expected


@torch.no_grad()
def test_latent_positions_given_as_embeddings_still_go_to_the_generation_expert(tiny_pipe):
    """Latents embedded by the caller (`inputs_embeds`, no `latents`) route as the model's own latent path does."""
    from loom_hf.modeling.packing import TokenType

    model, processor = tiny_pipe.model, tiny_pipe.processor
    ids, types = processor.image_block(4, TokenType.LATENT)
    ids, types = torch.tensor([ids]), torch.tensor([types])
    latents = torch.randn(4, model.model.vae2llm.in_features, generator=torch.Generator().manual_seed(0))
    grid, timesteps = torch.tensor([[2, 2]]), torch.tensor([0.5])
    expected = model(
        input_ids=ids, mm_token_type_ids=types, latents=latents, latent_grid_hw=grid, timesteps=timesteps
    ).last_hidden_state
    embeds = model.get_input_embeddings()(ids).clone()
    embeds[types == TokenType.LATENT] = model.model.get_latent_embeddings(latents, grid, timesteps)
    given = model(
        inputs_embeds=embeds,
        mm_token_type_ids=types,
        position_ids=torch.zeros_like(ids),
        block_ids=torch.zeros_like(ids),
    ).last_hidden_state
    torch.testing.assert_close(given, expected, rtol=0, atol=0)


def test_flash_attention_decides_a_decoded_tokens_causality_without_the_device():
    """Under flash attention a one-token query is causal (it sees every earlier key): decided from its shape."""
    from loom_hf.modeling.modeling_loom import LoomTextModel

    with HostReads() as reads:
        assert LoomTextModel._flash_is_causal(torch.zeros(2, 1, dtype=torch.long), None, None)
    assert reads.count == 0
