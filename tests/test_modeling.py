"""The network: MoT routing, KV cache semantics, attention backends, generate(), Auto classes, serialization."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers.hooks import HookRegistry, ModelHook
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoModelForMultimodalLM, AutoProcessor, DynamicCache
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP, Qwen2RMSNorm

from loom_hf import DEFAULT_MODEL, LoomCache, LoomConfig, LoomForInterleavedGeneration, LoomProcessor, TokenType
from loom_hf.modeling import LoomTextConfig
from loom_hf.modeling.modeling_loom import ExpertRoute, LoomMLP, LoomRMSNorm
from loom_hf.tiny import tiny_config, tiny_tokenizer

from .conftest import FIXTURE


@pytest.fixture
def model_and_inputs(tiny_pipe):
    """A tiny model and a sequence: text | ViT block of 4 patches | latent block of 4 tokens | text."""
    processor = tiny_pipe.processor
    torch.manual_seed(1)
    text_1, text_2 = processor.text_block("Draw a red house"), processor.text_block("roof")
    vit_ids, vit_types = processor.image_block(4, TokenType.VIT)
    latent_ids, latent_types = processor.image_block(4, TokenType.LATENT)
    ids = text_1 + vit_ids + latent_ids + text_2
    types = [0] * len(text_1) + vit_types + latent_types + [0] * len(text_2)
    inputs = {
        "input_ids": torch.tensor([ids]),
        "mm_token_type_ids": torch.tensor([types]),
        "pixel_values": torch.randn(4, 14 * 14 * 3),
        "image_grid_hw": torch.tensor([[2, 2]]),
        "latents": torch.randn(4, 64),
        "latent_grid_hw": torch.tensor([[2, 2]]),
        "timesteps": torch.tensor([0.0]),
    }
    spans = {
        "text_1": slice(0, len(text_1)),
        "vit": slice(len(text_1), len(text_1) + 6),
        "latent": slice(len(text_1) + 6, len(text_1) + 12),
        "text_2": slice(len(text_1) + 12, len(ids)),
    }
    return tiny_pipe.model, inputs, spans


def split_inputs(inputs, spans):
    """The same sequence as four block-by-block calls."""
    ids, types = inputs["input_ids"], inputs["mm_token_type_ids"]
    pieces = []
    for name, span in spans.items():
        piece = {"input_ids": ids[:, span], "mm_token_type_ids": types[:, span]}
        if name == "vit":
            piece.update(pixel_values=inputs["pixel_values"], image_grid_hw=inputs["image_grid_hw"])
        if name == "latent":
            piece.update(
                latents=inputs["latents"], latent_grid_hw=inputs["latent_grid_hw"], timesteps=inputs["timesteps"]
            )
        pieces.append(piece)
    return pieces


@torch.no_grad()
def test_block_by_block_prefill_equals_one_forward(model_and_inputs):
    model, inputs, spans = model_and_inputs
    full = model(**inputs, output_hidden_states=True)
    cache = LoomCache()
    hidden = [model(**piece, past_key_values=cache).last_hidden_state for piece in split_inputs(inputs, spans)]
    torch.testing.assert_close(torch.cat(hidden, dim=1), full.last_hidden_state, atol=1e-5, rtol=1e-5)
    assert cache.get_seq_length() == inputs["input_ids"].shape[1]
    # Positions: text_1 advances per token, each block takes one position, text_2 continues.
    n = spans["text_1"].stop
    assert cache.next_position.item() == n + 2 + (spans["text_2"].stop - spans["text_2"].start)
    assert len(full.hidden_states) == model.config.text_config.num_hidden_layers + 1


@pytest.mark.parametrize("prefill", ["text", "image"])
@pytest.mark.parametrize("cache_class", [LoomCache, DynamicCache])
@torch.no_grad()
def test_text_continues_the_positions_of_any_cache(tiny_pipe, cache_class, prefill):
    """A text turn after a filled cache, a plain `DynamicCache` included, takes the positions after the cached
    tokens (its logits are those of one forward over both turns); positions reach the decoder as integers, without a
    cache too. After an image block (one position for the whole block) only a `LoomCache` knows where the counter
    stands: any other cache is refused, nothing written, rather than giving the text after it wrong positions."""
    model, processor = tiny_pipe.model, tiny_pipe.processor
    first, second = processor.text_block("Draw a red house"), processor.text_block("Add the roof")
    torch.manual_seed(0)
    block, block_types = processor.image_block(4, TokenType.VIT) if prefill == "image" else ([], [])
    images = {"pixel_values": torch.randn(4, 14 * 14 * 3), "image_grid_hw": torch.tensor([[2, 2]])} if block else {}
    prefix = {
        "input_ids": torch.tensor([first + block]),
        "mm_token_type_ids": torch.tensor([[0] * len(first) + block_types]),
        **images,
    }
    next_position = len(first) + (1 if block else 0)  # the whole block takes one position
    positions = []
    model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: positions.append(kwargs["position_ids"]), with_kwargs=True
    )
    whole = model(
        input_ids=torch.tensor([first + block + second]),
        mm_token_type_ids=torch.tensor([[0] * len(first) + block_types + [0] * len(second)]),
        **images,
    ).logits[:, -len(second) :]
    cache = cache_class(config=model.config.text_config) if cache_class is DynamicCache else cache_class()
    if prefill == "image" and cache_class is DynamicCache:
        with pytest.raises(
            ValueError, match=r"cannot be written into a DynamicCache.*Pass `past_key_values=LoomCache\(\)`"
        ):
            model(**prefix, past_key_values=cache)
        assert cache.get_seq_length() == 0
        return
    model(**prefix, past_key_values=cache)
    continued = model(input_ids=torch.tensor([second]), past_key_values=cache).logits
    torch.testing.assert_close(continued, whole, atol=1e-5, rtol=1e-5)
    assert positions[2].tolist() == [list(range(next_position, next_position + len(second)))]
    assert all(not position.is_floating_point() for position in positions)


@torch.no_grad()
def test_read_only_cache_attends_without_writing(model_and_inputs):
    model, inputs, spans = model_and_inputs
    prefix, query = split_inputs(inputs, spans)[:2], split_inputs(inputs, spans)[2]
    cache = LoomCache()
    for piece in prefix:
        model(**piece, past_key_values=cache)
    length, position = cache.get_seq_length(), cache.next_position.clone()
    written = cache.fork()
    with cache.read_only():
        read = model(**query, past_key_values=cache).velocity
    assert cache.get_seq_length() == length and torch.equal(cache.next_position, position)
    torch.testing.assert_close(read, model(**query, past_key_values=written).velocity)
    assert written.get_seq_length() == length + 6 and cache.get_seq_length() == length


@torch.no_grad()
def test_forks_grow_independently(model_and_inputs):
    model, inputs, spans = model_and_inputs
    first = split_inputs(inputs, spans)[0]
    cache = LoomCache()
    model(**first, past_key_values=cache)
    fork = cache.fork()
    model(**first, past_key_values=fork)
    assert fork.get_seq_length() == 2 * cache.get_seq_length()
    assert fork.next_position.item() == 2 * cache.next_position.item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_is_qwen2s_bit_for_bit(dtype):
    """The one-call norm keeps Qwen2's weight name and arithmetic: same state dict, identical outputs on the CPU."""
    torch.manual_seed(0)
    qwen, lean = Qwen2RMSNorm(32, eps=1e-6), LoomRMSNorm(32, eps=1e-6)
    qwen.weight.data.normal_()
    lean.load_state_dict(qwen.state_dict())
    qwen, lean = qwen.to(dtype), lean.to(dtype)
    hidden = (torch.randn(3, 5, 8, 32) * 7).to(dtype)
    assert lean.state_dict().keys() == qwen.state_dict().keys()
    assert lean(hidden).dtype == qwen(hidden).dtype
    assert torch.equal(lean(hidden), qwen(hidden))


