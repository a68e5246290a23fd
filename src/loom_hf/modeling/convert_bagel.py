"""Load an official BAGEL release folder (`ByteDance-Seed/BAGEL-7B-MoT` layout) as Loom components.

The release holds `llm_config.json` (a plain Qwen2 config), `vit_config.json` (a plain SigLIP config naming one layer
more than the weights hold), `ema.safetensors` (all weights, official key names), `ae.safetensors` (the FLUX
autoencoder in BFL key layout, `ae_config.json` only for non-FLUX sizes) and the Qwen2 tokenizer. Grid sizes and
layer counts are read from tensor shapes; every release tensor is either loaded or, for the two fixed sin-cos tables,
checked against the formula the model recomputes.
"""

import json
import logging
import math
import os
import re
from pathlib import Path

import torch
from accelerate import init_empty_weights
from accelerate.utils import set_module_tensor_to_device
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from huggingface_hub import split_torch_state_dict_into_shards
from huggingface_hub.utils import tqdm
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, GenerationConfig
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from .configuration_loom import LoomConfig, LoomTextConfig, LoomVisionConfig
from .entity_tokens import add_entity_tokens, fill_entity_rows, register_entity_tokens
from .image_processing_loom import LoomImageProcessor
from .modeling_loom import LoomForInterleavedGeneration, LoomPositionTable
from .processing_loom import LoomProcessor
from .quantization import StreamingQuantizer, check_quantization_backend

__all__ = ["load_bagel_release", "release_config", "release_shapes", "FLUX_AE_DEFAULTS", "REQUIRED_RELEASE_FILES"]

logger = logging.getLogger(__name__)

REQUIRED_RELEASE_FILES = ("llm_config.json", "vit_config.json", "ema.safetensors", "ae.safetensors")
FLUX_AE_DEFAULTS = {
    "resolution": 256,
    "in_channels": 3,
    "downsample": 8,
    "ch": 128,
    "out_ch": 3,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "z_channels": 16,
    "scale_factor": 0.3611,
    "shift_factor": 0.1159,
}
# BAGEL constants that its entry points hard-code rather than store.
LATENT_PATCH_SIZE = 2
CONNECTOR_ACT = "gelu_pytorch_tanh"

# Release key prefix -> Loom key prefix. The two sin-cos tables are handled separately.
KEY_RENAMES = (
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("vit_model.vision_model.", "model.vision_model."),
    ("connector.", "model.connector."),
    ("time_embedder.mlp.0.", "model.time_embedder.embedding.linear_1."),
    ("time_embedder.mlp.2.", "model.time_embedder.embedding.linear_2."),
    ("vae2llm.", "model.vae2llm."),
    ("llm2vae.", "llm2vae."),
)
POSITION_TABLES = ("vit_pos_embed.pos_embed", "latent_pos_embed.pos_embed")
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
FRAME_TABLE = "model.frame_embed.weight"
# Config fields the conversion cannot default: they fix the weights' shapes.
REQUIRED_FIELDS = {
    "llm_config.json": (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
    ),
    "vit_config.json": ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size"),
}


def _read_config(path: Path) -> dict:
    """A release JSON config; unreadable JSON, a non-object or a missing shape field raises an error naming the file."""
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"The release file {str(path)!r} is not valid JSON: {error}") from error
    if not isinstance(raw, dict):
        raise ValueError(f"The release file {str(path)!r} must hold a JSON object; got {type(raw).__name__}.")
    missing = [name for name in REQUIRED_FIELDS.get(path.name, ()) if name not in raw]
    if missing:
        raise ValueError(f"The release file {str(path)!r} lacks the field(s) {', '.join(missing)}.")
    return raw


def _open_safetensors(path: Path):
    """`safe_open(path)` reading each tensor with `pread` into memory of its own, with a truncated or corrupted file
    named in the error. (The default backend maps the whole file copy-on-write, which the kernel refuses for a release
    larger than the machine's memory: BAGEL-7B-MoT's 29 GB on a 24 GB machine.)"""
    try:
        return safe_open(path, framework="pt", backend="pread")
    except SafetensorError as error:
        raise ValueError(f"The release file {str(path)!r} is not a readable safetensors file: {error}") from error


