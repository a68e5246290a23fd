"""Our pipeline against the official BAGEL inferencer: the same random weights, one process, times as ratios.

    python benchmarks/bench_official.py --official-dir /path/to/Bagel [--threads 1] [--repeats 5]

`--official-dir` is a checkout of github.com/ByteDance-Seed/Bagel. Its code is imported from there (through
`sys.path`) and never copied here. The script builds a small BAGEL with the official classes (hidden 256, 4 MoT layers,
a 2-layer ViT of width 128, a FLUX-shaped VAE at a quarter of its channels), draws every weight at random (the
zero-initialised `llm2vae` head too; norm weights near 1; only the two fixed sin-cos tables are left as they are),
writes it as an official release folder into a temporary directory and loads that folder with
`LoomInterleavedPipeline.from_bagel`. Then, at 128 px, float32, on CPU:

- `t2i`: text to image, 10 Euler steps, text guidance 4.0, image guidance 1.0;
- `t2i_unguided`: the same without guidance, one forward per step on both sides: set beside `t2i`, it splits the
  guided call into its first branch and what the second costs (a second forward there, a second batch row here);
- `edit`: an input image and an instruction, 10 steps, text guidance 4.0 and image guidance 2.0;
- `understand`: an image and a question, 32 greedy new tokens;
- `understand_compiled`: the same, decoding from a static cache with a compiled decoding step
  (`generation_config.cache_implementation = "static"`, which `generate()` compiles by itself on CUDA; here forced on
  CPU with transformers' testing switch, in inductor's default mode: CUDA graphs need CUDA);
- `t2i_compiled`, `edit_compiled`: `t2i` and `edit` with our model's forward under `torch.compile` (inductor's default
  mode, what `pipe.model.compile()` does; the official side stays eager, as it runs).

Guidance applies at every step (interval (0, 1]), timestep shift 3.0. Parity comes first and the script stops when it
fails: from the same initial noise the final latents of both agree within 1e-3, and the 32 generated tokens are the
same (and none is the end token, so both sides decode the full count). Then each workload runs `--warmup` times and
`--repeats` times more on each side, the two sides taking turns (who goes first alternates); a time covers one
inference call (preprocessing, context encoding, sampling or decoding, up to the latent: no VAE decode) and no
loading. Reported per workload: the median time of each side and official/ours (above 1: ours is faster), with the
lowest and highest per-repeat ratio. For `understand` a 1-token run is timed as well, and the cost of one decoded
token is (t(32 tokens) - t(1 token)) / 31 on each side. One JSON line per workload, then a markdown table.

`--profile WORKLOAD` (one of the names above) times nothing: after the parity round and the warmup it runs that
workload `--repeats` times on each side under `torch.profiler` (with input shapes) and prints, per side, the operators
that took the most time, once by name and once by name and input shapes: where a side spends its time, and whether an
operator costs more than its arithmetic (a 512 KB elementwise op faulted in page by page, say).

A reference bounds what any decode path on transformers' generation stack can gain here: `stock_decode` times
transformers' own `Qwen3ForCausalLM` (q/k norms and q/k/v biases, the shape of BAGEL's understanding expert), loaded
with our model's understanding weights, decoding through `generate()` after a text prompt as long as our
understanding context, against the official understanding call; only the cost per decoded token is compared. Its
parity check: the stock model's 32 greedy tokens equal our model's on that prompt.

What runs on the official side differs from its GPU path only here (all in this process; its files are untouched):

1. `flash_attn`: flash-attn does not build without CUDA, so a stand-in module of that name is put into
   `sys.modules`. Its `flash_attn_varlen_func` runs `torch.nn.functional.scaled_dot_product_attention` once per
   packed sequence; `causal=True` masks as flash-attn does when there are fewer queries than keys (the queries are
   the last keys: aligned bottom-right).
2. float32: `modeling/bagel/qwen2_navit.py` and `modeling/bagel/siglip_navit.py` cast attention and MLP inputs to
   bfloat16 by hand (on GPU they run under bfloat16 autocast). In those two modules the name `torch` is replaced by a
   view of torch whose `bfloat16` is `float32`, so the model runs in float32 like ours.
3. The VAE encodes to its posterior mean (`vae.reg.sample = False`, an attribute of the official class), as ours
   does; the official default samples.
4. `InterleaveInferencer.decode_image` is replaced on the instance by one that returns the packed latent, so the
   official call ends at the latent, like ours with `output_type="latent"`.
5. The `tqdm` progress bar of `Bagel.generate_image` is switched off (ours runs with its progress bar disabled).
6. Only where the packages are missing: `data/transforms.py` imports `torchvision` and `cv2`. `cv2` is used by none
   of the code run here and becomes an empty module; for `torchvision` a stand-in holds the three transforms the
   official `ImageTransform` uses, on PIL images as torchvision runs them (`resize`: PIL bicubic; `ToTensor`: bytes
   / 255, channels first; `Normalize`: (x - mean) / std). The CPU torchvision that matches torch 2.13 is not on the
   registries this project reaches (the one there is built for CUDA and does not import).
7. transformers 5 (ours needs it; the official code was written for 4.49): its configs no longer carry
   `pad_token_id`, so the LLM config gets `pad_token_id = None`; and its table of RoPE initialisers lost the
   "default" entry the official Qwen2 rotary embedding looks up, so the official `modeling_qwen2` module sees a copy
   of the table with plain RoPE (inverse frequencies theta^(-2i/d), scaling 1) under that name.

The official side also needs `einops` (`pip install einops==0.8.2`). Its `generate_text` is wrapped on the model
instance only to read the token ids it returns. Its decoder runs one step more than tokens kept (it is primed with
the start token and `max_think_token_n` counts that token), so it is asked for 33 to keep 32.
"""

