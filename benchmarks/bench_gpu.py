"""What a CPU cannot measure, in one run on a GPU: a BAGEL-7B-shaped random model in bfloat16 at 1024 px.

    python benchmarks/bench_gpu.py --out results.jsonl            # on a CUDA machine (a few minutes on one H200)
    python benchmarks/bench_gpu.py --shape small --device cpu --image-size 128 --steps 2 --out smoke.jsonl

The model has BAGEL-7B-MoT's decoder (hidden 3584, 28 layers, 28 heads, 4 KV heads, MLP 18944, both experts), its
SigLIP tower (1152 wide, 26 layers) and a FLUX-layout autoencoder (channels 128-512), all random and in bfloat16:
13.5B parameters. The tokenizer is the tiny test one (ids only), so the 152k-token vocabulary's 1.1B embedding and
head parameters are left out. `--shape small` swaps in a small decoder for
a smoke run. Each section writes one JSON line to `--out` as soon as it is done (a section that fails writes its
error and the next one runs), so a run cut short by its time limit still returns what it measured:

1. `t2i`: seconds per 1024² text-to-image image (`--steps` Euler steps, text guidance 4.0) and the peak memory;
2. `branches`: one guided editing step at 1024² (text 4.0 + image 2.0: three branches over an image context) as rows
   of one forward, against one forward per branch;
3. `step_cache`: the same text-to-image with diffusers' First Block Cache and TaylorSeer against uncached (speedup,
   and the cosine similarity of the final latents to the uncached ones);
4. `decode`: milliseconds per decoded token after an image (32 and 1 new tokens), ours from the growing cache and
   from a static cache (`cache_implementation="static"`, which `generate()` compiles on CUDA with CUDA graphs; with
   the number of compiled graphs inductor ran without CUDA graphs, which should be 0), and transformers' stock Qwen3
   holding the same understanding weights;
5. `int4`: the peak memory and time of the text-to-image call with the decoder's linear layers in torchao's
   int4 weight-only layout (group size 128).

Times are medians over `--repeats` after one warm-up call, with `torch.cuda.synchronize()` around every call.
It needs the project's pins (transformers 5.23, diffusers 0.42; torchao for `int4`) and `src/` on the path
(`PYTHONPATH=src`). int4 uses torch's tinygemm layout, which runs on CUDA only: a CPU smoke run records its error.
"""

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig
from PIL import Image
from torch._dynamo.utils import counters
from transformers import GenerationConfig

from loom_hf import LoomForInterleavedGeneration, LoomImageProcessor, LoomInterleavedPipeline, LoomProcessor
from loom_hf.pipelines.guidance import GuidanceConfig
from loom_hf.pipelines.pipeline_loom import ImageJob
from loom_hf.tiny import tiny_config, tiny_tokenizer, tiny_vae

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_official import stock_decoder, with_generation_config  # noqa: E402 - sibling scripts, not a package
from bench_serving import velocity_per_branch  # noqa: E402

SHAPES = {
    "bagel-7b": {
        "text_config": {
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "max_position_embeddings": 32768,
        },
        "vision_config": {
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 26,
            "num_attention_heads": 16,
            "patch_size": 14,
            "max_num_patches_per_side": 70,
        },
        "vae_channels": [128, 256, 512, 512],
    },
    "small": {
        "text_config": {
            "hidden_size": 256,
            "intermediate_size": 768,
            "num_hidden_layers": 4,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
        },
        "vision_config": {
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "patch_size": 14,
            "max_num_patches_per_side": 70,
        },
        "vae_channels": [32, 32, 32, 32],
    },
}
PROMPT = "A red square above a blue circle."
INSTRUCTION = "Make the square green."
QUESTION = "What is drawn here?"


