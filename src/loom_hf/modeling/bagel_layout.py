"""The tensor layout of an official BAGEL release, computed from its configs, and a safetensors writer that streams.

`ema_layout` gives the name, shape and dtype of every tensor in `ema.safetensors` (the official key names, i.e. the
official `Bagel.state_dict()`), `ae_layout` those of `ae.safetensors` (the FLUX autoencoder in BFL key layout), for a
release's `llm_config.json` / `vit_config.json` values and autoencoder parameters. With them a release can be sized
before any weight exists, or written one tensor at a time: `write_safetensors` writes the header from the layout and
then each tensor as it is made, which safetensors' own writer (it takes every tensor at once) cannot do for a file
larger than memory. The 14 B benchmark writes a random-weight BAGEL-7B-MoT (29 GB) this way on a 24 GB machine.
"""

import json
import math
import os
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch

__all__ = [
    "BAGEL_7B_LLM_CONFIG",
    "BAGEL_7B_VIT_CONFIG",
    "BAGEL_7B_MAX_LATENT_SIZE",
    "TensorSpec",
    "ema_layout",
    "ae_layout",
    "write_safetensors",
]

# The official BAGEL-7B-MoT `llm_config.json` (Qwen2.5-7B sizes; vocabulary padded to 152064 rows).
BAGEL_7B_LLM_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "model_type": "qwen2",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 131072,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 152064,
}
# The official `vit_config.json` (SigLIP so400m at 980 px, patch 14); BAGEL drops its last layer (26 are stored).
BAGEL_7B_VIT_CONFIG = {
    "architectures": ["SiglipVisionModel"],
    "model_type": "siglip_vision_model",
    "attention_dropout": 0.0,
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_size": 1152,
    "image_size": 980,
    "intermediate_size": 4304,
    "layer_norm_eps": 1e-06,
    "num_attention_heads": 16,
    "num_channels": 3,
    "num_hidden_layers": 27,
    "patch_size": 14,
}
# Every BAGEL-7B-MoT entry point passes `max_latent_size=64`: 64x64 latent tokens, 1024 px per side.
BAGEL_7B_MAX_LATENT_SIZE = 64
TIMESTEP_FREQUENCY_DIM = 256

_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