@pytest.mark.parametrize("hidden_act", ["silu", "gelu"])
def test_mlp_is_qwen2s_bit_for_bit(hidden_act):
    """Outside autograd the MLP writes its activation and product in place: same outputs as Qwen2's, its input and
    projections' weights untouched; with autograd on it is Qwen2's own forward, so gradients flow as before."""
    torch.manual_seed(0)
    config = LoomTextConfig(hidden_size=32, intermediate_size=64, hidden_act=hidden_act)
    qwen, lean = Qwen2MLP(config), LoomMLP(config)
    lean.load_state_dict(qwen.state_dict())
    hidden = torch.randn(3, 5, 32)
    kept = hidden.clone()
    with torch.no_grad():
        assert torch.equal(lean(hidden), qwen(hidden))
    assert torch.equal(hidden, kept)
    hidden.requires_grad_(True)
    lean(hidden).square().sum().backward()
    expected = hidden.grad.clone()
    hidden.grad = None
    qwen(hidden).square().sum().backward()
    assert torch.equal(hidden.grad, expected)
    assert torch.equal(lean.gate_proj.weight.grad, qwen.gate_proj.weight.grad)


@pytest.mark.parametrize("watcher", ["gate_proj", "act_fn", "global", "diffusers"])
def test_mlp_leaves_watched_outputs_alone(watcher):
    """A hook that keeps the gate projection's or the activation's output still sees it, not the product: a torch
    forward hook (on the module or global), or a diffusers hook (TaylorSeer given `gate_proj` as an identifier keeps
    the outputs it extrapolates from); and a hooked activation is called."""
    torch.manual_seed(0)
    mlp = LoomMLP(LoomTextConfig(hidden_size=32, intermediate_size=64, hidden_act="silu"))
    watched = mlp.act_fn if watcher == "act_fn" else mlp.gate_proj
    kept = []

    def keep(module, args, output):
        if module is watched:
            kept.append(output)

    class Keep(ModelHook):
        def post_forward(self, module, output):
            kept.append(output)
            return output

    if watcher == "global":
        handle = torch.nn.modules.module.register_module_forward_hook(keep)
    elif watcher == "diffusers":
        HookRegistry.check_if_exists_or_initialize(watched).register_hook(Keep(), "keep")
    else:
        watched.register_forward_hook(keep)
    hidden = torch.randn(2, 3, 32)
    try:
        with torch.no_grad():
            mlp(hidden)
            expected = mlp.gate_proj(hidden)
    finally:
        if watcher == "global":
            handle.remove()
    if watcher == "act_fn":
        expected = torch.nn.functional.silu(expected)
    assert torch.equal(kept[0], expected)