import argparse
import importlib.machinery
import json
import statistics
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from transformers import CompileConfig, Qwen3Config, Qwen3ForCausalLM

from loom_hf import LoomInterleavedPipeline

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")
IMAGE_SIZE = 128
LATENT_GRID = IMAGE_SIZE // 16  # VAE downsample 8, latent patches 2 x 2
VAE_IMAGE_SIZE = (128, 64, 16)  # (max side, min side, stride): a 128 px image passes unchanged.
VIT_IMAGE_SIZE = (112, 56, 14)  # the ViT sees it at 112 px: 8 x 8 patches.
PROMPT = "A red square above a blue circle."
INSTRUCTION = "Make the square green."
QUESTION = "What is drawn here?"
# What `make_workloads` builds (each `*_1` partner of a text workload is timed for the cost per token only).
WORKLOAD_NAMES = (
    "t2i",
    "t2i_unguided",
    "edit",
    "t2i_compiled",
    "edit_compiled",
    "understand",
    "understand_compiled",
    "stock_decode",
)


# ---------------------------------------------------------------- stand-ins for the official code's CPU gaps


def varlen_attention(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q=None,
    max_seqlen_k=None,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    **_unused,
):
    """flash-attn's packed attention on (tokens, heads, head_dim) tensors, one SDPA call per sequence."""
    out = q.new_empty(q.shape[0], q.shape[1], v.shape[2])
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    gqa = q.shape[1] != k.shape[1]
    for q0, q1, k0, k1 in zip(bounds_q[:-1], bounds_q[1:], bounds_k[:-1], bounds_k[1:]):
        queries, keys = q1 - q0, k1 - k0
        mask, is_causal = None, False
        if causal and queries == keys:
            is_causal = True
        elif causal and queries > 1:
            # The queries are the last `queries` keys: query i sees keys up to keys - queries + i.
            mask = torch.ones(queries, keys, dtype=torch.bool, device=q.device).tril(keys - queries)
        # (1, heads, tokens, head_dim): with a batch axis torch picks its fused CPU kernel (without one, the slow
        # reference path), and `enable_gqa` shares the key/value heads as flash-attn does, without copying them.
        attended = F.scaled_dot_product_attention(
            q[q0:q1].transpose(0, 1)[None],
            k[k0:k1].transpose(0, 1)[None],
            v[k0:k1].transpose(0, 1)[None],
            attn_mask=mask,
            is_causal=is_causal,
            scale=softmax_scale,
            enable_gqa=gqa,
        )
        out[q0:q1] = attended[0].transpose(0, 1)
    return out


