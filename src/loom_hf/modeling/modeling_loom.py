"""PyTorch Loom: BAGEL's Mixture-of-Transformers decoder, NaViT vision tower and latent heads, with Loom's frame table.

The network only embeds, attends and projects. Which tokens form a sequence (text turns, ViT blocks, clean or noisy
latent blocks) is described by `input_ids` + `mm_token_type_ids` + image/latent inputs, built by the processor, the
pipeline or the training collator; `packing.py` holds the layout rules.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.embeddings import TimestepEmbedding, Timesteps, get_2d_sincos_pos_embed
from torch import nn
from torch.nn.modules.module import _global_forward_hooks
from transformers import AttentionInterface, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN, SiLUActivation
from transformers.cache_utils import Cache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPast
from transformers.models.qwen2.modeling_qwen2 import (
    Qwen2MLP,
    Qwen2RMSNorm,
    Qwen2RotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)
from transformers.models.siglip.modeling_siglip import SiglipEncoder
from transformers.utils import ModelOutput, can_return_tuple
from transformers.utils.generic import is_flash_attention_requested
from transformers.utils.output_capturing import capture_outputs

from .cache_loom import POSITION_KEEPING_CACHES, LoomCache, LoomStaticCache, next_positions
from .configuration_loom import LoomConfig, LoomTextConfig, LoomVisionConfig
from .document_attention import PER_DOCUMENT_ATTENTION, DocumentMasks, per_document_attention
from .packing import (
    TokenType,
    create_loom_attention_mask,
    document_spans,
    grid_position_ids,
    image_block_ids,
    rope_position_ids,
)
from .placement import check_placement
from .quantization import check_quantization_backend
from .step_cache import LoomStepCacheMixin, register_decoder_layer

__all__ = [
    "LoomPreTrainedModel",
    "LoomTextModel",
    "LoomVisionModel",
    "LoomModel",
    "LoomForInterleavedGeneration",
    "LoomOutput",
]


# transformers' attention functions plus Loom's per-document one, on a model-local interface (transformers' pattern
# for functions of one model); a `DocumentMasks` mask selects it.
ALL_ATTENTION_FUNCTIONS = AttentionInterface()
ALL_ATTENTION_FUNCTIONS[PER_DOCUMENT_ATTENTION] = per_document_attention


# A tensor's tokens split between the experts: (understanding, generation), `None` for an expert with no token.
ExpertParts = tuple[torch.Tensor | None, torch.Tensor | None]


@dataclass
class ExpertRoute:
    """Which tokens each expert processes, worked out once per forward pass and shared by every routed layer.

    A layer splits its hidden states into the two experts' parts once ([`split`]), runs each expert's projections,
    norms and MLP on its own part, and joins the parts back into sequence order only where the experts meet (queries,
    keys and values for the joint attention, and the layer's output) ([`join`]). Three layouts:

    * one expert takes every token (`all_generation` says which): no split at all;
    * `gen_span = (start, end)`: in every row the latent tokens are positions `[start, end)`, as in a denoising step
      (`[start marker, latents, end marker]`) or an image block written into the cache; the parts are slices;
    * otherwise `gen_index` / `und_index` index the flattened `[batch · length]` tokens (packed training rows).
      Precomputed positions instead of a boolean mask at every call save a `nonzero` (a host synchronisation on
      GPU) per split.
    """

    all_generation: bool
    und_index: torch.LongTensor | None = None
    gen_index: torch.LongTensor | None = None
    gen_span: tuple[int, int] | None = None

    @classmethod
    def from_gen_mask(cls, gen_mask: torch.BoolTensor, always_split: bool = False) -> "ExpertRoute":
        """With `always_split` both experts run (possibly on zero tokens) so that both always take part in the
        autograd graph, which data-parallel training needs."""
        if not always_split:
            if not gen_mask.any():
                return cls(all_generation=False)
            if gen_mask.all():
                return cls(all_generation=True)
            span = cls._shared_span(gen_mask)
            if span is not None:
                return cls(all_generation=False, gen_span=span)
        flat = gen_mask.flatten()
        return cls(False, (~flat).nonzero().flatten(), flat.nonzero().flatten())

    @staticmethod
    def _shared_span(gen_mask: torch.BoolTensor) -> tuple[int, int] | None:
        """`(start, end)` when every row's latent tokens are exactly positions `[start, end)`, else `None`."""
        columns = gen_mask[0].nonzero().flatten()
        if len(columns) == 0:
            return None
        start, end = int(columns[0]), int(columns[-1]) + 1
        span = torch.zeros_like(gen_mask[0])
        span[start:end] = True
        return (start, end) if bool((gen_mask == span).all()) else None

    def split(self, hidden_states: torch.Tensor) -> ExpertParts:
        """The experts' parts of `hidden_states` (`[batch, length, ...]`)."""
        if self.gen_span is not None:
            start, end = self.gen_span
            understanding = torch.cat([hidden_states[:, :start], hidden_states[:, end:]], dim=1)
            return understanding, hidden_states[:, start:end]
        if self.gen_index is None:
            return (None, hidden_states) if self.all_generation else (hidden_states, None)
        flat = hidden_states.flatten(0, 1)
        return flat.index_select(0, self.und_index), flat.index_select(0, self.gen_index)

    def join(self, parts: ExpertParts, shape: torch.Size) -> torch.Tensor:
        """The parts back in sequence order, `[batch, length, ...]` for the leading `shape`; the generation part is
        cast to the understanding part's dtype."""
        understanding, generation = parts
        if self.gen_span is not None:
            start = self.gen_span[0]
            pieces = [understanding[:, :start], generation.to(understanding.dtype), understanding[:, start:]]
            return torch.cat(pieces, dim=1)
        if self.gen_index is None:
            return generation if self.all_generation else understanding
        out = understanding.new_empty(shape[0] * shape[1], *understanding.shape[1:])
        out.index_copy_(0, self.und_index, understanding)
        out.index_copy_(0, self.gen_index, generation.to(understanding.dtype))
        return out.unflatten(0, shape)


def apply_experts(
    understanding: Callable[[torch.Tensor], torch.Tensor],
    generation: Callable[[torch.Tensor], torch.Tensor],
    parts: ExpertParts,
) -> ExpertParts:
    """Each expert's module on its own part of the tokens."""
    und_part, gen_part = parts
    return (
        None if und_part is None else understanding(und_part),
        None if gen_part is None else generation(gen_part),
    )


def add_parts(first: ExpertParts, second: ExpertParts) -> ExpertParts:
    """Part-wise sum (the residual connections, which never mix the experts' tokens)."""
    return tuple(None if a is None else a + b for a, b in zip(first, second))


class LoomRMSNorm(Qwen2RMSNorm):
    """Qwen2's RMSNorm (same weight, same float32 arithmetic) computed by one `F.rms_norm` call instead of Qwen2's
    chain of elementwise operators: a decoded token runs 17 norms on the small configuration, and their per-operator
    cost (dispatch on a CPU, kernel launches on a GPU) is most of what they take. Bit-identical to Qwen2's on the CPU;
    where torch has a fused kernel (CUDA) equal within float rounding. In float32 the weight goes into the same call
    (Qwen2 casts before it multiplies, which float32 makes a no-op)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        if input_dtype == self.weight.dtype == torch.float32:
            return F.rms_norm(hidden_states, hidden_states.shape[-1:], self.weight, eps=self.variance_epsilon)
        normed = F.rms_norm(hidden_states.float(), hidden_states.shape[-1:], eps=self.variance_epsilon)
        return self.weight * normed.to(input_dtype)


class LoomMLP(Qwen2MLP):
    """Qwen2's gated MLP (same weights, same arithmetic). Outside autograd its SiLU and product are written into the
    gate projection's fresh output instead of two new `[tokens, intermediate_size]` tensors: under glibc's malloc a
    large fresh activation is mapped from the kernel and faulted in page by page, which made a batch of images pay
    more for its activations than for their arithmetic on a CPU. Only while nothing else can hold those tensors: a
    hook on the gate projection or the activation (torch's, global or per module, or a diffusers hook such as a step
    cache given `gate_proj` as an identifier) keeps Qwen2's forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or self._watched():
            return super().forward(x)
        gate, up = self.gate_proj(x), self.up_proj(x)
        gated = F.silu(gate, inplace=True) if type(self.act_fn) is SiLUActivation else self.act_fn(gate)
        product = gated.mul_(up) if gated.dtype == up.dtype else gated * up
        return self.down_proj(product)

    def _watched(self) -> bool:
        """Whether a hook may see (and keep) the gate projection's or the activation's output."""
        if _global_forward_hooks:
            return True
        for module in (self.gate_proj, self.act_fn):
            registry = getattr(module, "_diffusers_hook", None)
            if module._forward_hooks or (registry is not None and registry.hooks):
                return True
        return False


class LoomAttention(nn.Module):
    """Joint self-attention of the two experts: per-expert q/k/v/o projections and q/k norms, one softmax."""

    def __init__(self, config: LoomTextConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        # Understanding expert (text and ViT tokens): Qwen2's projections, plus BAGEL's q/k norms.
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = self._projections(config)
        self.q_norm, self.k_norm = self._qk_norm(config), self._qk_norm(config)
        # Generation expert (latent tokens): the same shapes.
        self.q_proj_moe_gen, self.k_proj_moe_gen, self.v_proj_moe_gen, self.o_proj_moe_gen = self._projections(config)
        self.q_norm_moe_gen, self.k_norm_moe_gen = self._qk_norm(config), self._qk_norm(config)

    def _projections(self, config: LoomTextConfig) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
        """One expert's q, k, v (with bias, as Qwen2) and o (without) projections."""
        q_dim, kv_dim = config.num_attention_heads * self.head_dim, config.num_key_value_heads * self.head_dim
        return (
            nn.Linear(config.hidden_size, q_dim, bias=True),
            nn.Linear(config.hidden_size, kv_dim, bias=True),
            nn.Linear(config.hidden_size, kv_dim, bias=True),
            nn.Linear(q_dim, config.hidden_size, bias=False),
        )

    def _qk_norm(self, config: LoomTextConfig) -> nn.Module:
        """BAGEL's per-head RMSNorm of queries or keys (an identity without `qk_norm`)."""
        return LoomRMSNorm(self.head_dim, eps=config.rms_norm_eps) if config.qk_norm else nn.Identity()

    def forward(
        self,
        hidden_parts: ExpertParts,
        input_shape: torch.Size,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        route: ExpertRoute,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> tuple[ExpertParts, torch.Tensor | None]:
        """Attention over the (already normed) hidden states of `input_shape` `[batch, length]`, given as the
        experts' parts; returns the output projection's parts and the attention weights."""
        query_states = self._heads(hidden_parts, self.q_proj, self.q_proj_moe_gen, self.q_norm, self.q_norm_moe_gen)
        key_states = self._heads(hidden_parts, self.k_proj, self.k_proj_moe_gen, self.k_norm, self.k_norm_moe_gen)
        value_states = self._heads(hidden_parts, self.v_proj, self.v_proj_moe_gen)
        query_states = route.join(query_states, input_shape).transpose(1, 2)
        key_states = route.join(key_states, input_shape).transpose(1, 2)
        value_states = route.join(value_states, input_shape).transpose(1, 2)

        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if past_key_values is not None:
            key_states, value_states = past_key_values.update(key_states, value_states, self.layer_idx)

        implementation = self.config._attn_implementation
        if isinstance(attention_mask, DocumentMasks):
            implementation = PER_DOCUMENT_ATTENTION
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1)
        return apply_experts(self.o_proj, self.o_proj_moe_gen, route.split(attn_output)), attn_weights

    def _heads(
        self,
        hidden_parts: ExpertParts,
        projection: nn.Module,
        projection_gen: nn.Module,
        norm: nn.Module | None = None,
        norm_gen: nn.Module | None = None,
    ) -> ExpertParts:
        """Each expert's projection, split into heads `[..., heads, head_dim]`, then its per-head norm (if any)."""
        projected = apply_experts(projection, projection_gen, hidden_parts)
        heads = tuple(None if part is None else part.unflatten(-1, (-1, self.head_dim)) for part in projected)
        return heads if norm is None else apply_experts(norm, norm_gen, heads)


class LoomDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm MoT decoder layer: each token goes through its expert's norms and MLP around the joint attention."""

    def __init__(self, config: LoomTextConfig, layer_idx: int):
        super().__init__()
        self.self_attn = LoomAttention(config, layer_idx)
        self.mlp = LoomMLP(config)
        self.mlp_moe_gen = LoomMLP(config)
        self.input_layernorm = LoomRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.input_layernorm_moe_gen = LoomRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LoomRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm_moe_gen = LoomRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        route: ExpertRoute,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = route.split(hidden_states)
        normed = apply_experts(self.input_layernorm, self.input_layernorm_moe_gen, residual)
        attended, _ = self.self_attn(
            normed,
            hidden_states.shape[:2],
            position_embeddings,
            attention_mask,
            route,
            past_key_values=past_key_values,
            **kwargs,
        )
        residual = add_parts(residual, attended)
        transformed = apply_experts(
            lambda x: self.mlp(self.post_attention_layernorm(x)),
            lambda x: self.mlp_moe_gen(self.post_attention_layernorm_moe_gen(x)),
            residual,
        )
        return route.join(add_parts(residual, transformed), hidden_states.shape[:2])


register_decoder_layer(LoomDecoderLayer)


class LoomVisionEmbeddings(nn.Module):
    """Linear embedding of flattened `(patch_row, patch_col, channel)` patches plus a learned 2D position table."""

    def __init__(self, config: LoomVisionConfig):
        super().__init__()
        self.max_side = config.max_num_patches_per_side
        self.patch_embedding = nn.Linear(config.num_channels * config.patch_size**2, config.hidden_size)
        self.position_embedding = nn.Embedding(self.max_side**2, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor, image_grid_hw: torch.LongTensor) -> torch.Tensor:
        positions = grid_position_ids(image_grid_hw, self.max_side)
        return self.patch_embedding(pixel_values) + self.position_embedding(positions)


class LoomVisionConnector(nn.Module):
    """Two-layer MLP from ViT features to the language model's hidden size."""

    def __init__(self, vision_hidden_size: int, hidden_size: int, hidden_act: str):
        super().__init__()
        self.fc1 = nn.Linear(vision_hidden_size, hidden_size)
        self.act = ACT2FN[hidden_act]
        self.fc2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(features)))