@torch.no_grad()
def test_experts_route_by_token_type(model_and_inputs):
    """Generation-expert weights act on latent tokens only; understanding weights on text and ViT tokens."""
    model, inputs, spans = model_and_inputs
    before = model(**inputs)
    layer = model.model.language_model.layers[-1]
    original = layer.mlp_moe_gen.down_proj.weight.clone()
    layer.mlp_moe_gen.down_proj.weight.add_(1.0)
    after = model(**inputs)
    changed = (after.last_hidden_state - before.last_hidden_state).abs().amax(-1)[0]
    latent_tokens = torch.zeros_like(changed, dtype=torch.bool)
    latent_tokens[spans["latent"].start + 1 : spans["latent"].stop - 1] = True
    assert (changed[latent_tokens] > 1e-3).all()
    # In the last layer nothing reads the latents' MLP output again: every other token is unchanged.
    assert (changed[~latent_tokens] == 0).all()

    layer.mlp_moe_gen.down_proj.weight.copy_(original)
    layer.mlp.down_proj.weight.add_(1.0)
    changed = (model(**inputs).last_hidden_state - before.last_hidden_state).abs().amax(-1)[0]
    assert (changed[~latent_tokens] > 1e-3).all() and (changed[latent_tokens] == 0).all()


def test_a_latent_block_at_the_same_place_in_every_row_is_routed_by_slices(model_and_inputs):
    """A denoising step's rows share one latent span: the experts' parts are slices, the same tokens the indexed
    route gathers, and joining them gives back the hidden states exactly."""
    _, inputs, spans = model_and_inputs
    gen_mask = (inputs["mm_token_type_ids"] == TokenType.LATENT).repeat(2, 1)
    span = ExpertRoute.from_gen_mask(gen_mask)
    indexed = ExpertRoute.from_gen_mask(gen_mask, always_split=True)
    assert span.gen_span == (spans["latent"].start + 1, spans["latent"].stop - 1) and span.gen_index is None
    assert indexed.gen_span is None and indexed.gen_index is not None

    hidden = torch.randn(*gen_mask.shape, 8)
    (span_und, span_gen), (index_und, index_gen) = span.split(hidden), indexed.split(hidden)
    assert torch.equal(span_und.flatten(0, 1), index_und) and torch.equal(span_gen.flatten(0, 1), index_gen)
    for route in (span, indexed):
        assert torch.equal(route.join(route.split(hidden), hidden.shape[:2]), hidden)

    shifted = torch.cat([gen_mask[:1], gen_mask[:1].roll(1, dims=1)])  # the rows place their blocks differently
    two_blocks = gen_mask[:1] | gen_mask[:1].roll(-5, dims=1)  # one row, two latent runs (4 tokens, a gap)
    assert ExpertRoute.from_gen_mask(shifted).gen_span is None
    assert ExpertRoute.from_gen_mask(two_blocks).gen_span is None