def stand_in_module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # transformers asks find_spec about flash_attn
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def torchvision_stand_in() -> None:
    """The three torchvision transforms the official `ImageTransform` applies to PIL images."""

    class InterpolationMode:
        BICUBIC = Image.Resampling.BICUBIC

    def resize(image, size, interpolation=InterpolationMode.BICUBIC, antialias=True):
        height, width = size
        return image.resize((width, height), interpolation)

    class ToTensor:
        def __call__(self, image):
            return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float().div(255)

    class Normalize:
        def __init__(self, mean, std, inplace=False):
            self.mean, self.std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]

        def __call__(self, tensor):
            return (tensor - self.mean) / self.std

    functional = stand_in_module("torchvision.transforms.functional", resize=resize)
    transforms = stand_in_module(
        "torchvision.transforms",
        ToTensor=ToTensor,
        Normalize=Normalize,
        InterpolationMode=InterpolationMode,
        functional=functional,
    )
    stand_in_module("torchvision", transforms=transforms)


def default_rope_parameters(config, device=None, **_unused):
    """Plain RoPE frequencies (transformers 5 dropped the "default" entry the official Qwen2 rotary table looks up)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / head_dim
    return 1.0 / (config.rope_theta**exponents), 1.0


class Float32Torch(types.ModuleType):
    """torch as a module sees it, except that `bfloat16` is `float32`."""

    bfloat16 = torch.float32

    def __getattr__(self, name):
        return getattr(torch, name)


def import_official(official_dir: Path) -> tuple[types.SimpleNamespace, list[str]]:
    """Import the official modules with the stand-ins in place; return them and the stand-ins used."""
    if not (official_dir / "inferencer.py").is_file():
        raise SystemExit(f"--official-dir {official_dir} is not a checkout of ByteDance-Seed/Bagel (no inferencer.py).")
    used = ["flash_attn"]
    stand_in_module("flash_attn", flash_attn_varlen_func=varlen_attention)  # patch 1
    # Patch 6, only for what does not import.
    for name, install in (("cv2", lambda: stand_in_module("cv2")), ("torchvision", torchvision_stand_in)):
        try:
            __import__(f"{name}.transforms" if name == "torchvision" else name)
        except Exception:  # missing, or (torchvision built for CUDA) failing on import
            for key in [key for key in sys.modules if key == name or key.startswith(name + ".")]:
                del sys.modules[key]
            install()
            used.append(name)
    sys.path.insert(0, str(official_dir))
    import data.data_utils as data_utils
    import data.transforms as transforms
    import inferencer
    import modeling.autoencoder as autoencoder
    import modeling.bagel as bagel
    import modeling.bagel.bagel as bagel_module
    import modeling.bagel.qwen2_navit as qwen2_navit
    import modeling.bagel.siglip_navit as siglip_navit
    import modeling.qwen2.modeling_qwen2 as modeling_qwen2
    from modeling.qwen2 import Qwen2Tokenizer

    # Patch 7 (the table is copied: transformers' own stays as it is).
    modeling_qwen2.ROPE_INIT_FUNCTIONS = {**modeling_qwen2.ROPE_INIT_FUNCTIONS, "default": default_rope_parameters}
    for module in (qwen2_navit, siglip_navit):
        module.torch = Float32Torch("torch")  # patch 2
    bagel_module.tqdm = lambda iterable, **_: iterable  # patch 5
    official = types.SimpleNamespace(
        bagel=bagel,
        autoencoder=autoencoder,
        data_utils=data_utils,
        transforms=transforms,
        inferencer=inferencer,
        Qwen2Tokenizer=Qwen2Tokenizer,
    )
    return official, used


# ---------------------------------------------------------------- the random release


def release_configs(args: argparse.Namespace) -> tuple[dict, dict, dict]:
    llm = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": args.vocab_size,
        "hidden_size": args.hidden_size,
        "intermediate_size": 4 * args.hidden_size,
        "num_hidden_layers": args.layers,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-06,
        "tie_word_embeddings": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": 4096,
        "max_window_layers": args.layers,
        "torch_dtype": "float32",
        "bos_token_id": 573,
        "eos_token_id": 575,
    }
    vit = {
        "model_type": "siglip_vision_model",
        "hidden_size": 128,
        "intermediate_size": 512,
        # A release names one layer more than it holds: BAGEL drops the last one.
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "num_channels": 3,
        "image_size": 980,
        "patch_size": 14,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-06,
        "attention_dropout": 0.0,
    }
    # The FLUX autoencoder's layout at a quarter of its channels.
    ae = {
        "resolution": 256,
        "in_channels": 3,
        "downsample": 8,
        "ch": 32,
        "out_ch": 3,
        "ch_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "z_channels": 16,
        "scale_factor": 0.3611,
        "shift_factor": 0.1159,
    }
    return llm, vit, ae


def randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Every weight drawn at random: norms near 1, matrices with variance 1 / fan-in, biases small."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("pos_embed"):
                continue  # the fixed 2D sin-cos tables (a release must hold exactly these)
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            elif param.ndim == 1:
                param.copy_(0.1 * noise)
            elif "embed_tokens" in name or "position_embedding" in name:
                param.copy_(noise)
            else:
                param.copy_(noise / param[0].numel() ** 0.5)  # fan-in: inputs of one output (convs: x k x k)


def build_official(official, release: Path, args: argparse.Namespace):
    """The official model, VAE and inferencer built the way its loader builds them, with random weights, and the
    release folder written from them."""
    llm, vit, ae = release_configs(args)
    (release / "llm_config.json").write_text(json.dumps(llm, indent=2))
    (release / "vit_config.json").write_text(json.dumps(vit, indent=2))
    (release / "ae_config.json").write_text(json.dumps(ae, indent=2))
    for name in TOKENIZER_FILES:
        (release / name).write_bytes((args.tokenizer_dir / name).read_bytes())

    bagel = official.bagel
    llm_config = bagel.Qwen2Config.from_json_file(str(release / "llm_config.json"))
    llm_config.qk_norm = True
    llm_config.tie_word_embeddings = False
    llm_config.layer_module = "Qwen2MoTDecoderLayer"
    llm_config.pad_token_id = None  # patch 7: transformers 4 configs had this attribute by default
    vit_config = bagel.SiglipVisionConfig.from_json_file(str(release / "vit_config.json"))
    vit_config.rope = False
    vit_config.num_hidden_layers -= 1
    vae_params = official.autoencoder.AutoEncoderParams(**ae)
    config = bagel.BagelConfig(
        visual_gen=True,
        visual_und=True,
        llm_config=llm_config,
        vit_config=vit_config,
        vae_config=vae_params,
        vit_max_num_patch_per_side=70,
        connector_act="gelu_pytorch_tanh",
        latent_patch_size=2,
        max_latent_size=64,
    )
    torch.manual_seed(args.seed)
    model = bagel.Bagel(bagel.Qwen2ForCausalLM(llm_config), bagel.SiglipVisionModel(vit_config), config)
    model.vit_model.vision_model.embeddings.convert_conv2d_to_linear(vit_config)
    vae = official.autoencoder.AutoEncoder(vae_params)
    generator = torch.Generator().manual_seed(args.seed)
    randomize(model, generator)
    randomize(vae, generator)
    model, vae = model.float().eval(), vae.float().eval()
    vae.reg.sample = False  # patch 3: the posterior mean
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, release / "ema.safetensors")
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, release / "ae.safetensors")

    tokenizer = official.Qwen2Tokenizer.from_pretrained(str(release))
    tokenizer, new_token_ids, _ = official.data_utils.add_special_tokens(tokenizer)
    inferencer = official.inferencer.InterleaveInferencer(
        model,
        vae,
        tokenizer,
        official.transforms.ImageTransform(*VAE_IMAGE_SIZE),
        official.transforms.ImageTransform(*VIT_IMAGE_SIZE),
        new_token_ids,
    )
    # Patch 4: end at the packed latent (ours: output_type="latent").
    inferencer.decode_image = lambda latent, image_shape: latent
    generated = []
    generate_text = model.generate_text

    def recording_generate_text(**kwargs):
        ids = generate_text(**kwargs)
        generated.append(ids[:, 0].tolist())
        return ids

    model.generate_text = recording_generate_text
    return inferencer, generated


# ---------------------------------------------------------------- workloads


@dataclass
class Workload:
    name: str
    official: Callable[[], object]  # returns the final latent (diffusers layout) or the new token ids
    ours: Callable[[], object]
    tokens: int | None = None  # text workloads: how many new tokens both sides must decode
    parity: Callable[[], dict] | None = None  # a workload whose sides compute different things checks itself
    per_token_only: bool = False  # the sides' whole calls differ (what they prefill): compare decoded tokens only


def to_diffusers_layout(tokens: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Packed `(h·w, 2·2·16)` latent tokens as a diffusers latent `(1, 16, 2h, 2w)`."""
    return tokens.view(grid_h, grid_w, 2, 2, 16).permute(4, 0, 2, 1, 3).reshape(1, 16, 2 * grid_h, 2 * grid_w)