@contextmanager
def bfloat16_on(device: str) -> Iterator[None]:
    """Create modules directly on `device` in bfloat16: no float32 copy of 14B parameters on the host first."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_pipeline(shape: str, image_size: int, device: str) -> LoomInterleavedPipeline:
    """The random pipeline, created directly on `device` in bfloat16 (no float32 copy on the host)."""
    sizes = SHAPES[shape]
    tokenizer = tiny_tokenizer()
    text_config = {**sizes["text_config"], "vocab_size": len(tokenizer) + 16}
    config = tiny_config(
        tokenizer,
        image_size,
        text_config=text_config,
        vision_config=sizes["vision_config"],
        max_latent_size=max(64, image_size // 16),
    )
    vit_side = min(image_size - image_size % 14, 980)
    image_processor = LoomImageProcessor(
        vae_image_size=(image_size, image_size // 2, 16), vit_image_size=(vit_side, vit_side // 28 * 14, 14)
    )
    processor = LoomProcessor(image_processor, tokenizer)
    with bfloat16_on(device):
        model = LoomForInterleavedGeneration(config).eval()
        torch.nn.init.normal_(model.llm2vae.weight, std=0.02)  # BAGEL zero-initialises it: outputs need it
        vae = tiny_vae(block_out_channels=sizes["vae_channels"], layers_per_block=2).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=processor.bos_token_id, eos_token_id=processor.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    pipe = LoomInterleavedPipeline(model, vae, FlowMatchEulerDiscreteScheduler(shift=3.0), processor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_median(call: Callable[[], object], *, device: str, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls after one warm-up call, and the last result."""
    result = call()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = call()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def peak_gib(device: str, call: Callable[[], object]) -> float | None:
    """Peak GPU memory (GiB) of one call, or `None` off CUDA."""
    if not device.startswith("cuda"):
        call()
        return None
    torch.cuda.reset_peak_memory_stats()
    call()
    synchronize(device)
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def t2i_call(pipe: LoomInterleavedPipeline, args: argparse.Namespace) -> Callable[[], object]:
    return lambda: pipe(
        [PROMPT],
        task="image",
        num_inference_steps=args.steps,
        guidance_scale=4.0,
        image_guidance_scale=1.0,
        height=args.image_size,
        width=args.image_size,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    ).images[0]


def bench_t2i(pipe, args) -> dict:
    seconds, _ = timed_median(t2i_call(pipe, args), device=args.device, repeats=args.repeats)
    decode_seconds, _ = timed_median(
        lambda: pipe(
            [PROMPT],
            task="image",
            num_inference_steps=args.steps,
            guidance_scale=4.0,
            height=args.image_size,
            width=args.image_size,
            generator=torch.Generator().manual_seed(0),
        ).images[0],
        device=args.device,
        repeats=args.repeats,
    )
    return {
        "seconds_per_image_to_latent": round(seconds, 3),
        "seconds_per_image_with_vae_decode": round(decode_seconds, 3),
        "peak_gib": peak_gib(args.device, t2i_call(pipe, args)),
    }


def bench_branches(pipe, args) -> dict:
    size = args.image_size
    image = Image.new("RGB", (size, size), (200, 30, 30))
    job = ImageJob(pipe.encode_context([image, INSTRUCTION]), (size, size))
    grid = size // 16
    latents = torch.randn(1, 16, 2 * grid, 2 * grid, generator=torch.Generator().manual_seed(0)).to(args.device)
    sigma = torch.tensor(0.7)
    guidance = GuidanceConfig(scale=4.0, image_scale=2.0)
    device = args.device

    def one_forward():
        return pipe.guided_velocities([job], latents, sigma, guidance)

    def per_branch():
        return velocity_per_branch(pipe, job, latents, sigma, guidance)

    with torch.no_grad():
        difference = (one_forward() - per_branch()).abs().max().item()
        batched, _ = timed_median(one_forward, device=device, repeats=args.repeats * 3)
        serial, _ = timed_median(per_branch, device=device, repeats=args.repeats * 3)
    return {
        "context_tokens": job.contexts.cond.get_seq_length(),
        "batched_step_s": round(batched, 4),
        "per_branch_step_s": round(serial, 4),
        "speedup": round(serial / batched, 2),
        "max_abs_difference": difference,
    }


def bench_step_cache(pipe, args) -> dict:
    call = t2i_call(pipe, args)
    uncached_seconds, uncached = timed_median(call, device=args.device, repeats=args.repeats)
    results = {"uncached_s": round(uncached_seconds, 3)}
    settings = {
        "first_block_cache_0.1": FirstBlockCacheConfig(threshold=0.1),
        "taylorseer_interval_2": TaylorSeerCacheConfig(
            cache_interval=2, disable_cache_before_step=4, max_order=1, taylor_factors_dtype=torch.float32
        ),
    }
    for name, config in settings.items():
        pipe.model.enable_cache(config)
        try:
            seconds, cached = timed_median(call, device=args.device, repeats=args.repeats)
        finally:
            pipe.model.disable_cache()
        similarity = torch.nn.functional.cosine_similarity(cached.flatten().float(), uncached.flatten().float(), dim=0)
        results[name] = {"seconds": round(seconds, 3), "speedup": round(uncached_seconds / seconds, 2)}
        results[name]["latent_cosine_to_uncached"] = round(similarity.item(), 4)
    return results