def test_training_routes_like_inference_and_keeps_both_experts_in_the_graph(model_and_inputs, tiny_pipe):
    """Training splits tokens between the experts even when one would take all (data-parallel training needs both
    in every graph); the routed result equals inference's."""
    model, inputs, _ = model_and_inputs
    with torch.no_grad():
        reference = model(**inputs).last_hidden_state
    model.train()
    try:
        torch.testing.assert_close(model(**inputs).last_hidden_state, reference, rtol=0, atol=0)
        text = tiny_pipe.processor.text_block("Draw a red house")
        model(
            input_ids=torch.tensor([text]), mm_token_type_ids=torch.zeros(1, len(text), dtype=torch.long)
        ).logits.sum().backward()
    finally:
        model.eval()
    layer = model.model.language_model.layers[0]
    assert layer.mlp.down_proj.weight.grad.abs().sum() > 0
    assert layer.mlp_moe_gen.down_proj.weight.grad is not None and not layer.mlp_moe_gen.down_proj.weight.grad.any()
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("implementation", ["eager", pytest.param("flex_attention", marks=pytest.mark.slow)])
@torch.no_grad()
def test_attention_backends_agree(model_and_inputs, implementation):
    model, inputs, _ = model_and_inputs
    reference = model(**inputs)
    model.set_attn_implementation(implementation)
    # transformers switches only models whose attention goes through `ALL_ATTENTION_FUNCTIONS.get_interface(`,
    # and otherwise just warns: the decoder must really run the requested implementation.
    assert model.model.language_model.config._attn_implementation == implementation
    output = model(**inputs)
    torch.testing.assert_close(output.last_hidden_state, reference.last_hidden_state, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(output.velocity, reference.velocity, atol=1e-5, rtol=1e-4)


def test_flash_attention_rejects_mixed_training_sequences(model_and_inputs):
    """Flash attention can only run all-text or single-block queries; anything else is refused clearly."""
    from loom_hf.modeling.modeling_loom import LoomTextModel

    assert LoomTextModel._flash_is_causal(None, None, None) is True
    assert LoomTextModel._flash_is_causal(torch.zeros(1, 4, dtype=torch.long), None, None) is False
    with pytest.raises(ValueError, match="exactly one image block"):
        LoomTextModel._flash_is_causal(torch.tensor([[-1, 0, 0]]), None, None)
    with pytest.raises(ValueError, match="training"):
        LoomTextModel._flash_is_causal(None, None, torch.zeros(1, 3, dtype=torch.long))


def test_activation_checkpointing_gives_the_same_gradients(model_and_inputs):
    model, inputs, _ = model_and_inputs
    model.train()

    def grads():
        model.zero_grad()
        output = model(**inputs)
        (output.velocity.square().mean() + output.logits.float().logsumexp(-1).mean()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.activation_checkpointing_enable()
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys() and any("moe_gen" in n for n in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_frame_table_is_off_by_default_and_a_no_op_when_zero(model_and_inputs):
    model, inputs, spans = model_and_inputs
    with pytest.raises(ValueError, match="max_frames"):
        model(**inputs, frame_ids=torch.zeros_like(inputs["input_ids"]))

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    plain = LoomForInterleavedGeneration(tiny_config(tokenizer)).eval()
    torch.manual_seed(0)
    framed = LoomForInterleavedGeneration(tiny_config(tokenizer, max_frames=4)).eval()
    assert torch.count_nonzero(framed.model.frame_embed.weight) == 0
    frames = torch.full_like(inputs["input_ids"], -1)
    frames[0, spans["latent"]] = 2
    torch.testing.assert_close(framed(**inputs, frame_ids=frames).velocity, plain(**inputs).velocity)
    with pytest.raises(ValueError, match="frame table holds 4"):
        framed(**inputs, frame_ids=frames + 3)


@torch.no_grad()
def test_vision_tower_returns_a_model_output(model_and_inputs):
    """The ViT alone (as `AutoModel` builds it from a `LoomVisionConfig`) returns a `BaseModelOutput` with one row
    per patch of the packed images."""
    model, inputs, _ = model_and_inputs
    output = model.model.vision_model(inputs["pixel_values"], inputs["image_grid_hw"])
    assert isinstance(output, BaseModelOutput)
    assert output.last_hidden_state.shape == (4, model.config.vision_config.hidden_size)


def test_scatter_checks_token_counts(model_and_inputs):
    model, inputs, _ = model_and_inputs
    with pytest.raises(ValueError, match="3 ViT tokens"):
        model(**{**inputs, "pixel_values": inputs["pixel_values"][:3], "image_grid_hw": torch.tensor([[1, 3]])})


@pytest.mark.parametrize("cache_implementation", [None, "static"])
@torch.no_grad()
def test_generate_answers_like_the_official_understanding_path(bagel_pipeline, fixture_cases, cache_implementation):
    """`model.generate()` on the processor's prompt gives the official greedy answer to the understanding case, from
    the growing cache and from a static one."""
    from safetensors.torch import load_file

    case = next(c for c in fixture_cases["cases"] if c["name"] == "understand")
    reference = load_file(FIXTURE / case["tensors"])["text_ids"].tolist()
    processor, model = bagel_pipeline.processor, bagel_pipeline.model
    inputs = processor(inputs=[Image.open(FIXTURE / "img_a.png"), "What is drawn here?"])
    output = model.generate(
        **inputs, max_new_tokens=len(reference) - 1, do_sample=False, cache_implementation=cache_implementation
    )
    prompt_length = inputs["input_ids"].shape[1]
    # The prompt ends with the start token the official decoder is primed with.
    assert output[0, prompt_length - 1 :].tolist() == reference


@torch.no_grad()
@pytest.mark.parametrize("options", [{"num_beams": 2}, {"do_sample": True, "num_return_sequences": 2}])
def test_generate_with_several_outputs_gives_each_copy_its_own_image(tiny_pipe, options):
    """Beams and several sampled answers repeat the packed ViT patches request by request: every copy's first logits
    are the single answer's (transformers' row-wise repeat would interleave the patches of one image)."""
    processor, model = tiny_pipe.processor, tiny_pipe.model
    pixels = torch.Generator().manual_seed(0)
    image = Image.fromarray((torch.rand(64, 48, 3, generator=pixels) * 255).to(torch.uint8).numpy())
    inputs = processor(inputs=[image, "What is drawn here?"])
    common = {"max_new_tokens": 1, "return_dict_in_generate": True, "output_logits": True}
    single = model.generate(**inputs, do_sample=False, **common).logits[0]
    several = model.generate(**inputs, **options, **common).logits[0]
    assert several.shape[0] == 2
    torch.testing.assert_close(several, single.expand_as(several), atol=1e-5, rtol=0)


def test_cache_records_follow_crop_and_batch_operations(tiny_pipe):
    """`crop` puts the position counter back after the kept tokens (the prefix built on its own agrees), and beam
    reordering and repetition move the counter and the ids with the rows."""
    processor, model = tiny_pipe.processor, tiny_pipe.model
    image = Image.new("RGB", (64, 64), "red")
    with torch.no_grad():
        full, short = LoomCache(), LoomCache()
        model(**processor(inputs=[image, "What is drawn here?"]), past_key_values=full, use_cache=True)
        model(**processor(inputs=[image], add_generation_prompt=False), past_key_values=short, use_cache=True)
        cropped = full.fork()
        cropped.crop(short.get_seq_length() - full.get_seq_length())
        assert cropped.next_position.tolist() == short.next_position.tolist()
        assert torch.equal(cropped.token_ids, short.token_ids)
        token = torch.tensor([[5]])
        torch.testing.assert_close(
            model(input_ids=token, past_key_values=cropped, use_cache=True).logits,
            model(input_ids=token, past_key_values=short, use_cache=True).logits,
            atol=1e-6,
            rtol=0,
        )
        text = LoomCache()
        model(**processor(text="Draw a red house"), past_key_values=text, use_cache=True)
        stacked, _ = LoomCache.stack([full, text])
        stacked.reorder_cache(torch.tensor([1, 0]))
        assert stacked.next_position.tolist() == [text.next_position.item(), full.next_position.item()]
        assert stacked.token_ids[0, -text.get_seq_length() :].tolist() == text.token_ids[0].tolist()
        repeated = text.fork()
        repeated.batch_repeat_interleave(2)
        assert repeated.token_ids.shape[0] == 2 and repeated.positions.shape[0] == 2
    with pytest.raises(ValueError, match=r"`caches\[0\]` holds several rows"):
        LoomCache.stack([stacked, text])


@torch.no_grad()
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda inputs: inputs.pop("image_grid_hw"), "`pixel_values` need `image_grid_hw`"),
        (lambda inputs: inputs.pop("pixel_values"), "no `pixel_values` were given"),
        ("embeds", "pass `block_ids`"),
    ],
)
def test_forward_refuses_image_inputs_that_would_run_silently_wrong(tiny_pipe, change, message):
    processor, model = tiny_pipe.processor, tiny_pipe.model
    inputs = dict(processor(inputs=[Image.new("RGB", (64, 64), "red"), "What is drawn here?"]))
    if change == "embeds":
        inputs["inputs_embeds"] = model.get_input_embeddings()(inputs.pop("input_ids"))
    else:
        change(inputs)
    with pytest.raises(ValueError, match=message):
        model(**inputs)