def initial_noise(seed: int) -> torch.Tensor:
    """What the official `prepare_vae_latent` draws from the global generator right after `manual_seed(seed)`."""
    torch.manual_seed(seed)
    return torch.randn(LATENT_GRID * LATENT_GRID, 64)


def test_image(seed: int) -> Image.Image:
    """Smooth colour fields, a square and some noise, at the benchmark size."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / IMAGE_SIZE
    pixels = np.stack([xs, ys, 1 - xs * ys], axis=-1) * 200 + rng.normal(0, 20, (IMAGE_SIZE, IMAGE_SIZE, 3))
    pixels[IMAGE_SIZE // 4 : IMAGE_SIZE // 2, IMAGE_SIZE // 4 : IMAGE_SIZE // 2] = (220, 30, 30)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def stock_decoder(pipe: LoomInterleavedPipeline) -> Qwen3ForCausalLM:
    """transformers' own Qwen3 (q/k norms, q/k/v biases: the shape of BAGEL's understanding expert) holding our
    model's understanding weights. On text it is the same decoder; decoding through the same `generate()`, it shows
    what transformers' generation stack itself costs per token at this size."""
    text = pipe.model.config.text_config
    config = Qwen3Config(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
        rms_norm_eps=text.rms_norm_eps,
        rope_parameters=dict(text.rope_parameters),
        max_position_embeddings=text.max_position_embeddings,
        attention_bias=True,
        tie_word_embeddings=False,
    )
    stock = Qwen3ForCausalLM(config).eval()
    for layer in stock.model.layers:
        layer.self_attn.o_proj.register_parameter("bias", None)  # Qwen3's `attention_bias` covers o too; Qwen2's not
    prefix = "model.language_model."
    weights = {
        "model." + name[len(prefix) :]: tensor
        for name, tensor in pipe.model.state_dict().items()
        if name.startswith(prefix) and "moe_gen" not in name
    }
    weights["lm_head.weight"] = pipe.model.lm_head.weight
    stock.load_state_dict(weights, strict=True)
    return stock