def bench_decode(pipe, args) -> dict:
    image = Image.new("RGB", (args.image_size, args.image_size), (200, 30, 30))

    def ours(count):
        return lambda: pipe([image, QUESTION], task="text", max_new_tokens=count, min_new_tokens=count)

    full, _ = timed_median(ours(33), device=args.device, repeats=args.repeats)
    one, _ = timed_median(ours(1), device=args.device, repeats=args.repeats)
    # A static cache: on CUDA `generate()` compiles the decoding step by itself (CUDA graphs); the warm-up call of
    # each timing pays for the compilation (both lengths fall into one 256-token cache size, so one graph serves).
    # inductor counts the compiled graphs that fell back from CUDA graphs (a written non-static input, a CPU op).
    skips_before = counters["inductor"]["cudagraph_skips"]
    static_full, _ = timed_median(
        with_generation_config(pipe, ours(33), cache_implementation="static"), device=args.device, repeats=args.repeats
    )
    static_one, _ = timed_median(
        with_generation_config(pipe, ours(1), cache_implementation="static"), device=args.device, repeats=args.repeats
    )
    cudagraph_skips = counters["inductor"]["cudagraph_skips"] - skips_before
    with bfloat16_on(args.device):
        stock = stock_decoder(pipe)
    prompt = torch.randint(10, 200, (1, 600), generator=torch.Generator().manual_seed(0)).to(args.device)

    def stock_call(count):
        return lambda: stock.generate(
            input_ids=prompt, max_new_tokens=count, min_new_tokens=count, do_sample=False, eos_token_id=None
        )

    stock_full, _ = timed_median(stock_call(33), device=args.device, repeats=args.repeats)
    stock_one, _ = timed_median(stock_call(1), device=args.device, repeats=args.repeats)
    return {
        "ours_ms_per_token": round(1000 * (full - one) / 32, 2),
        "ours_first_token_ms": round(1000 * one, 1),
        "ours_static_cache_ms_per_token": round(1000 * (static_full - static_one) / 32, 2),
        "ours_static_cache_first_token_ms": round(1000 * static_one, 1),
        "ours_static_cache_cudagraph_skips": cudagraph_skips,
        "stock_qwen3_ms_per_token_after_600_text_tokens": round(1000 * (stock_full - stock_one) / 32, 2),
    }


def bench_int4(pipe, args) -> dict:
    from torchao.quantization import Int4WeightOnlyConfig, quantize_  # the optional [quant] extra

    linear_layers = pipe.model.model.language_model
    start = time.perf_counter()
    # torch's own tinygemm int4 kernel (CUDA, bfloat16); the default "plain" layout needs the separate mslk kernels.
    quantize_(linear_layers, Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d"))
    synchronize(args.device)
    quantize_seconds = time.perf_counter() - start
    seconds, _ = timed_median(t2i_call(pipe, args), device=args.device, repeats=args.repeats)
    return {
        "quantize_s": round(quantize_seconds, 1),
        "seconds_per_image_to_latent": round(seconds, 3),
        "peak_gib": peak_gib(args.device, t2i_call(pipe, args)),
    }


SECTIONS = {
    "t2i": bench_t2i,
    "branches": bench_branches,
    "step_cache": bench_step_cache,
    "decode": bench_decode,
    "int4": bench_int4,  # last: it quantizes the model in place
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one per section, written as they end")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="bagel-7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20, help="Euler steps per image")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    args = parser.parse_args()
    if args.image_size % 32 or args.image_size < 64:
        raise SystemExit(f"error: --image-size must be a multiple of 32, at least 64; got {args.image_size}")
    if args.steps < 1 or args.repeats < 1:
        raise SystemExit("error: --steps and --repeats must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available; use --device cpu for a smoke run")
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write(record: dict) -> None:
        with args.out.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    start = time.perf_counter()
    with torch.no_grad():
        pipe = build_pipeline(args.shape, args.image_size, args.device)
    parameters = sum(p.numel() for p in pipe.model.parameters())
    write(
        {
            "section": "setup",
            "device": device_name,
            "shape": args.shape,
            "model_parameters": parameters,
            "image_size": args.image_size,
            "steps": args.steps,
            "build_s": round(time.perf_counter() - start, 1),
        }
    )
    for name in args.sections:
        try:
            with torch.no_grad():
                write({"section": name, **SECTIONS[name](pipe, args)})
        except Exception as error:  # one failing section must not lose the others' numbers
            write(
                {"section": name, "error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()[-2000:]}
            )


if __name__ == "__main__":
    main()