@torch.no_grad()
def test_generate_without_position_ids_takes_bagels(tiny_pipe):
    """Without `position_ids`, `generate()` numbers the prompt as BAGEL does (an image block shares one position),
    also when it continues a cache holding an image, and so answers as with the processor's positions."""
    processor, model = tiny_pipe.processor, tiny_pipe.model
    pixels = torch.Generator().manual_seed(1)
    image = Image.fromarray((torch.rand(64, 64, 3, generator=pixels) * 255).to(torch.uint8).numpy())
    inputs = dict(processor(inputs=[image, "What is drawn here?"]))
    options = {"max_new_tokens": 6, "do_sample": False}
    expected = model.generate(**inputs, **options)
    without = {name: value for name, value in inputs.items() if name != "position_ids"}
    assert torch.equal(model.generate(**without, **options), expected)
    cache = LoomCache()
    model(**inputs, past_key_values=cache, use_cache=True)
    start = torch.tensor([[processor.tokenizer.convert_tokens_to_ids("<|im_start|>")]])
    continued = torch.cat([cache.token_ids, start], dim=1)
    reference_cache = cache.fork()
    positions = torch.zeros_like(continued)
    positions[:, -1] = cache.next_position
    reference = model.generate(input_ids=continued, position_ids=positions, past_key_values=reference_cache, **options)
    assert torch.equal(model.generate(input_ids=continued, past_key_values=cache, **options), reference)