def stock_workloads(
    pipe: LoomInterleavedPipeline,
    *,
    image: Image.Image,
    official: dict[int, Callable[[], object]],
    tokens: int,
) -> list[Workload]:
    """The official understanding calls (`official`: the call that decodes n tokens, for n = `tokens` and 1) against
    transformers' stock decoder (`stock_decoder`) decoding as many tokens after a text prompt as long as our
    understanding context (ViT tokens included). Only the cost per decoded token is compared; parity is the stock
    model's tokens against our model's on that prompt."""
    stock = stock_decoder(pipe)
    # + 1: the start token our decoding appends to the context before the first new token.
    context = pipe.encode_context([image, QUESTION], use_vae=False, image_free=False).cond.get_seq_length() + 1
    words = pipe.processor.tokenizer(" ".join([QUESTION] * context), add_special_tokens=False).input_ids
    prompt = torch.tensor([words[:context]])

    def decode(model: torch.nn.Module, count: int) -> list[int]:
        sequences = model.generate(
            input_ids=prompt, max_new_tokens=count, min_new_tokens=count, do_sample=False, eos_token_id=None
        )
        return sequences[0, context:].tolist()

    def parity() -> dict:
        ours, theirs = decode(pipe.model, tokens), decode(stock, tokens)
        if ours != theirs:
            raise SystemExit(f"PARITY FAILED (stock decoder): the tokens differ\nstock {theirs}\nours  {ours}")
        return {"tokens_equal_to_ours": True, "tokens": tokens, "context_tokens": context}

    return [
        Workload(
            "stock_decode",
            official=official[tokens],
            ours=lambda: decode(stock, tokens),
            tokens=tokens,
            parity=parity,
            per_token_only=True,
        ),
        Workload("stock_decode_1", official=official[1], ours=lambda: decode(stock, 1), tokens=1, parity=dict),
    ]


