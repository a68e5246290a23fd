"""BAGEL-7B-MoT (14 B parameters) at real size on a CPU machine: convert, load int8 weight-only, generate.

    python benchmarks/bench_bagel_14b.py [--workdir /tmp] [--from-bagel]
    python benchmarks/bench_bagel_14b.py --memory-table-only

1. Writes a random-weight release with BAGEL-7B-MoT's exact tensor names, shapes and dtypes (bfloat16 `ema.safetensors`,
   29.2 GB; float32 `ae.safetensors`, the FLUX autoencoder in BFL keys, 335 MB) and its official `llm_config.json` /
   `vit_config.json`, tensor by tensor (`write_safetensors`), so the release is never held in memory. The weights are
   `torch.randn` per tensor scaled by 0.02 (norm weights 1 + that), the two sin-cos tables exact; the values affect
   neither time nor memory. The tokenizer is the bagel-tiny fixture's (the embedding still has 152064 rows).
2. Converts it with `loom convert-bagel SRC DST` in a subprocess (wall time, peak RSS).
3. Loads the converted folder int8 weight-only (`PipelineQuantizationConfig` with
   `TorchAoConfig(Int8WeightOnlyConfig())`) in another subprocess and runs a 64 px text-to-image (2 steps, text
   guidance 4.0) and 8 understanding tokens about that image (wall times, peak RSS, the bytes each component holds).
   `--from-bagel` also measures loading the release itself int8 (`from_bagel(release, quantization_config=...)`)
   and generating with it.
4. Prints the bytes per component of the release and of the int8 model, and a GPU memory table for 1024 px (bf16 / int8
   / int4 x no offload / model CPU offload / sequential offload), sized from the meta-device model.

Peak RSS is the kernel's high-water mark of the process (`ru_maxrss` from `wait4`), split by sampling
`/proc/PID/status` every 50 ms into anonymous memory (what the process allocated) and file-backed memory (pages of the
safetensors files it maps; clean, and dropped by the kernel under memory pressure). Every file goes into a temporary
folder under `--workdir`, removed at the end, also on failure. `--tiny` runs the same steps on the bagel-tiny sizes (the
test suite does, in seconds).
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from loom_hf.modeling.bagel_layout import (
    BAGEL_7B_LLM_CONFIG,
    BAGEL_7B_MAX_LATENT_SIZE,
    BAGEL_7B_VIT_CONFIG,
    TensorSpec,
    ae_layout,
    ema_layout,
    write_safetensors,
)
from loom_hf.modeling.convert_bagel import FLUX_AE_DEFAULTS, POSITION_TABLES
from loom_hf.modeling.modeling_loom import LoomPositionTable

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "bagel-tiny"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")
PROMPT = "A red square above a blue circle."
QUESTION = "What is in this image?"
GiB = 1024**3


def sizes(tiny: bool) -> dict:
    """Configs and image-path sizes: BAGEL-7B-MoT's, or the bagel-tiny fixture's (`tiny`)."""
    if tiny:
        checkpoint = FIXTURE / "checkpoint"
        return {
            "llm": json.loads((checkpoint / "llm_config.json").read_text()),
            "vit": json.loads((checkpoint / "vit_config.json").read_text()),
            "ae": json.loads((checkpoint / "ae_config.json").read_text()),
            "max_latent_size": 8,
            "vae_image_size": (64, 32, 16),
            "vit_image_size": (56, 28, 14),
        }
    return {
        "llm": BAGEL_7B_LLM_CONFIG,
        "vit": BAGEL_7B_VIT_CONFIG,
        "ae": FLUX_AE_DEFAULTS,
        "max_latent_size": BAGEL_7B_MAX_LATENT_SIZE,
        "vae_image_size": (1024, 512, 16),
        "vit_image_size": (980, 224, 14),
    }


def release_layouts(spec: dict) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    """(ema.safetensors, ae.safetensors) layouts of the release `spec` describes."""
    ema = ema_layout(spec["llm"], spec["vit"], spec["ae"]["z_channels"], max_latent_size=spec["max_latent_size"])
    return ema, ae_layout(spec["ae"])


# ---------------------------------------------------------------------------------------------------------------------
# Writing the random-weight release


def write_release_configs(folder: Path, spec: dict) -> None:
    """The small files of a release: `llm_config.json`, `vit_config.json`, the tokenizer (and `ae_config.json` for a
    non-FLUX autoencoder, as the bagel-tiny fixture has)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "llm_config.json").write_text(json.dumps(spec["llm"], indent=2))
    (folder / "vit_config.json").write_text(json.dumps(spec["vit"], indent=2))
    if dict(spec["ae"]) != FLUX_AE_DEFAULTS:
        (folder / "ae_config.json").write_text(json.dumps(spec["ae"], indent=2))
    for name in TOKENIZER_FILES:
        shutil.copyfile(FIXTURE / "checkpoint" / name, folder / name)