class TensorSpec(NamedTuple):
    """Shape and dtype of one stored tensor."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _decoder_layer(prefix: str, hidden: int, intermediate: int, kv: int, head_dim: int) -> dict[str, tuple]:
    """One MoT decoder layer: every projection, q/k norm, MLP and layer norm twice (`*_moe_gen` for the gen expert)."""
    shapes = {}
    for suffix in ("", "_moe_gen"):
        attn = f"{prefix}self_attn."
        shapes |= {
            f"{prefix}input_layernorm{suffix}.weight": (hidden,),
            f"{prefix}post_attention_layernorm{suffix}.weight": (hidden,),
            f"{attn}q_proj{suffix}.weight": (hidden, hidden),
            f"{attn}q_proj{suffix}.bias": (hidden,),
            f"{attn}k_proj{suffix}.weight": (kv, hidden),
            f"{attn}k_proj{suffix}.bias": (kv,),
            f"{attn}v_proj{suffix}.weight": (kv, hidden),
            f"{attn}v_proj{suffix}.bias": (kv,),
            f"{attn}o_proj{suffix}.weight": (hidden, hidden),
            f"{attn}q_norm{suffix}.weight": (head_dim,),
            f"{attn}k_norm{suffix}.weight": (head_dim,),
            f"{prefix}mlp{suffix}.gate_proj.weight": (intermediate, hidden),
            f"{prefix}mlp{suffix}.up_proj.weight": (intermediate, hidden),
            f"{prefix}mlp{suffix}.down_proj.weight": (hidden, intermediate),
        }
    return shapes


def _vit_layer(prefix: str, hidden: int, intermediate: int) -> dict[str, tuple]:
    shapes = {}
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        shapes |= {f"{prefix}self_attn.{name}.weight": (hidden, hidden), f"{prefix}self_attn.{name}.bias": (hidden,)}
    for name in ("layer_norm1", "layer_norm2"):
        shapes |= {f"{prefix}{name}.weight": (hidden,), f"{prefix}{name}.bias": (hidden,)}
    return shapes | {
        f"{prefix}mlp.fc1.weight": (intermediate, hidden),
        f"{prefix}mlp.fc1.bias": (intermediate,),
        f"{prefix}mlp.fc2.weight": (hidden, intermediate),
        f"{prefix}mlp.fc2.bias": (hidden,),
    }


def ema_layout(
    llm: Mapping,
    vit: Mapping,
    latent_channels: int = 16,
    latent_patch_size: int = 2,
    max_latent_size: int = BAGEL_7B_MAX_LATENT_SIZE,
    dtype: torch.dtype = torch.bfloat16,
) -> dict[str, TensorSpec]:
    """Every tensor of a release's `ema.safetensors` for its `llm_config.json` (`llm`) and `vit_config.json` (`vit`)
    values: the MoT language model, the ViT with one layer fewer than `vit` names (as BAGEL loads it), the connector,
    the generation heads and the two fixed sin-cos tables."""
    hidden, vocab = llm["hidden_size"], llm["vocab_size"]
    head_dim = llm.get("head_dim") or hidden // llm["num_attention_heads"]
    kv = llm["num_key_value_heads"] * head_dim
    shapes = {"language_model.model.embed_tokens.weight": (vocab, hidden)}
    for i in range(llm["num_hidden_layers"]):
        prefix = f"language_model.model.layers.{i}."
        shapes |= _decoder_layer(prefix, hidden, llm["intermediate_size"], kv, head_dim)
    shapes |= {
        "language_model.model.norm.weight": (hidden,),
        "language_model.model.norm_moe_gen.weight": (hidden,),
        "language_model.lm_head.weight": (vocab, hidden),
    }
    vit_hidden, patch = vit["hidden_size"], vit["patch_size"]
    vit_positions = (vit["image_size"] // patch) ** 2
    embeddings = "vit_model.vision_model.embeddings."
    shapes |= {
        f"{embeddings}patch_embedding.weight": (vit_hidden, patch * patch * vit.get("num_channels", 3)),
        f"{embeddings}patch_embedding.bias": (vit_hidden,),
        f"{embeddings}position_embedding.weight": (vit_positions, vit_hidden),
    }
    for j in range(vit["num_hidden_layers"] - 1):
        shapes |= _vit_layer(f"vit_model.vision_model.encoder.layers.{j}.", vit_hidden, vit["intermediate_size"])
    latent_dim = latent_patch_size**2 * latent_channels
    shapes |= {
        "vit_model.vision_model.post_layernorm.weight": (vit_hidden,),
        "vit_model.vision_model.post_layernorm.bias": (vit_hidden,),
        "connector.fc1.weight": (hidden, vit_hidden),
        "connector.fc1.bias": (hidden,),
        "connector.fc2.weight": (hidden, hidden),
        "connector.fc2.bias": (hidden,),
        "vit_pos_embed.pos_embed": (vit_positions, hidden),
        "time_embedder.mlp.0.weight": (hidden, TIMESTEP_FREQUENCY_DIM),
        "time_embedder.mlp.0.bias": (hidden,),
        "time_embedder.mlp.2.weight": (hidden, hidden),
        "time_embedder.mlp.2.bias": (hidden,),
        "vae2llm.weight": (hidden, latent_dim),
        "vae2llm.bias": (hidden,),
        "llm2vae.weight": (latent_dim, hidden),
        "llm2vae.bias": (latent_dim,),
        "latent_pos_embed.pos_embed": (max_latent_size**2, hidden),
    }
    return {name: TensorSpec(shape, dtype) for name, shape in shapes.items()}


def _conv(prefix: str, out_ch: int, in_ch: int, kernel: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (out_ch, in_ch, kernel, kernel), f"{prefix}.bias": (out_ch,)}


def _group_norm(prefix: str, channels: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,)}


def _resnet_block(prefix: str, in_ch: int, out_ch: int) -> dict[str, tuple]:
    shapes = _group_norm(f"{prefix}.norm1", in_ch) | _conv(f"{prefix}.conv1", out_ch, in_ch, 3)
    shapes |= _group_norm(f"{prefix}.norm2", out_ch) | _conv(f"{prefix}.conv2", out_ch, out_ch, 3)
    return shapes | (_conv(f"{prefix}.nin_shortcut", out_ch, in_ch, 1) if in_ch != out_ch else {})


def _mid_block(prefix: str, channels: int) -> dict[str, tuple]:
    attn = _group_norm(f"{prefix}.attn_1.norm", channels)
    for name in ("q", "k", "v", "proj_out"):
        attn |= _conv(f"{prefix}.attn_1.{name}", channels, channels, 1)
    block_1 = _resnet_block(f"{prefix}.block_1", channels, channels)
    return block_1 | attn | _resnet_block(f"{prefix}.block_2", channels, channels)


def ae_layout(ae: Mapping, dtype: torch.dtype = torch.float32) -> dict[str, TensorSpec]:
    """Every tensor of a release's `ae.safetensors` for FLUX-autoencoder parameters `ae` (`ch`, `ch_mult`,
    `num_res_blocks`, `in_channels`, `out_ch`, `z_channels`), in the BFL key layout: the encoder halves the resolution
    after every level but the last and ends in mean and log-variance; the decoder mirrors it with one block more per
    level."""
    ch, mult, blocks, z = ae["ch"], list(ae["ch_mult"]), ae["num_res_blocks"], ae["z_channels"]
    shapes = _conv("encoder.conv_in", ch, ae["in_channels"], 3)
    block_in = ch
    for i, m in enumerate(mult):
        for j in range(blocks):
            shapes |= _resnet_block(f"encoder.down.{i}.block.{j}", block_in, ch * m)
            block_in = ch * m
        if i != len(mult) - 1:
            shapes |= _conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
    shapes |= _mid_block("encoder.mid", block_in)
    shapes |= _group_norm("encoder.norm_out", block_in) | _conv("encoder.conv_out", 2 * z, block_in, 3)

    block_in = ch * mult[-1]
    shapes |= _conv("decoder.conv_in", block_in, z, 3) | _mid_block("decoder.mid", block_in)
    for i in reversed(range(len(mult))):
        for j in range(blocks + 1):
            shapes |= _resnet_block(f"decoder.up.{i}.block.{j}", block_in, ch * mult[i])
            block_in = ch * mult[i]
        if i != 0:
            shapes |= _conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
    shapes |= _group_norm("decoder.norm_out", block_in) | _conv("decoder.conv_out", ae["out_ch"], block_in, 3)
    return {name: TensorSpec(shape, dtype) for name, shape in shapes.items()}


def _header(layout: Mapping[str, TensorSpec], metadata: Mapping[str, str] | None) -> bytes:
    """The safetensors header: little-endian u64 length, then JSON padded with spaces to a multiple of 8 bytes."""
    entries: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, spec in layout.items():
        if spec.dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"`{name}` has dtype {spec.dtype}, which safetensors cannot store.")
        entries[name] = {
            "dtype": _SAFETENSORS_DTYPES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def write_safetensors(
    path: str | os.PathLike,
    layout: Mapping[str, TensorSpec],
    make_tensor: Callable[[str, TensorSpec], torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Write a safetensors file holding the tensors of `layout`, in its order, each made by `make_tensor(name, spec)`
    just before it is written, so that one tensor at a time is in memory. Returns the file size in bytes.

    A made tensor must have the spec's shape and dtype (checked: a mismatch would corrupt the offsets)."""
    with open(path, "wb") as file:
        file.write(_header(layout, metadata))
        for name, spec in layout.items():
            tensor = make_tensor(name, spec)
            if tuple(tensor.shape) != tuple(spec.shape) or tensor.dtype != spec.dtype:
                raise ValueError(
                    f"`{name}` was made as {tuple(tensor.shape)} {tensor.dtype}, but the layout says "
                    f"{tuple(spec.shape)} {spec.dtype}."
                )
            file.write(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
        return file.tell()