def with_generation_config(pipe: LoomInterleavedPipeline, call: Callable[[], object], **values) -> Callable[[], object]:
    """`call` with these attributes of the model's generation config set for its duration (then restored)."""

    def run():
        config = pipe.model.generation_config
        saved = {name: getattr(config, name) for name in values}
        for name, value in values.items():
            setattr(config, name, value)
        try:
            return call()
        finally:
            for name, value in saved.items():
                setattr(config, name, value)

    return run


def compiled_decoding(pipe: LoomInterleavedPipeline, call: Callable[[], object]) -> Callable[[], object]:
    """`call` with the model's generation config asking for a static cache and a compiled decoding step.

    On CUDA `generate()` compiles by itself (with CUDA graphs); on a CPU only transformers' testing switch
    `_compile_all_devices` makes it, and the mode is inductor's default (CUDA graphs need CUDA). The first calls,
    parity and warmup, pay for the compilation.
    """
    compile_config = CompileConfig(fullgraph=True, mode="default")
    compile_config._compile_all_devices = True
    return with_generation_config(pipe, call, cache_implementation="static", compile_config=compile_config)


def compiled_model(pipe: LoomInterleavedPipeline, call: Callable[[], object]) -> Callable[[], object]:
    """`call` with the model's forward compiled by `torch.compile` (inductor's default mode, as `pipe.model.compile()`
    compiles it) for its duration. One compiled forward serves every call, so only the first calls, parity and
    warmup, pay for the compilation."""
    compiled_forward = torch.compile(pipe.model.forward)

    def run():
        pipe.model.forward = compiled_forward
        try:
            return call()
        finally:
            del pipe.model.forward  # the class's own forward again

    return run


def make_workloads(inferencer, generated: list, pipe, args: argparse.Namespace) -> list[Workload]:
    image = test_image(args.seed)
    latents = to_diffusers_layout(initial_noise(args.seed), LATENT_GRID, LATENT_GRID)
    official_image_kwargs = dict(
        cfg_text_scale=4.0,
        cfg_interval=[0.0, 1.0],
        timestep_shift=3.0,
        num_timesteps=args.steps + 1,
        cfg_renorm_type="global",
        cfg_renorm_min=0.0,
    )
    our_image_kwargs = dict(
        task="image",
        num_inference_steps=args.steps,
        guidance_scale=4.0,
        guidance_interval=(0.0, 1.0),
        timestep_shift=3.0,
        latents=latents,
        output_type="latent",
    )

    def official_image(inputs, **kwargs):
        def call():
            torch.manual_seed(args.seed)  # the official code draws its initial noise from the global generator
            (latent,) = inferencer.interleave_inference(inputs, **{**official_image_kwargs, **kwargs})
            return to_diffusers_layout(latent, LATENT_GRID, LATENT_GRID)

        return call

    def our_image(inputs, **kwargs):
        return lambda: pipe(inputs, **{**our_image_kwargs, **kwargs}).images[0]

    def understand(tokens):
        def official():
            inferencer.interleave_inference(
                [image, QUESTION], understanding_output=True, do_sample=False, max_think_token_n=tokens + 1
            )
            return generated[-1][1:]  # without the start token the decoder is primed with

        def ours():
            return list(pipe([image, QUESTION], task="text", max_new_tokens=tokens).segments[0].token_ids)

        return Workload("understand_1" if tokens == 1 else "understand", official, ours, tokens)

    full, short = understand(args.max_new_tokens), understand(1)  # with the full run: the cost of one decoded token
    official_understanding = {full.tokens: full.official, 1: short.official}
    compiled = {  # the same calls decoding from a static cache through a compiled step (see `compiled_decoding`)
        name: Workload(name, workload.official, compiled_decoding(pipe, workload.ours), workload.tokens)
        for name, workload in (("understand_compiled", full), ("understand_compiled_1", short))
    }
    t2i = Workload(
        "t2i",
        official_image([PROMPT], cfg_img_scale=1.0, image_shapes=(IMAGE_SIZE, IMAGE_SIZE)),
        our_image([PROMPT], image_guidance_scale=1.0, height=IMAGE_SIZE, width=IMAGE_SIZE),
    )
    edit = Workload(
        "edit",
        official_image([image, INSTRUCTION], cfg_img_scale=2.0),
        our_image([image, INSTRUCTION], image_guidance_scale=2.0),
    )
    return [
        t2i,
        Workload(  # without guidance both sides run one forward per step: what the guided t2i gains is its branch
            "t2i_unguided",
            official_image([PROMPT], cfg_text_scale=1.0, cfg_img_scale=1.0, image_shapes=(IMAGE_SIZE, IMAGE_SIZE)),
            our_image([PROMPT], guidance_scale=1.0, image_guidance_scale=1.0, height=IMAGE_SIZE, width=IMAGE_SIZE),
        ),
        edit,
        *(Workload(f"{w.name}_compiled", w.official, compiled_model(pipe, w.ours)) for w in (t2i, edit)),
        full,
        short,
        *compiled.values(),
        *stock_workloads(pipe, image=image, official=official_understanding, tokens=full.tokens),
    ]