def random_weights(seed: int):
    """`make_tensor` for `write_safetensors`: 0.02 * randn per tensor (norm weights 1 + that), the fixed sin-cos tables
    computed as BAGEL does (the converter checks them)."""
    generator = torch.Generator().manual_seed(seed)

    def make(name: str, spec: TensorSpec) -> torch.Tensor:
        if name in POSITION_TABLES:
            rows, dim = spec.shape
            return LoomPositionTable.compute(math.isqrt(rows), dim).to(spec.dtype)
        values = torch.randn(spec.shape, generator=generator, dtype=spec.dtype).mul_(0.02)
        if len(spec.shape) == 1 and "norm" in name and name.endswith(".weight"):
            values.add_(1.0)
        return values

    return make


def write_release(folder: Path, spec: dict, seed: int = 0) -> None:
    """Write the whole random-weight release into `folder`, one tensor in memory at a time."""
    write_release_configs(folder, spec)
    ema, ae = release_layouts(spec)
    write_safetensors(folder / "ema.safetensors", ema, random_weights(seed))
    write_safetensors(folder / "ae.safetensors", ae, random_weights(seed + 1))


# ---------------------------------------------------------------------------------------------------------------------
# Measuring a subprocess


def _status_kib(pid: int) -> dict[str, int]:
    """VmRSS / RssAnon / RssFile of a live process in KiB (empty once it has exited)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0])
    return fields


def _mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def run_measured(command: list[str], env: dict | None = None) -> dict:
    """Run `command`; its wall time, peak RSS (`ru_maxrss`), peak anonymous and file-backed RSS (sampled every 50 ms)
    and the lowest `MemAvailable` of the machine meanwhile. A non-zero exit raises with the command's stderr tail."""
    peaks = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0, "MemAvailable": _mem_available_kib()}
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample():
        while not done.wait(0.05):
            for key, value in _status_kib(process.pid).items():
                peaks[key] = max(peaks[key], value)
            peaks["MemAvailable"] = min(peaks["MemAvailable"], _mem_available_kib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stderr = []
    reader = threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True)
    reader.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except BaseException:
        process.kill()
        raise
    finally:
        done.set()
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    reader.join()
    if process.returncode != 0:
        raise RuntimeError(f"{command[:4]} exited with {process.returncode}:\n{''.join(stderr[-30:])}")
    return {
        "wall_s": wall,
        "peak_rss": usage.ru_maxrss * 1024,
        "peak_rss_anon": peaks["RssAnon"] * 1024,
        "peak_rss_file": peaks["RssFile"] * 1024,
        "min_mem_available": peaks["MemAvailable"] * 1024,
    }


def python_command(*args: str) -> list[str]:
    return [sys.executable, *args]


# ---------------------------------------------------------------------------------------------------------------------
# Bytes per component


def component(name: str) -> str:
    """The component a weight belongs to, for release names (`language_model.model.layers.0...`) and Loom names
    (`model.language_model.layers.0...`) alike."""
    if "language_model" in name and ".layers." in name:
        return "LLM gen expert" if "_moe_gen" in name else "LLM und expert"
    if "language_model" in name or name.startswith("lm_head"):
        return "LLM embeddings, lm_head, final norms"
    if "vision_model" in name or "connector" in name or "vit_pos_embed" in name:
        return "ViT + connector"
    return "generation heads"