class LoomPositionTable(nn.Module):
    """Fixed 2D sin-cos table over a `side`² grid; row `r·side + c` encodes the column first, then the row.

    A deterministic function of its shape: kept as a non-persistent buffer, recomputed at load time, never saved.
    """

    def __init__(self, side: int, dim: int):
        super().__init__()
        self.side, self.dim = side, dim
        self.register_buffer("table", self.compute(side, dim), persistent=False)

    @staticmethod
    def compute(side: int, dim: int) -> torch.Tensor:
        return get_2d_sincos_pos_embed(dim, side, base_size=side, output_type="pt").float()

    def forward(self, position_ids: torch.LongTensor) -> torch.Tensor:
        return self.table[position_ids]


class LoomTimestepEmbedder(nn.Module):
    """DiT timestep embedding of the flow time σ ∈ [0, 1] (not scaled by 1000): `[cos, sin]` features and an MLP."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.features = Timesteps(frequency_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.embedding = TimestepEmbedding(frequency_dim, hidden_size)

    def forward(self, sigmas: torch.Tensor) -> torch.Tensor:
        features = self.features(sigmas)
        return self.embedding(features.to(self.embedding.linear_1.weight.dtype))


class LoomVelocityHead(nn.Linear):
    """`llm2vae`: hidden states to the flow velocity of a latent token; zero at initialisation, as in BAGEL."""


class LoomFrameEmbedding(nn.Embedding):
    """Loom's learnable temporal table: row `t` is added to the visual tokens of frame `t`; zero at initialisation,
    so a BAGEL checkpoint behaves as BAGEL until the table is trained."""


class LoomPreTrainedModel(PreTrainedModel):
    config: LoomConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["LoomDecoderLayer", "SiglipEncoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False
    _can_record_outputs = {"hidden_states": LoomDecoderLayer, "attentions": LoomAttention}

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (LoomVelocityHead, LoomFrameEmbedding)):
            for parameter in module.parameters(recurse=False):
                init.zeros_(parameter)
        elif isinstance(module, LoomPositionTable):
            init.copy_(module.table, module.compute(module.side, module.dim))
        else:
            super()._init_weights(module)


class LoomTextModel(LoomPreTrainedModel, CacheMixin):
    """The MoT language model: token embeddings, decoder layers and the per-expert final norms.

    A diffusers `CacheMixin`, so that diffusers' step-cache hooks find its `layers`; see [`LoomStepCacheMixin`].
    """

    config: LoomTextConfig
    base_model_prefix = "language_model"

    def __init__(self, config: LoomTextConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LoomDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LoomRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.norm_moe_gen = LoomRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen2RotaryEmbedding(config=config)
        self.post_init()

    @capture_outputs
    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        gen_mask: torch.BoolTensor | None = None,
        block_ids: torch.LongTensor | None = None,
        noised: torch.BoolTensor | None = None,
        document_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """Run the decoder over `inputs_embeds` at BAGEL `position_ids`; see `packing.create_loom_attention_mask`.

        A packed row under `sdpa` or `eager` attends sample by sample (as BAGEL's SDPA path does), so its cost grows
        with the sum of the squared sample lengths rather than the square of the row length.
        """
        attention_kwargs = {}
        if is_flash_attention_requested(self.config):
            attention_kwargs["is_causal"] = self._flash_is_causal(block_ids, noised, document_ids)
        if self._attends_per_document(inputs_embeds, attention_mask, past_key_values, document_ids):
            spans = document_spans(document_ids)
            mask = DocumentMasks(
                spans,
                [
                    create_loom_attention_mask(
                        self.config,
                        inputs_embeds[:, start:end],
                        None,
                        None,
                        None if block_ids is None else block_ids[:, start:end],
                        None if noised is None else noised[:, start:end],
                    )
                    for start, end in spans
                ],
            )
        else:
            mask = create_loom_attention_mask(
                self.config, inputs_embeds, attention_mask, past_key_values, block_ids, noised, document_ids
            )
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)
        if gen_mask is None and not self.training:
            route = ExpertRoute(all_generation=False)  # text only: no mask to inspect
        else:
            if gen_mask is None:
                gen_mask = torch.zeros(inputs_embeds.shape[:2], dtype=torch.bool, device=inputs_embeds.device)
            route = ExpertRoute.from_gen_mask(gen_mask, always_split=self.training)
        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                mask,
                position_embeddings,
                route,
                past_key_values=past_key_values,
                **attention_kwargs,
                **kwargs,
            )
        hidden_states = route.join(
            apply_experts(self.norm, self.norm_moe_gen, route.split(hidden_states)), hidden_states.shape[:2]
        )
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, past_key_values=past_key_values)

    def _attends_per_document(self, inputs_embeds, attention_mask, past_key_values, document_ids) -> bool:
        return (
            document_ids is not None
            and past_key_values is None
            and attention_mask is None
            and inputs_embeds.shape[0] == 1
            and self.config._attn_implementation in ("sdpa", "eager")
        )

    @staticmethod
    def _flash_is_causal(block_ids, noised, document_ids) -> bool:
        """Flash attention knows only causal or full attention per call: a query must be all text or one block."""
        if noised is not None or document_ids is not None:
            raise ValueError(
                "flash attention cannot express packed training masks; use attn_implementation='sdpa' or "
                "'flex_attention' for training."
            )
        if block_ids is None or block_ids.shape[-1] == 1 or not bool((block_ids >= 0).any()):
            return True  # text, or one query token (which sees every earlier key under the causal rule)
        if bool((block_ids == block_ids[:, :1]).all()) and bool((block_ids >= 0).all()):
            return False
        raise ValueError(
            "flash attention needs each forward pass to hold either only text or exactly one image block; "
            "use attn_implementation='sdpa' or 'flex_attention' for mixed sequences."
        )


class LoomVisionModel(LoomPreTrainedModel):
    """NaViT SigLIP: images of different sizes in one call, each attending only to itself."""

    config: LoomVisionConfig
    base_model_prefix = "vision_model"
    main_input_name = "pixel_values"

    def __init__(self, config: LoomVisionConfig):
        super().__init__(config)
        self.embeddings = LoomVisionEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, image_grid_hw: torch.LongTensor) -> BaseModelOutput:
        """`pixel_values`: `[num_patches, channels·patch²]` of all images; `last_hidden_state`: `[num_patches, hidden]`
        (the images' tokens concatenated, as packed as the patches)."""
        embeddings = self.embeddings(pixel_values, image_grid_hw)
        lengths = (image_grid_hw[:, 0] * image_grid_hw[:, 1]).tolist()
        per_image = list(embeddings.split(lengths))
        outputs: list[torch.Tensor | None] = [None] * len(per_image)
        # Images of the same size run as one batch; no cross-image mask is needed.
        for size in sorted(set(lengths)):
            indices = [i for i, n in enumerate(lengths) if n == size]
            batch = torch.stack([per_image[i] for i in indices])
            encoded = self.encoder(inputs_embeds=batch).last_hidden_state
            for row, i in enumerate(indices):
                outputs[i] = encoded[row]
        return BaseModelOutput(last_hidden_state=self.post_layernorm(torch.cat(outputs)) if outputs else embeddings)


@dataclass
class LoomOutput(ModelOutput):
    """Output of [`LoomForInterleavedGeneration`].

    Args:
        loss: next-token cross-entropy over `labels`, when given.
        logits: text logits at the kept positions.
        velocity: `[num_latent_tokens, latent_token_dim]` flow velocity (`noise - x0`) at the latent positions, in
            sequence order.
        past_key_values: the updated cache.
        hidden_states / attentions: per-layer outputs when requested.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    velocity: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class LoomModel(LoomPreTrainedModel):
    """Embeds an interleaved sequence (text, ViT patches, VAE-latent patches) and runs the MoT decoder."""

    def __init__(self, config: LoomConfig):
        super().__init__(config)
        text, vision = config.text_config, config.vision_config
        self.language_model = LoomTextModel._from_config(text)
        self.vision_model = LoomVisionModel._from_config(vision)
        self.connector = LoomVisionConnector(vision.hidden_size, text.hidden_size, config.connector_act)
        self.vit_pos_embed = LoomPositionTable(vision.max_num_patches_per_side, text.hidden_size)
        self.time_embedder = LoomTimestepEmbedder(text.hidden_size)
        self.vae2llm = nn.Linear(config.latent_token_dim, text.hidden_size)
        self.latent_pos_embed = LoomPositionTable(config.max_latent_size, text.hidden_size)
        self.frame_embed = LoomFrameEmbedding(config.max_frames, text.hidden_size) if config.max_frames > 0 else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.language_model.embed_tokens = value

    def get_image_features(self, pixel_values: torch.Tensor, image_grid_hw: torch.LongTensor) -> torch.Tensor:
        """ViT tokens in the language model's space: `connector(ViT(patches)) + vit_pos_embed`."""
        # Processors return float32 patches; a bfloat16 (or float16) model reads them in its own dtype.
        pixel_values = pixel_values.to(self.vision_model.dtype)
        features = self.connector(self.vision_model(pixel_values, image_grid_hw).last_hidden_state)
        positions = grid_position_ids(image_grid_hw, self.config.vision_config.max_num_patches_per_side)
        return features + self.vit_pos_embed(positions).to(features.dtype)

    def get_latent_embeddings(
        self, latents: torch.Tensor, latent_grid_hw: torch.LongTensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Latent tokens in the language model's space: `vae2llm(x_σ) + time_embedder(σ) + latent_pos_embed`.

        `timesteps` holds one σ per latent image (0 for a clean image) or one per token.
        """
        lengths = (latent_grid_hw[:, 0] * latent_grid_hw[:, 1]).to(latents.device)
        timesteps = timesteps.to(latents.device).reshape(-1)
        if timesteps.numel() == len(lengths):
            timesteps = timesteps.repeat_interleave(lengths)
        elif timesteps.numel() != latents.shape[0]:
            raise ValueError(
                f"`timesteps` needs one σ per latent image ({len(lengths)}) or per latent token ({latents.shape[0]}); "
                f"got {timesteps.numel()}."
            )
        embeddings = self.vae2llm(latents.to(self.vae2llm.weight.dtype))
        embeddings = embeddings + self.time_embedder(timesteps.float()).to(embeddings.dtype)
        positions = grid_position_ids(latent_grid_hw, self.config.max_latent_size)
        return embeddings + self.latent_pos_embed(positions).to(embeddings.dtype)

    def get_frame_embeddings(self, frame_ids: torch.LongTensor) -> torch.Tensor:
        """Loom's temporal embedding `e_t` for per-token frame indices (`-1`: not part of a frame)."""
        if self.frame_embed is None:
            raise ValueError("`frame_ids` were given but this model has no frame table (config.max_frames == 0).")
        if int(frame_ids.max()) >= self.config.max_frames:
            raise ValueError(
                f"`frame_ids` reach {int(frame_ids.max())} but the frame table holds {self.config.max_frames} frames."
            )
        embeddings = self.frame_embed(frame_ids.clamp(min=0))
        return embeddings * (frame_ids >= 0).unsqueeze(-1).to(embeddings.dtype)

    @staticmethod
    def rope_positions(
        input_shape: torch.Size,
        block_ids: torch.LongTensor | None,
        past_key_values: Cache | None,
        attention_mask: torch.Tensor | None,
        device: torch.device,
    ) -> torch.LongTensor:
        """BAGEL RoPE positions of the new tokens of `input_shape` `[batch, length]`, continuing the cache (see
        [`next_positions`]). One new token per row (a decoded token) takes the next position whatever it is, so its
        positions need no block ids."""
        start = next_positions(past_key_values).to(device)
        if input_shape[1] == 1:
            return start.reshape(-1, 1).expand(input_shape[0], 1).clone()  # not a view of the cache's counter
        if block_ids is None:
            raise ValueError("Without `input_ids`, pass `position_ids` (or `block_ids`) for BAGEL positions.")
        padding = attention_mask if attention_mask is not None and attention_mask.ndim == 2 else None
        return rope_position_ids(block_ids, start, padding)

    @staticmethod
    def _check_cache_keeps_positions(past_key_values: Cache | None, block_ids: torch.LongTensor | None) -> None:
        """Refuse image blocks written into a cache other than a [`LoomCache`] or [`LoomStaticCache`]: a block's tokens
        share one RoPE position, and only these record where the counter stands after it (any other cache knows only
        its length, so the text after the block would silently take wrong positions)."""
        if past_key_values is None or isinstance(past_key_values, POSITION_KEEPING_CACHES) or block_ids is None:
            return
        if bool((block_ids >= 0).any()):
            raise ValueError(
                f"An image block cannot be written into a {type(past_key_values).__name__}: it does not record BAGEL's "
                "position counter (a whole block shares one position), so the tokens after it would take wrong "
                "positions. Pass `past_key_values=LoomCache()`."
            )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        mm_token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_grid_hw: torch.LongTensor | None = None,
        latents: torch.FloatTensor | None = None,
        latent_grid_hw: torch.LongTensor | None = None,
        timesteps: torch.FloatTensor | None = None,
        frame_ids: torch.LongTensor | None = None,
        block_ids: torch.LongTensor | None = None,
        noised: torch.BoolTensor | None = None,
        document_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        r"""
        mm_token_type_ids (`[batch, length]`): [`TokenType`] of each position (0 text, 1 ViT patch, 2 latent patch);
            latent positions are read with `latents` (or `inputs_embeds` that hold them), text otherwise.
        pixel_values (`[num_patches, 3·patch²]`), image_grid_hw (`[num_images, 2]`): ViT patches and patch grids.
        latents (`[num_latent_tokens, latent_token_dim]`), latent_grid_hw (`[num_latent_images, 2]`): packed latent
            patches ([`pack_latents`]) and their grids; timesteps: σ per latent image (0 = clean).
        frame_ids (`[batch, length]`): Loom frame index of each visual token (`-1` elsewhere).
        block_ids / noised / document_ids (`[batch, length]`): explicit image blocks, noised-block flags and packed
            sample ids for training; by default blocks come from the vision markers in `input_ids`.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        self._check_image_inputs(input_ids, mm_token_type_ids, pixel_values, image_grid_hw, block_ids)
        # 1. Embed: token embeddings, with ViT and latent tokens merged in at their positions and frame embeddings
        token_types = mm_token_type_ids
        # Latent positions hold latents only when `latents` (or the caller's own embeddings) are given: otherwise every
        # token is the understanding expert's, so a decoded token neither inspects the types nor waits for the device.
        routes_latents = mm_token_type_ids is not None and (latents is not None or inputs_embeds is not None)
        if inputs_embeds is None:
            inputs_embeds = self.language_model.embed_tokens(input_ids)
        if token_types is None:
            token_types = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        if pixel_values is not None:
            features = self.get_image_features(pixel_values, image_grid_hw)
            inputs_embeds = self._scatter(inputs_embeds, token_types == TokenType.VIT.value, features, "ViT")
        if latents is not None:
            if timesteps is None:
                raise ValueError("`latents` need `timesteps` (σ per latent image; 0 for a clean image).")
            features = self.get_latent_embeddings(latents, latent_grid_hw, timesteps)
            inputs_embeds = self._scatter(inputs_embeds, token_types == TokenType.LATENT.value, features, "latent")
        if frame_ids is not None:
            inputs_embeds = inputs_embeds + self.get_frame_embeddings(frame_ids).to(inputs_embeds.dtype)

        # 2. Positions: BAGEL's counter, continuing the cache
        if use_cache and past_key_values is None:
            past_key_values = LoomCache()
        # A single new token per row is in no block that matters: the mask lets it see every earlier key anyway.
        if block_ids is None and input_ids is not None and input_ids.shape[1] > 1:
            block_ids = image_block_ids(input_ids, self.config.vision_start_token_id, self.config.vision_end_token_id)
        self._check_cache_keeps_positions(past_key_values, block_ids)
        if position_ids is None:
            position_ids = self.rope_positions(
                inputs_embeds.shape[:2], block_ids, past_key_values, attention_mask, device=inputs_embeds.device
            )

        # 3. Decode
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            gen_mask=token_types == TokenType.LATENT.value if routes_latents else None,
            block_ids=block_ids,
            noised=noised,
            document_ids=document_ids,
            **kwargs,
        )
        if isinstance(past_key_values, POSITION_KEEPING_CACHES):
            past_key_values.advance(position_ids, input_ids)
        return BaseModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            past_key_values=past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    @staticmethod
    def _check_image_inputs(input_ids, mm_token_type_ids, pixel_values, image_grid_hw, block_ids) -> None:
        """Refuse what would run silently wrong: ViT patches without their grids, ViT positions of a prompt without
        `pixel_values` (they would hold the placeholder's embedding), and images given as `inputs_embeds` without
        `block_ids` (without the markers in `input_ids` the image blocks cannot be found, so they would attend
        causally instead of bidirectionally; embeddings may hold the ViT features already). A decoded token is never
        checked."""
        if pixel_values is not None and image_grid_hw is None:
            raise ValueError(
                "`pixel_values` need `image_grid_hw` (the patch grid of each image; the processor gives both)."
            )
        if mm_token_type_ids is None or mm_token_type_ids.shape[-1] == 1:
            return
        if input_ids is not None and pixel_values is None and bool((mm_token_type_ids == TokenType.VIT.value).any()):
            raise ValueError(
                "`mm_token_type_ids` mark ViT positions but no `pixel_values` were given; pass the processor's whole "
                "output."
            )
        if input_ids is None and block_ids is None and bool((mm_token_type_ids != TokenType.TEXT.value).any()):
            raise ValueError(
                "With `inputs_embeds` holding image positions, pass `block_ids` (`image_block_ids(input_ids, ...)`): "
                "without `input_ids` the image blocks cannot be found."
            )

    @staticmethod
    def _scatter(inputs_embeds: torch.Tensor, positions: torch.BoolTensor, features: torch.Tensor, name: str):
        """Place `features` at `positions` (in order), checking that the counts agree."""
        if int(positions.sum()) != features.shape[0]:
            raise ValueError(
                f"{features.shape[0]} {name} tokens were given but `mm_token_type_ids` marks {int(positions.sum())} "
                f"{name} positions."
            )
        inputs_embeds = inputs_embeds.clone()
        inputs_embeds[positions] = features.to(inputs_embeds.dtype)
        return inputs_embeds


class LoomForInterleavedGeneration(LoomPreTrainedModel, GenerationMixin, LoomStepCacheMixin):
    """Loom with its two heads: `lm_head` for text and `llm2vae` for the flow velocity of latent tokens.

    Text generation and image understanding work through the standard `generate()`; the interleaved text-image
    loop (planning, guidance, denoising) lives in `LoomInterleavedPipeline`. Denoising steps can be cached with
    diffusers' configs: `enable_cache(TaylorSeerCacheConfig(...))` / `disable_cache()`.
    """

    output_modalities = ("image", "text")
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # Never quantized, and float32 under a float16 load: the latent heads and the time embedder (0.1 % of BAGEL's
    # weights). Quantized to int8 too, they raise the bagel-tiny parity error by a quarter to a half (text-to-image
    # 0.0061 -> 0.0077 relative, think 0.0031 -> 0.0050). The other high-precision parts (embeddings, norms, the
    # frame table) are not `nn.Linear`, which weight-only configs leave alone.
    _keep_in_fp32_modules = ["model.vae2llm", "model.time_embedder", "llm2vae"]

    def __init__(self, config: LoomConfig):
        super().__init__(config)
        self.model = LoomModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.llm2vae = LoomVelocityHead(config.text_config.hidden_size, config.latent_token_dim)
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, with the quantization and placement arguments checked first
        ([`check_placement`]): a missing backend, an accelerator this machine lacks, a `device_map` key naming no
        module or a `max_memory` below one layer raise before any weight is read."""
        config = kwargs.get("config")
        if not isinstance(config, LoomConfig):
            hub = ("subfolder", "cache_dir", "revision", "token", "local_files_only")
            config = LoomConfig.from_pretrained(
                pretrained_model_name_or_path, **{k: kwargs[k] for k in hub if k in kwargs}
            )
        check_quantization_backend(getattr(config, "quantization_config", None))
        check_placement(
            cls,
            config,
            device_map=kwargs.get("device_map"),
            max_memory=kwargs.get("max_memory"),
            dtype=kwargs.get("dtype"),
            quantization_config=kwargs.get("quantization_config"),
        )
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        mm_token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_grid_hw: torch.LongTensor | None = None,
        latents: torch.FloatTensor | None = None,
        latent_grid_hw: torch.LongTensor | None = None,
        timesteps: torch.FloatTensor | None = None,
        frame_ids: torch.LongTensor | None = None,
        block_ids: torch.LongTensor | None = None,
        noised: torch.BoolTensor | None = None,
        document_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> LoomOutput:
        r"""
        labels (`[batch, length]`): next-token targets for the text cross-entropy (`-100` ignored).
        logits_to_keep (`int` or tensor): compute text logits only for the last `n` positions (or these indices).
        Other arguments: see [`LoomModel.forward`]. `velocity` is returned whenever `latents` are given.
        """
        # Trainers pass the token count of the whole accumulation window; it normalises the loss, not attention.
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            mm_token_type_ids=mm_token_type_ids,
            pixel_values=pixel_values,
            image_grid_hw=image_grid_hw,
            latents=latents,
            latent_grid_hw=latent_grid_hw,
            timesteps=timesteps,
            frame_ids=frame_ids,
            block_ids=block_ids,
            noised=noised,
            document_ids=document_ids,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        velocity = None
        if latents is not None:
            latent_states = hidden_states[mm_token_type_ids == TokenType.LATENT.value]
            velocity = self.llm2vae(latent_states.to(self.llm2vae.weight.dtype))
        kept = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, kept, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits,
                labels=labels,
                vocab_size=self.config.text_config.vocab_size,
                num_items_in_batch=num_items_in_batch,
            )
        return LoomOutput(
            loss=loss,
            logits=logits,
            velocity=velocity,
            past_key_values=outputs.past_key_values,
            last_hidden_state=hidden_states,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def generate(self, *args, past_key_values: Cache | None = None, **kwargs):
        """Standard `generate()`, starting from a [`LoomCache`] so that positions follow BAGEL's counter.

        With `cache_implementation="static"` (a call argument or the generation config) transformers prepares the
        cache, a [`LoomStaticCache`], and compiles the decoding step where it compiles one (CUDA).
        """
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        token_types = kwargs.get("mm_token_type_ids")
        has_vit_positions = token_types is not None and bool((token_types == TokenType.VIT.value).any())
        if input_ids is not None and past_key_values is None:
            has_vit_positions = has_vit_positions or bool((input_ids == self.config.image_token_id).any())
        if has_vit_positions and kwargs.get("pixel_values") is None:
            raise ValueError(
                "The prompt holds image positions but no `pixel_values` were given; pass the processor's whole output "
                "(`model.generate(**processor(images=..., text=...))`)."
            )
        if past_key_values is None and not self._requests_static_cache(kwargs):
            past_key_values = LoomCache()
        return super().generate(*args, past_key_values=past_key_values, **kwargs)

    def _expand_inputs_for_generation(
        self, expand_size: int = 1, is_encoder_decoder: bool = False, input_ids=None, **kwargs
    ):
        """transformers repeats every input along its first dimension for `num_beams` / `num_return_sequences`; the
        packed ViT inputs (`pixel_values`: the patches of every image of the batch, `image_grid_hw`: one row per image)
        are repeated request by request instead, so that each copy of a request keeps its own images in order."""
        pixel_values, grids = kwargs.pop("pixel_values", None), kwargs.pop("image_grid_hw", None)
        if expand_size > 1 and pixel_values is not None:
            if grids is None:
                raise ValueError("`pixel_values` were given without `image_grid_hw` (the processor returns both).")
            token_types = kwargs.get("mm_token_type_ids")
            vit = (
                token_types == TokenType.VIT.value
                if token_types is not None
                else input_ids == self.config.image_token_id
            )
            patches_per_request = vit.sum(dim=-1).tolist()
            patches_per_image = (grids[:, 0] * grids[:, 1]).tolist()
            images_per_request, image = [], 0
            for patches in patches_per_request:
                start = image
                while patches > 0 and image < len(patches_per_image):
                    patches -= patches_per_image[image]
                    image += 1
                if patches != 0:
                    raise ValueError("`pixel_values` and `image_grid_hw` do not match the prompt's image positions.")
                images_per_request.append(image - start)
            pixel_values = torch.cat(
                [chunk.repeat(expand_size, 1) for chunk in pixel_values.split(patches_per_request)]
            )
            grids = torch.cat([chunk.repeat(expand_size, 1) for chunk in grids.split(images_per_request)])
        input_ids, kwargs = super()._expand_inputs_for_generation(expand_size, is_encoder_decoder, input_ids, **kwargs)
        if pixel_values is not None:
            kwargs["pixel_values"], kwargs["image_grid_hw"] = pixel_values, grids
        return input_ids, kwargs

    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs: dict) -> torch.LongTensor:
        """BAGEL positions for a prompt given without them (transformers would number its tokens 0, 1, 2, ..., but a
        whole image block shares one position): the blocks come from the prompt's markers, and the new tokens
        continue a given cache's counter (the cached part of the ids is never read again)."""
        input_ids = model_kwargs.get("input_ids", inputs_tensor)
        if input_ids is None or input_ids.ndim != 2 or input_ids.is_floating_point():  # embeddings: no markers to read
            return super()._prepare_position_ids_for_generation(inputs_tensor, model_kwargs)
        cache = model_kwargs.get("past_key_values")
        cached = cache.get_seq_length() if cache is not None else 0
        mask = model_kwargs.get("attention_mask")
        blocks = image_block_ids(
            input_ids[:, cached:], self.config.vision_start_token_id, self.config.vision_end_token_id
        )
        padding = mask if mask is not None and mask.ndim == 2 else None
        positions = rope_position_ids(blocks, next_positions(cache).to(input_ids.device), padding)
        return torch.cat([torch.zeros_like(input_ids[:, :cached]), positions], dim=-1)

    def _requests_static_cache(self, generate_kwargs: dict) -> bool:
        """Whether `generate()` will use a static cache: a call argument, else the call's config, else the model's
        (transformers' order of precedence)."""
        config = generate_kwargs.get("generation_config")
        if "cache_implementation" in generate_kwargs:  # even `None`: the call's word is final
            requested = generate_kwargs["cache_implementation"]
        elif config is not None and config.cache_implementation is not None:
            requested = config.cache_implementation
        else:
            requested = self.generation_config.cache_implementation
        return requested == "static"

    def _prepare_cache_for_generation(self, generation_config, model_kwargs: dict, *args, **kwargs):
        """transformers refuses a given cache beside a `cache_implementation`; a [`LoomStaticCache`] given where a
        static cache is asked for (a context built into one, as the pipeline decodes), or a [`LoomCache`] where a
        dynamic one is, is that cache, not a conflict."""
        given, requested = model_kwargs.get("past_key_values"), generation_config.cache_implementation
        if (isinstance(given, LoomStaticCache) and requested == "static") or (
            isinstance(given, LoomCache) and requested == "dynamic"
        ):
            generation_config.cache_implementation = None
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    def _prepare_static_cache(self, cache_implementation: str, batch_size: int, max_cache_len: int, *args, **kwargs):
        """transformers' static cache for `generate()` (sized as it sizes one), as a [`LoomStaticCache`]."""
        cache = super()._prepare_static_cache(cache_implementation, batch_size, max_cache_len, *args, **kwargs)
        if cache_implementation != "static":
            return cache
        return LoomStaticCache(self.config.get_text_config(decoder=True), max_cache_len=cache.get_max_length())

    def create_masks_for_generate(self, config, inputs_embeds, attention_mask, past_key_values, **kwargs):
        """The mask `generate()` prepares ahead of a compiled decoding step. A one-token query (a decoded token) sees
        every earlier position: the causal mask over the static cache. A longer query (a prompt, which may hold image
        blocks) keeps its padding mask, and the forward pass builds BAGEL's mask from its tokens."""
        if inputs_embeds.shape[1] != 1:
            return attention_mask
        return create_causal_mask(
            config=config.get_text_config(decoder=True),
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=None,  # BAGEL positions are not the packed-document positions transformers looks for
        )