@torch.no_grad()
def test_generate_text_only(tiny_pipe):
    processor, model = tiny_pipe.processor, tiny_pipe.model
    inputs = processor(text="Draw a red house")
    output = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    segment = tiny_pipe(["Draw a red house"], task="text", max_new_tokens=6).segments[0]
    generated = output[0, inputs["input_ids"].shape[1] :].tolist()
    assert generated[: len(segment.token_ids)] == segment.token_ids


def test_auto_classes_and_bit_exact_round_trip(tiny_pipe, tmp_path):
    model, processor = tiny_pipe.model, tiny_pipe.processor
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), LoomConfig)
    assert isinstance(AutoProcessor.from_pretrained(tmp_path), LoomProcessor)
    for auto_class in (AutoModel, AutoModelForMultimodalLM):
        loaded = auto_class.from_pretrained(tmp_path)
        assert isinstance(loaded, LoomForInterleavedGeneration)
        expected, actual = model.state_dict(), loaded.state_dict()
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[k], actual[k]) for k in expected)
        # Non-persistent buffers (sin-cos tables, RoPE frequencies) are rebuilt identically.
        assert torch.equal(loaded.model.latent_pos_embed.table, model.model.latent_pos_embed.table)
        assert torch.equal(
            loaded.model.language_model.rotary_emb.inv_freq, model.model.language_model.rotary_emb.inv_freq
        )


SIGLIP_ONLY_FIELDS = ("image_size", "vision_use_head")  # SigLIP's, read by nothing in Loom's vision tower