def check_parity(workload: Workload, noise: torch.Tensor, atol: float) -> dict:
    """Run both sides once; stop the benchmark when their outputs differ."""
    if workload.parity is not None:
        return workload.parity()
    official, ours = workload.official(), workload.ours()
    failed = f"PARITY FAILED ({workload.name}):"
    if workload.tokens is not None:
        if official != ours:
            raise SystemExit(f"{failed} the tokens differ\nofficial {official}\nours     {ours}")
        if len(ours) != workload.tokens:
            raise SystemExit(
                f"{failed} the random model ended after {len(ours)} of {workload.tokens} tokens; try another --seed"
            )
        return {"tokens_equal": True, "tokens": len(ours)}
    if official.shape != ours.shape:
        raise SystemExit(f"{failed} latent shapes {tuple(official.shape)} and {tuple(ours.shape)}")
    diff = (official - ours.float()).abs().max().item()
    if diff > atol:
        raise SystemExit(f"{failed} the final latents differ by up to {diff:.3g} (tolerance {atol})")
    moved = (official - to_diffusers_layout(noise, LATENT_GRID, LATENT_GRID)).abs().max().item()
    return {"latent_max_abs_diff": float(f"{diff:.3g}"), "latent_max_abs_change_from_noise": round(moved, 2)}


def time_alternately(workloads: list[Workload], warmup: int, repeats: int) -> dict[str, tuple[list, list]]:
    """Seconds per call, official and ours, taking turns; who goes first alternates from one repeat to the next."""
    times = {workload.name: ([], []) for workload in workloads}
    for repeat in range(warmup + repeats):
        for workload in workloads:
            sides = [(0, workload.official), (1, workload.ours)]
            for side, call in sides if repeat % 2 == 0 else sides[::-1]:
                start = time.perf_counter()
                call()
                if repeat >= warmup:
                    times[workload.name][side].append(time.perf_counter() - start)
    return times


def profile(workload: Workload, warmup: int, repeats: int, row_limit: int = 25) -> None:
    """Print where each side of `workload` spends its time: `repeats` calls under `torch.profiler`, after `warmup`."""
    for side, call in (("official", workload.official), ("ours", workload.ours)):
        for _ in range(warmup):
            call()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as trace:
            for _ in range(repeats):
                call()
        print(f"\n{workload.name}, {side}: {repeats} calls, the operators by self CPU time")
        print(trace.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit))
        print(f"{workload.name}, {side}: by operator and input shapes")
        print(trace.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=row_limit))