def check_release_folder(release_dir: str | os.PathLike) -> Path:
    """Raise a clear error when the folder or one of its required files is missing."""
    path = Path(release_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"`release_dir` {str(path)!r} is not a folder.")
    missing = [name for name in REQUIRED_RELEASE_FILES if not (path / name).is_file()]
    has_tokenizer = (path / "tokenizer.json").is_file() or (
        (path / "vocab.json").is_file() and (path / "merges.txt").is_file()
    )
    if not has_tokenizer:
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if missing:
        pickled = sorted(p.name for p in path.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        hint = f" Only safetensors are read; found pickled files {pickled}." if pickled else ""
        raise FileNotFoundError(f"The BAGEL release folder {str(path)!r} is missing {', '.join(missing)}.{hint}")
    return path


def _square_side(rows: int, name: str) -> int:
    side = math.isqrt(rows)
    if side * side != rows:
        raise ValueError(f"`{name}` has {rows} rows, not a square grid.")
    return side


def _build_text_config(path: Path, shapes: dict[str, tuple[int, ...]]) -> LoomTextConfig:
    raw = _read_config(path / "llm_config.json")
    fields = {k: v for k, v in raw.items() if k in LoomTextConfig.__dataclass_fields__ or k == "rope_theta"}
    fields.update(qk_norm=True, tie_word_embeddings=False)
    config = LoomTextConfig(**fields)
    layers = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"language_model\.model\.layers\.(\d+)\.", k)))
    if layers != config.num_hidden_layers:
        raise ValueError(f"llm_config.json names {config.num_hidden_layers} layers but ema.safetensors holds {layers}.")
    return config


def _build_vision_config(path: Path, shapes: dict[str, tuple[int, ...]]) -> LoomVisionConfig:
    raw = _read_config(path / "vit_config.json")
    fields = {k: v for k, v in raw.items() if k in LoomVisionConfig.__dataclass_fields__ and k != "model_type"}
    layers = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"vit_model\..*\.layers\.(\d+)\.", k)))
    if layers != fields.get("num_hidden_layers", layers) - 1:
        logger.warning(
            "vit_config.json names %s layers; BAGEL drops the last one, but ema.safetensors holds %s. Using %s.",
            fields.get("num_hidden_layers"),
            layers,
            layers,
        )
    positions = shapes["vit_model.vision_model.embeddings.position_embedding.weight"][0]
    fields.update(num_hidden_layers=layers, max_num_patches_per_side=_square_side(positions, "position_embedding"))
    return LoomVisionConfig(**fields)


def _rename(key: str) -> str:
    for old, new in KEY_RENAMES:
        if key.startswith(old):
            return new + key[len(old) :]
    raise KeyError(f"ema.safetensors holds a key no Loom parameter matches: {key!r}")


def _release_tensor(release, key: str) -> torch.Tensor | None:
    """Release tensor `key` in the Loom layout (a convolution patch kernel becomes the linear layout); `None` for the
    two sin-cos tables, which are checked against the formula the model recomputes instead."""
    tensor = release.get_tensor(key)
    if key in POSITION_TABLES:
        side = _square_side(tensor.shape[0], key)
        expected = LoomPositionTable.compute(side, tensor.shape[1])
        if not torch.allclose(tensor.float(), expected, atol=1e-2 if tensor.dtype != torch.float32 else 1e-5):
            raise ValueError(f"`{key}` is not BAGEL's 2D sin-cos table; this release layout is not supported.")
        return None
    if key.endswith("patch_embedding.weight") and tensor.ndim == 4:
        # A convolution kernel [out, C, kh, kw] becomes the linear layout over (kh, kw, C) patches.
        tensor = tensor.permute(0, 2, 3, 1).reshape(tensor.shape[0], -1)
    return tensor


def _release_tensors(path: Path):
    """(Loom name, tensor) for every release weight, one at a time; the sin-cos tables are checked, not yielded."""
    with _open_safetensors(path / "ema.safetensors") as release:
        for key in release.keys():
            tensor = _release_tensor(release, key)
            if tensor is not None:
                yield _rename(key), tensor


def _check_names(expected: set[str], loaded: set[str], unexpected: list[str]) -> None:
    missing = sorted(expected - loaded - {FRAME_TABLE})
    if missing or unexpected:
        raise ValueError(f"ema.safetensors does not match the model: missing {missing}, unexpected {unexpected}.")