def test_saved_vision_config_holds_no_unused_siglip_fields(tiny_pipe, tmp_path):
    tiny_pipe.model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["vision_config"]
    assert not [name for name in SIGLIP_ONLY_FIELDS if name in saved]
    assert saved["max_num_patches_per_side"] == 4 and saved["patch_size"] == 14


def test_a_config_saved_with_the_old_siglip_fields_still_loads(tmp_path):
    """Folders written before the unused fields went (the embedded default model's first export among them) load
    unchanged, the old keys kept as extras."""
    folder = Path(DEFAULT_MODEL) / "model"
    shutil.copytree(folder, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"].update(image_size=56, vision_use_head=False)
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    old, current = (LoomForInterleavedGeneration.from_pretrained(path) for path in (tmp_path / "model", folder))
    assert old.config.vision_config.max_num_patches_per_side == current.config.vision_config.max_num_patches_per_side
    expected, actual = current.state_dict(), old.state_dict()
    assert expected.keys() == actual.keys() and all(torch.equal(expected[k], actual[k]) for k in expected)


@pytest.mark.parametrize(
    "build", [LoomTextConfig, lambda **text: LoomConfig(text_config=text)], ids=["text_config", "composite"]
)
def test_sliding_window_is_refused(build):
    """Loom's attention never applies a window: a config asking for one is refused instead of silently ignored."""
    with pytest.raises(ValueError, match=r"`use_sliding_window=True` is not supported.*`use_sliding_window=False`"):
        build(use_sliding_window=True)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@torch.no_grad()
def test_packed_rows_attend_sample_by_sample(model_and_inputs, implementation):
    """Two packed copies of a sequence each get the hidden states the sequence has alone, and the same as one
    attention over the whole row with a block-diagonal mask."""
    from loom_hf.modeling.packing import create_loom_attention_mask, image_block_ids

    model, inputs, _ = model_and_inputs
    model.set_attn_implementation(implementation)
    alone = model(**inputs).last_hidden_state
    twice = {
        key: torch.cat([value, value], dim=1 if value.ndim == 2 and key.endswith("ids") else 0)
        for key, value in inputs.items()
    }
    length = inputs["input_ids"].shape[1]
    documents = torch.tensor([[0] * length + [1] * length])
    packed = model(**twice, document_ids=documents).last_hidden_state
    torch.testing.assert_close(packed[:, :length], alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[:, length:], alone, atol=1e-5, rtol=1e-4)

    config = model.config
    blocks = image_block_ids(twice["input_ids"], config.vision_start_token_id, config.vision_end_token_id)
    full_mask = create_loom_attention_mask(
        config.text_config, torch.zeros(1, 2 * length, 8), None, None, blocks, None, documents
    )
    whole_row = model(**twice, attention_mask=full_mask).last_hidden_state
    torch.testing.assert_close(whole_row, packed, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_generate_on_a_bfloat16_model_reads_float32_pixels(tiny_pipe):
    """The processor returns float32 patches; a model converted to bfloat16 reads them in its own dtype."""
    model = tiny_pipe.model.to(torch.bfloat16)
    inputs = tiny_pipe.processor(images=Image.new("RGB", (32, 32), (200, 30, 30)), text="What is drawn here?")
    assert inputs["pixel_values"].dtype == torch.float32
    output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 3


@torch.no_grad()
def test_a_compiled_model_denoises_as_the_eager_one(tiny_pipe):
    """Under `torch.compile` (dynamo's graph capture; the eager backend keeps the test quick) a guided text-to-image
    call gives the eager latents exactly: token types are compared as plain ints, since dynamo reads a tensor compared
    with an `IntEnum` member as a Python `False` inside an index (torch 2.13), which emptied the velocity."""
    kwargs = {"num_inference_steps": 2, "guidance_scale": 4.0, "output_type": "latent", "height": 32, "width": 32}
    eager = tiny_pipe(["A red square."], generator=torch.Generator().manual_seed(0), **kwargs).images[0]
    forward = tiny_pipe.model.forward
    tiny_pipe.model.forward = torch.compile(forward, backend="eager")
    try:
        compiled = tiny_pipe(["A red square."], generator=torch.Generator().manual_seed(0), **kwargs).images[0]
    finally:
        tiny_pipe.model.forward = forward
        torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=0)