def summarize(workloads, times, parity, args) -> list[dict]:
    rows = []
    for workload in workloads:
        if workload.name.endswith("_1"):
            continue
        official_times, our_times = times[workload.name]
        ratios = [official / ours for official, ours in zip(official_times, our_times)]
        official_ms, our_ms = (1000 * statistics.median(t) for t in (official_times, our_times))
        row = {
            "workload": workload.name,
            "threads": args.threads,
            "repeats": args.repeats,
            "official_ms": round(official_ms, 1),
            "ours_ms": round(our_ms, 1),
            "official_over_ours": round(official_ms / our_ms, 2),
            "ratio_min": round(min(ratios), 2),
            "ratio_max": round(max(ratios), 2),
            "parity": parity[workload.name],
        }
        if f"{workload.name}_1" in times:
            # Both sides decode 1 and 32 tokens after the same context: the difference is 31 decode steps.
            short_official, short_ours = (1000 * statistics.median(t) for t in times[f"{workload.name}_1"])
            steps = workload.tokens - 1
            row.update(
                official_ms_per_token=round((official_ms - short_official) / steps, 2),
                ours_ms_per_token=round((our_ms - short_ours) / steps, 2),
                official_1_token_ms=round(short_official, 1),
                ours_1_token_ms=round(short_ours, 1),
            )
        if workload.per_token_only:
            for whole_call in ("official_ms", "ours_ms", "official_over_ours", "ratio_min", "ratio_max"):
                del row[whole_call]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-dir", type=Path, required=True, help="a checkout of ByteDance-Seed/Bagel")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds after the parity round")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=640)
    parser.add_argument("--steps", type=int, default=10, help="Euler steps per image")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="weights, initial noise and test image")
    parser.add_argument(
        "--profile", choices=WORKLOAD_NAMES, help="profile this workload's two sides instead of timing the workloads"
    )
    parser.add_argument("--atol", type=float, default=1e-3, help="parity tolerance on the final latents")
    parser.add_argument(
        "--tokenizer-dir",
        type=Path,
        default=REPO / "tests" / "fixtures" / "bagel-tiny" / "checkpoint",
        help="a small BAGEL tokenizer (vocab.json, merges.txt, tokenizer_config.json)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 on the official configs
    warnings.filterwarnings("ignore", message=".*CUDA is not available.*")  # the official cuda autocast, on CPU
    official, stand_ins = import_official(args.official_dir.resolve())

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        release = Path(tmp)
        inferencer, generated = build_official(official, release, args)
        pipe = LoomInterleavedPipeline.from_bagel(release, vae_image_size=VAE_IMAGE_SIZE, vit_image_size=VIT_IMAGE_SIZE)
        pipe.set_progress_bar_config(disable=True)
        workloads = make_workloads(inferencer, generated, pipe, args)
        assert {workload.name for workload in workloads if not workload.name.endswith("_1")} == set(WORKLOAD_NAMES)
        if args.profile is not None:
            workloads = [workload for workload in workloads if workload.name == args.profile]
        noise = initial_noise(args.seed)
        parity = {workload.name: check_parity(workload, noise, args.atol) for workload in workloads}
        if args.profile is not None:
            return profile(workloads[0], args.warmup, args.repeats)
        times = time_alternately(workloads, args.warmup, args.repeats)

    rows = summarize(workloads, times, parity, args)
    for row in rows:
        print(json.dumps(row))
    print(f"\nofficial BAGEL inferencer vs ours, {IMAGE_SIZE} px, float32, CPU, threads={args.threads}")
    print(f"(stand-ins on the official side: {', '.join(stand_ins)})\n")
    print("| workload | official ms | ours ms | official / ours (min–max) |")
    print("| --- | ---: | ---: | --- |")
    for row in rows:
        stock = "official_ms" not in row  # a per-token-only comparison
        if not stock:
            ratio = f"{row['official_over_ours']:.2f}x ({row['ratio_min']:.2f}–{row['ratio_max']:.2f})"
            print(f"| {row['workload']} | {row['official_ms']} | {row['ours_ms']} | {ratio} |")
        if "ours_ms_per_token" in row:
            label = "transformers' stock Qwen3 (as ours), ms per decoded token" if stock else "ms per decoded token"
            per_token = f"{row['official_ms_per_token'] / row['ours_ms_per_token']:.2f}x"
            print(f"| {label} | {row['official_ms_per_token']} | {row['ours_ms_per_token']} | {per_token} |")


if __name__ == "__main__":
    main()