def _weight_dtype(model: LoomForInterleavedGeneration, name: str, dtype: torch.dtype | None) -> torch.dtype | None:
    """`dtype`, except float32 for the model's `_keep_in_fp32_modules` under float16 (as `from_pretrained` does)."""
    if dtype == torch.float16 and any(name.startswith(f"{module}.") for module in model._keep_in_fp32_modules):
        return torch.float32
    return dtype


def _load_model(
    path: Path, config: LoomConfig, dtype: torch.dtype | None, quantization_config=None
) -> LoomForInterleavedGeneration:
    """Build the model without allocating weights, then assign the release tensors one by one; with a
    `quantization_config` each weight it covers is quantized as it arrives, so the full-precision model never exists
    at once."""
    with init_empty_weights(include_buffers=False):
        model = LoomForInterleavedGeneration(config)
    quantizer = StreamingQuantizer(model, quantization_config) if quantization_config is not None else None
    expected = set(model.state_dict())
    loaded, unexpected = set(), []
    for name, tensor in _release_tensors(path):
        if name not in expected:
            unexpected.append(name)
            continue
        tensor = tensor.to(_weight_dtype(model, name, dtype) or tensor.dtype)
        if quantizer is None or not quantizer.assign(name, tensor):
            set_module_tensor_to_device(model, name, "cpu", value=tensor, dtype=tensor.dtype)
        loaded.add(name)
    _check_names(expected, loaded, unexpected)
    if model.model.frame_embed is not None:
        # BAGEL has no temporal table: a zero table adds nothing until it is trained.
        table = model.model.frame_embed.weight
        zeros = torch.zeros(table.shape, dtype=dtype or table.dtype)
        set_module_tensor_to_device(model, FRAME_TABLE, "cpu", value=zeros, dtype=zeros.dtype)
        _warn_zero_frame_table(config)
    if dtype is not None:
        # The recomputed tables and rotary frequencies are buffers, created in float32.
        for module in model.modules():
            for key, buffer in module._buffers.items():
                if buffer is not None and buffer.is_floating_point():
                    module._buffers[key] = buffer.to(dtype)
    if quantizer is not None:
        quantizer.finish()
    return model.eval()


def _warn_zero_frame_table(config: LoomConfig) -> None:
    logger.warning(
        "The BAGEL release has no temporal frame table; its %d rows start at zero (a no-op until trained).",
        config.max_frames,
    )