def bytes_by_component(named_bytes) -> dict[str, int]:
    totals: dict[str, int] = {}
    for name, nbytes in named_bytes:
        totals[component(name)] = totals.get(component(name), 0) + nbytes
    return dict(sorted(totals.items()))


def model_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes each component of a model holds (parameters and buffers; a quantized tensor by its inner tensors)."""
    from loom_hf.modeling.quantization import held_bytes

    tensors = [*model.named_parameters(), *model.named_buffers()]
    return bytes_by_component((name, held_bytes(tensor)) for name, tensor in tensors)


def release_bytes(spec: dict) -> dict[str, int]:
    ema, ae = release_layouts(spec)
    totals = bytes_by_component((name, t.nbytes) for name, t in ema.items())
    return totals | {"VAE": sum(t.nbytes for t in ae.values())}


# ---------------------------------------------------------------------------------------------------------------------
# The inference phase (run in its own process)


def load_int8(source: str, kind: str, spec: dict):
    """The int8 weight-only pipeline of a converted folder (`kind="converted"`) or of the release itself."""
    from diffusers import PipelineQuantizationConfig
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    from loom_hf import LoomInterleavedPipeline

    int8 = TorchAoConfig(Int8WeightOnlyConfig())
    if kind == "converted":
        quantization = PipelineQuantizationConfig(quant_mapping={"model": int8})
        return LoomInterleavedPipeline.from_pretrained(source, dtype=torch.bfloat16, quantization_config=quantization)
    return LoomInterleavedPipeline.from_bagel(
        source,
        dtype=torch.bfloat16,
        quantization_config=int8,
        vae_image_size=spec["vae_image_size"],
        vit_image_size=spec["vit_image_size"],
    )


def infer(source: str, kind: str, spec: dict, image_px: int, result_path: str) -> None:
    """Load int8, draw one `image_px` image (2 steps, text guidance), answer 8 tokens about it; write the timings and
    the bytes the model holds to `result_path`."""
    from loom_hf.modeling.quantization import weight_storage_bytes

    start = time.perf_counter()
    pipe = load_int8(source, kind, spec)
    pipe.set_progress_bar_config(disable=True)
    loaded = time.perf_counter()
    memory_after_load = _status_kib(os.getpid())
    image = pipe(
        [PROMPT],
        height=image_px,
        width=image_px,
        num_inference_steps=2,
        guidance_scale=4.0,
        image_guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    drawn = time.perf_counter()
    answer = pipe([image, QUESTION], task="text", max_new_tokens=8, min_new_tokens=8).texts[0]
    answered = time.perf_counter()
    result = {
        "load_s": loaded - start,
        "text_to_image_s": drawn - loaded,
        "understanding_s": answered - drawn,
        "image_size": list(image.size),
        "answer": answer,
        "rss_after_load": {key: value * 1024 for key, value in memory_after_load.items()},
        "model_bytes": model_bytes(pipe.model),
        "vae_bytes": weight_storage_bytes(pipe.vae),
        "quantized": type(pipe.model.model.language_model.layers[0].mlp.up_proj.weight).__name__,
    }
    Path(result_path).write_text(json.dumps(result))


def probe_vae_decode(converted: str, image_px: int, result_path: str) -> None:
    """Peak anonymous memory a bfloat16 decode of one `image_px`² image adds on this CPU (sampled every 5 ms), to check
    the memory table's VAE estimate: activations grow with the pixel count."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(Path(converted) / "vae", torch_dtype=torch.bfloat16).eval()
    latent = torch.randn(1, vae.config.latent_channels, image_px // 8, image_px // 8, dtype=torch.bfloat16)
    baseline = _status_kib(os.getpid())["RssAnon"]
    peak, done = [baseline], threading.Event()

    def sample():
        while not done.wait(0.005):
            peak.append(_status_kib(os.getpid())["RssAnon"])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    with torch.no_grad():
        vae.decode(latent)
    done.set()
    sampler.join()
    seconds, added = time.perf_counter() - start, (max(peak) - baseline) * 1024
    Path(result_path).write_text(json.dumps({"image_px": image_px, "decode_s": seconds, "added_bytes": added}))


# ---------------------------------------------------------------------------------------------------------------------
# The memory table


def meta_model(spec: dict, quantization_config=None):
    """The bfloat16 model on the meta device, built from the release configs and layout shapes as `from_bagel` builds
    it; with `quantization_config` every weight it covers is quantized on the meta device too (torchao's layout, so
    `held_bytes` counts what the real weights would hold)."""
    from accelerate import init_empty_weights

    from loom_hf import LoomForInterleavedGeneration
    from loom_hf.modeling.convert_bagel import release_config
    from loom_hf.modeling.quantization import StreamingQuantizer

    ema, _ = release_layouts(spec)
    with tempfile.TemporaryDirectory() as folder:
        write_release_configs(Path(folder), spec)
        shapes = {name: t.shape for name, t in ema.items()}
        config, _ = release_config(folder, shapes, spec["vae_image_size"], spec["vit_image_size"], max_frames=16)
    with init_empty_weights(include_buffers=False):
        model = LoomForInterleavedGeneration(config).to(torch.bfloat16)
    if quantization_config is not None:
        quantizer = StreamingQuantizer(model, quantization_config)
        for name, parameter in list(model.named_parameters()):
            quantizer.assign(name, torch.empty(parameter.shape, dtype=parameter.dtype, device="meta"))
    return model


def int4_weight_bytes(rows: int, columns: int) -> int:
    """torchao int4 weight-only (group size 128) storage of a `rows` x `columns` weight: 4 bits per weight plus a
    bfloat16 scale and zero point per group of 128 inputs (its CUDA `tile_packed_to_4d` layout)."""
    return rows * columns // 2 + rows * math.ceil(columns / 128) * 2 * 2


def stored_bytes(name: str, tensor: torch.Tensor, precision: str, covered: set[str]) -> int:
    """Bytes tensor `name` holds at `precision`: int4 for the weights in `covered` (the ones the int8 config quantized),
    otherwise as it is held (bfloat16, or torchao int8 on a quantized meta model)."""
    from loom_hf.modeling.quantization import held_bytes

    if precision == "int4" and name in covered:
        return int4_weight_bytes(*tensor.shape)
    return held_bytes(tensor)


def int4_bytes(model: torch.nn.Module, covered: set[str]) -> dict[str, int]:
    """Bytes per component with int4 weight-only on the weights in `covered`, the rest as held in `model`."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return bytes_by_component((name, stored_bytes(name, tensor, "int4", covered)) for name, tensor in tensors)


def vae_bytes(spec: dict, dtype: torch.dtype = torch.bfloat16) -> int:
    return sum(math.prod(t.shape) for t in ae_layout(spec["ae"]).values()) * dtype.itemsize


def activation_bytes(spec: dict, image_px: int, text_tokens: int = 64, rows: int = 3) -> dict[str, int]:
    """Estimated bfloat16 working memory of editing one `image_px`² image with text and image guidance (three rows),
    the largest common BAGEL call:

    * KV cache: the conditional context (`text_tokens` + the input image's VAE and ViT tokens, each with two markers),
      the text-unconditional one (the image) and the image-unconditional one (the text): K and V of every layer.
    * A denoising step (the three rows batched): per decoder layer the residual stream, its normed copy and the MLP's
      gate, up and gated product live at once (a memory-efficient attention kernel: no L² scores), plus the attention
      mask as a bfloat16 bias over (rows, query, keys).
    * The VAE decode at `image_px`²: five bfloat16 tensors of the last level's 256-channel input at full resolution
      (the upsampled input, its GroupNorm and SiLU outputs, convolution outputs and buffers). Five, not the three a
      reading of the FLUX decoder gives, because the measured CPU decode (`--vae-probe`) at 512² added 0.66 GB, 4.96
      such tensors; activations grow with the pixel count.
    """
    llm, ae = spec["llm"], spec["ae"]
    hidden, layers = llm["hidden_size"], llm["num_hidden_layers"]
    head_dim = hidden // llm["num_attention_heads"]
    stride = 2 ** (len(ae["ch_mult"]) - 1) * 2
    latent = (image_px // stride) ** 2 + 2
    vit_side = min(image_px, spec["vit_image_size"][0]) // spec["vit"]["patch_size"]
    image = latent + vit_side**2 + 2
    context = {"conditional": text_tokens + image, "text-unconditional": image, "image-unconditional": text_tokens}
    kv_per_token = layers * 2 * llm["num_key_value_heads"] * head_dim * 2
    query = rows * latent
    step = query * (2 * hidden + 3 * llm["intermediate_size"]) * 2
    mask = rows * latent * (max(context.values()) + latent) * 2
    decode_channels = ae["ch"] * ae["ch_mult"][1]
    return {
        "kv_cache": sum(context.values()) * kv_per_token,
        "denoise_step": step + mask,
        "vae_decode": 5 * decode_channels * image_px**2 * 2,
    }


def memory_table(spec: dict, image_px: int = 1024) -> dict:
    """GPU memory for one `image_px` edit, per weight precision and offload mode, from the meta-device model."""
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    bf16 = meta_model(spec)
    int8 = meta_model(spec, TorchAoConfig(Int8WeightOnlyConfig()))
    covered = {name for name, p in int8.named_parameters() if type(p.data) is not torch.Tensor}
    weights = {"bf16": model_bytes(bf16), "int8": model_bytes(int8), "int4": int4_bytes(bf16, covered)}
    vae = vae_bytes(spec)
    activations = activation_bytes(spec, image_px)
    working = activations["kv_cache"] + max(activations["denoise_step"], activations["vae_decode"])
    rows = {}
    for precision, parts in weights.items():
        model = sum(parts.values())
        largest_leaf = max(_leaf_bytes(int8 if precision != "bf16" else bf16, precision, covered))
        rows[precision] = {
            "weights": model + vae,
            "none": model + vae + working,
            "model_cpu_offload": model + vae + working,
            "sequential_offload": largest_leaf + working,
        }
    return {"weights_by_component": weights, "vae": vae, "activations": activations, "rows": rows}


def _leaf_bytes(model: torch.nn.Module, precision: str, covered: set[str]):
    """Bytes of each leaf module (what sequential offload puts on the device at once) at `precision`."""
    for prefix, module in model.named_modules():
        if next(module.children(), None) is None:
            tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            yield sum(stored_bytes(f"{prefix}.{name}", tensor, precision, covered) for name, tensor in tensors)


# ---------------------------------------------------------------------------------------------------------------------
# Reporting


def gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f} GB"


def print_component_table(release: dict[str, int], int8: dict[str, int] | None) -> None:
    print("\n| component | release (bf16; VAE fp32) | int8 model, storage held |")
    print("| --- | ---: | ---: |")
    for name in sorted(set(release) | set(int8 or {})):
        held = gb(int8[name]) if int8 and name in int8 else "–"
        print(f"| {name} | {gb(release.get(name, 0))} | {held} |")
    total = gb(sum(int8.values())) if int8 else "–"
    print(f"| **total** | **{gb(sum(release.values()))}** | **{total}** |")


def print_memory_table(table: dict, image_px: int) -> None:
    acts = table["activations"]
    print(f"\nGPU memory for one {image_px} px edit with text + image guidance (estimated; GiB):")
    print(
        f"working memory: KV cache {acts['kv_cache'] / GiB:.2f}, denoising step {acts['denoise_step'] / GiB:.2f}, "
        f"VAE decode {acts['vae_decode'] / GiB:.2f}; VAE weights {table['vae'] / GiB:.2f} (bf16)"
    )
    print("\n| weights | weights held | no offload | model CPU offload | sequential offload |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for precision, row in table["rows"].items():
        cells = " | ".join(f"{row[key] / GiB:.1f}" for key in ("weights", "none", "model_cpu_offload"))
        print(f"| {precision} | {cells} | {row['sequential_offload'] / GiB:.1f} |")


def print_phase(name: str, measured: dict) -> None:
    print(
        f"{name}: {measured['wall_s']:.1f} s, peak RSS {gb(measured['peak_rss'])} (anonymous "
        f"{gb(measured['peak_rss_anon'])}, file-backed {gb(measured['peak_rss_file'])}), lowest MemAvailable "
        f"{gb(measured['min_mem_available'])}"
    )


# ---------------------------------------------------------------------------------------------------------------------


def check_disk(workdir: Path, needed: int) -> None:
    free = shutil.disk_usage(workdir).free
    if free < needed:
        raise SystemExit(f"error: {workdir} has {gb(free)} free; the release and its conversion need {gb(needed)}.")


def run_benchmark(args: argparse.Namespace, spec: dict) -> dict:
    """Write, convert, load int8 and generate, each heavy step in its own measured process; returns the report."""
    release_total = sum(release_bytes(spec).values())
    check_disk(args.workdir, (2 if args.release is None else 1) * release_total + 2 * 10**9)
    report: dict = {"release_bytes": release_bytes(spec)}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench-bagel-14b-") as work:
        release, converted, result = Path(work) / "release", Path(work) / "converted", Path(work) / "result.json"
        tiny = ["--tiny"] if args.tiny else []
        if args.release is not None:
            release = args.release  # written before (`--write-release`); left in place
        else:
            report["write"] = run_measured(python_command(__file__, "--write-release", str(release), *tiny), env)
            print_phase(f"write the release ({gb(sum(f.stat().st_size for f in release.iterdir()))})", report["write"])
        sizes_args = ["--vae-image-size", *map(str, spec["vae_image_size"])]
        sizes_args += ["--vit-image-size", *map(str, spec["vit_image_size"])]
        command = ["-c", "import sys; from loom_hf.cli import main; sys.exit(main(sys.argv[1:]))"]
        report["convert"] = run_measured(
            python_command(*command, "convert-bagel", str(release), str(converted), *sizes_args), env
        )
        print_phase("convert-bagel", report["convert"])
        report["converted_bytes"] = sum(f.stat().st_size for f in converted.rglob("*") if f.is_file())
        kinds = ["release", "converted"] if args.from_bagel else ["converted"]
        for kind in kinds:
            source = release if kind == "release" else converted
            infer_args = ["--infer", str(source), "--kind", kind, "--result", str(result)]
            measured = run_measured(python_command(__file__, *infer_args, *(["--tiny"] if args.tiny else [])), env)
            report[f"infer_{kind}"] = measured | json.loads(result.read_text())
            print_phase(f"int8 load + generate ({kind})", measured)
            print(json.dumps(json.loads(result.read_text()), indent=1))
            if kind == "release" and args.release is None:
                shutil.rmtree(release)  # frees the disk before the next phase reads the converted folder
        probe = ["--vae-probe", str(converted), "--result", str(result)]
        run_measured(python_command(__file__, *probe, "--image-size", str(args.vae_probe_size)), env)
        report["vae_probe"] = json.loads(result.read_text())
        print(f"VAE decode probe: {report['vae_probe']}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()), help="where the files go")
    parser.add_argument("--memory-table-only", action="store_true", help="print the memory table, skip the heavy run")
    parser.add_argument("--from-bagel", action="store_true", help="also load the release itself int8 and generate")
    parser.add_argument("--tiny", action="store_true", help="the bagel-tiny sizes instead of BAGEL-7B-MoT's")
    parser.add_argument("--image-size", type=int, default=1024, help="image side of the memory table (1024)")
    parser.add_argument("--report", type=Path, help="also write the report as JSON here")
    parser.add_argument("--vae-probe-size", type=int, default=512, help="image side of the VAE decode probe (512)")
    parser.add_argument("--vae-probe", help=argparse.SUPPRESS)
    parser.add_argument("--release", type=Path, help="use this release (written with --write-release) and keep it")
    parser.add_argument("--write-release", type=Path, help="only write the random-weight release into this folder")
    parser.add_argument("--infer", help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=("converted", "release"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    spec = sizes(args.tiny)
    if args.infer:
        infer(args.infer, args.kind, spec, 64, args.result)
        return
    if args.write_release:
        write_release(args.write_release, spec)
        return
    if args.vae_probe:
        probe_vae_decode(args.vae_probe, args.image_size, args.result)
        return

    report = {} if args.memory_table_only else run_benchmark(args, spec)
    table = memory_table(spec, args.image_size)
    report["memory_table"] = table
    held = report.get("infer_converted")
    print_component_table(release_bytes(spec), held and held["model_bytes"] | {"VAE": held["vae_bytes"]})
    print_memory_table(table, args.image_size)
    if args.report:
        args.report.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