def _streamed_model(
    path: Path, config: LoomConfig, dtype: torch.dtype | None, processor: LoomProcessor, entity_tokens: tuple[str, ...]
) -> LoomForInterleavedGeneration:
    """The model on the meta device, each parameter with the dtype and shape `_load_model` would give it, whose
    `save_pretrained` writes its safetensors shards by reading each shard's tensors from the release, converting them
    as `_load_model` and `add_entity_tokens` do, writing the shard and dropping it: at most one shard is in memory."""
    with init_empty_weights(include_buffers=False):
        model = LoomForInterleavedGeneration(config)
    expected = set(model.state_dict())
    keys, unexpected = {}, []
    with _open_safetensors(path / "ema.safetensors") as release:
        for key in release.keys():
            name = _rename(key) if key not in POSITION_TABLES else None
            if name is None:
                continue
            if name not in expected:
                unexpected.append(name)
                continue
            keys[name] = key
            stored = _SAFETENSORS_DTYPES[release.get_slice(key).get_dtype()]
            shape, target = model.get_parameter(name).shape, _weight_dtype(model, name, dtype) or stored
            meta = torch.empty(shape, dtype=target, device="meta")
            set_module_tensor_to_device(model, name, "meta", value=meta, dtype=target)
    _check_names(expected, set(keys), unexpected)
    if model.model.frame_embed is not None:
        table = model.model.frame_embed.weight
        set_module_tensor_to_device(model, FRAME_TABLE, "meta", value=table, dtype=dtype or table.dtype)
        _warn_zero_frame_table(config)
    rows = model.get_input_embeddings().weight.shape[0]
    entity_rows = register_entity_tokens(model, processor, entity_tokens)[1:] if entity_tokens else ([], 0)
    if model.get_input_embeddings().weight.shape[0] != rows:
        raise ValueError(
            f"The tokenizer leaves no spare embedding rows for the entity tokens ({rows} rows); a streamed conversion "
            "does not grow the embedding. Load with `LoomInterleavedPipeline.from_bagel` and `save_pretrained`."
        )
    entity_matrices = {f"{prefix}.weight" for prefix in ("model.language_model.embed_tokens", "lm_head")}

    def converted(release, name: str) -> torch.Tensor:
        target = model.get_parameter(name)
        if name == FRAME_TABLE:
            return torch.zeros(target.shape, dtype=target.dtype)
        tensor = _release_tensor(release, keys[name]).to(target.dtype)
        if name in entity_matrices and entity_rows[0]:
            fill_entity_rows(tensor, *entity_rows)
        return tensor

    def save_pretrained(save_directory, safe_serialization: bool = True, variant=None, max_shard_size="50GB"):
        """`PreTrainedModel.save_pretrained`'s folder (config, generation config, shards, index), one shard at a
        time."""
        if not safe_serialization or variant is not None:
            raise ValueError("A streamed BAGEL conversion writes safetensors without a variant only.")
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        model.config.dtype = str(model.dtype).split(".")[1]
        model.config.architectures = [type(model).__name__]
        model.config.save_pretrained(directory)
        model.generation_config.save_pretrained(directory)
        split = split_torch_state_dict_into_shards(
            model.state_dict(),
            filename_pattern=SAFE_WEIGHTS_NAME.replace(".safetensors", "{suffix}.safetensors"),
            max_shard_size=max_shard_size,
        )
        sizes = {name: tensor.numel() * tensor.element_size() for name, tensor in model.state_dict().items()}
        with (
            _open_safetensors(path / "ema.safetensors") as release,
            tqdm(total=sum(sizes.values()), unit="B", unit_scale=True, desc="Converting") as progress,
        ):
            for filename, names in split.filename_to_tensors.items():
                shard = {}
                for name in names:
                    shard[name] = converted(release, name)
                    progress.update(sizes[name])
                save_file(shard, directory / filename, metadata={"format": "pt"})
                del shard
        if split.is_sharded:
            index = {
                "metadata": {"total_parameters": model.num_parameters(), **split.metadata},
                "weight_map": split.tensor_to_filename,
            }
            (directory / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    model.save_pretrained = save_pretrained
    return model.eval()


def _vae_diffusers_config(ae: dict) -> dict:
    levels = len(ae["ch_mult"])
    return {
        "in_channels": ae["in_channels"],
        "out_channels": ae["out_ch"],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [ae["ch"] * m for m in ae["ch_mult"]],
        "layers_per_block": ae["num_res_blocks"],
        "latent_channels": ae["z_channels"],
        "norm_num_groups": 32,
        "sample_size": 1024,
        "scaling_factor": ae["scale_factor"],
        "shift_factor": ae["shift_factor"],
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "mid_block_add_attention": True,
        "force_upcast": True,
    }


def _ae_params(path: Path) -> dict:
    """The release's autoencoder parameters: the FLUX defaults, or `ae_config.json` where a release has one."""
    config_file = path / "ae_config.json"
    return {**FLUX_AE_DEFAULTS, **(_read_config(config_file) if config_file.is_file() else {})}


def _load_vae(path: Path, dtype: torch.dtype | None) -> AutoencoderKL:
    """The FLUX autoencoder of the release as a diffusers `AutoencoderKL` (BFL keys converted)."""
    config = _vae_diffusers_config(_ae_params(path))
    try:
        checkpoint = load_file(path / "ae.safetensors")
    except SafetensorError as error:
        raise ValueError(f"The release file {str(path / 'ae.safetensors')!r} is not readable: {error}") from error
    converted = convert_ldm_vae_checkpoint(checkpoint, config)
    if len(converted) != len(checkpoint):
        raise ValueError(f"ae.safetensors has {len(checkpoint)} tensors but only {len(converted)} were converted.")
    vae = AutoencoderKL(**config)
    vae.load_state_dict(converted, strict=True)
    if dtype is not None:
        vae.to(dtype)
    return vae.eval()


def release_shapes(release_dir: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the release's `ema.safetensors`, read from its header (no weight is read)."""
    with _open_safetensors(Path(release_dir) / "ema.safetensors") as release:
        return {key: tuple(release.get_slice(key).get_shape()) for key in release.keys()}


def release_config(
    release_dir: str | os.PathLike,
    shapes: dict[str, tuple[int, ...]],
    vae_image_size: tuple[int, int, int] = (1024, 512, 16),
    vit_image_size: tuple[int, int, int] = (980, 224, 14),
    max_frames: int = 0,
) -> tuple[LoomConfig, LoomProcessor]:
    """The Loom config and processor of a release folder, from its JSON configs, its tokenizer and the `shapes` of
    its `ema.safetensors` tensors (`release_shapes`): everything needed to build the model on the meta device, or to
    size it, without reading a weight."""
    path = Path(release_dir)
    missing_heads = [k for k in ("vae2llm.weight", "latent_pos_embed.pos_embed") if k not in shapes]
    if missing_heads:
        raise ValueError(f"ema.safetensors lacks the generation heads {missing_heads}; an understanding-only release?")
    ae = _ae_params(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    processor = LoomProcessor(LoomImageProcessor(vae_image_size, vit_image_size), tokenizer)
    text_config = _build_text_config(path, shapes)
    if len(processor.tokenizer) > text_config.vocab_size:
        raise ValueError(f"The tokenizer has {len(processor.tokenizer)} tokens but the model {text_config.vocab_size}.")
    vision_config = _build_vision_config(path, shapes)
    if vision_config.patch_size != processor.image_processor.patch_size:
        raise ValueError(
            f"`vit_image_size` stride {processor.image_processor.patch_size} must equal the ViT patch size "
            f"{vision_config.patch_size}."
        )
    latent_dim = shapes["vae2llm.weight"][1]
    if latent_dim != LATENT_PATCH_SIZE**2 * ae["z_channels"]:
        raise ValueError(f"vae2llm takes {latent_dim} inputs, not {LATENT_PATCH_SIZE}²×{ae['z_channels']} latents.")
    config = LoomConfig(
        text_config=text_config,
        vision_config=vision_config,
        latent_channels=ae["z_channels"],
        latent_patch_size=LATENT_PATCH_SIZE,
        vae_downsample=2 ** (len(ae["ch_mult"]) - 1),
        max_latent_size=_square_side(shapes["latent_pos_embed.pos_embed"][0], "latent_pos_embed"),
        connector_act=CONNECTOR_ACT,
        max_frames=max_frames,
        image_token_id=processor.image_token_id,
        vision_start_token_id=processor.vision_start_token_id,
        vision_end_token_id=processor.vision_end_token_id,
    )
    return config, processor


def load_bagel_release(
    release_dir: str | os.PathLike,
    vae_image_size: tuple[int, int, int] = (1024, 512, 16),
    vit_image_size: tuple[int, int, int] = (980, 224, 14),
    dtype: torch.dtype | None = None,
    max_frames: int = 0,
    entity_tokens: tuple[str, ...] = (),
    quantization_config=None,
    streamed: bool = False,
) -> tuple[LoomForInterleavedGeneration, AutoencoderKL, LoomProcessor]:
    """Model, VAE and processor of a BAGEL release folder.

    Args:
        release_dir: folder in the `ByteDance-Seed/BAGEL-7B-MoT` layout.
        vae_image_size / vit_image_size: (max side, min side, stride) of the two image paths.
        dtype: cast the weights (default: as stored; the release is bfloat16).
        max_frames: rows of Loom's temporal frame table (zero-initialised; 0: no table).
        entity_tokens: Loom entity tokens to add to the tokenizer and place into spare embedding rows.
        quantization_config: a transformers quantization config (`TorchAoConfig(Int8WeightOnlyConfig())`, ...) for
            the model, applied weight by weight while the release is read; the VAE stays unquantized.
        streamed: return the model on the meta device, for conversion only: its `save_pretrained` writes the converted
            weights shard by shard from the release (what `loom convert-bagel` does), so a release larger than memory
            converts. Not with `quantization_config`.
    """
    if streamed and quantization_config is not None:
        raise ValueError("A streamed conversion writes the weights as stored; quantize when loading the result.")
    check_quantization_backend(quantization_config)
    path = check_release_folder(release_dir)
    shapes = release_shapes(path)
    config, processor = release_config(path, shapes, vae_image_size, vit_image_size, max_frames)
    vae = _load_vae(path, dtype)
    if streamed:
        model = _streamed_model(path, config, dtype, processor, entity_tokens)
    else:
        model = _load_model(path, config, dtype, quantization_config)
    model.generation_config = GenerationConfig(
        bos_token_id=processor.bos_token_id,
        eos_token_id=processor.eos_token_id,
        pad_token_id=processor.tokenizer.pad_token_id,
    )
    if entity_tokens and not streamed:
        add_entity_tokens(model, processor, entity_tokens)
    return model, vae, processor
