"""`LoomInterleavedPipeline`: BAGEL/Loom inference with KV-cached contexts, three-way guidance and a flow sampler."""

import copy
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.utils import replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor
from transformers import GenerationConfig
from transformers.generation import StoppingCriteriaList
from transformers.utils.generic import is_flash_attention_requested

from ..file_checks import check_saved_folder, read_json
from ..modeling import LoomCache, LoomForInterleavedGeneration, LoomProcessor, LoomStaticCache, TokenType
from ..modeling.convert_bagel import load_bagel_release
from ..modeling.history import HISTORY_MODES, history_frame_indices
from ..modeling.latents import encode_latents, pack_latents, unpack_latents
from ..modeling.processing_loom import ENTITY_TOKENS
from ..modeling.quantization import check_quantization_backend
from ..number_checks import check_flag, check_integer, check_number
from ..planning import format_plan, parse_plan, plan_instruction, step_turn
from .context_blocks import ContextBlocks, ContextMark, ContextPiece
from .frame_keeping import FrameKeeping, follow_kept_tokens, kept_tokens
from .guidance import GUIDANCE_RENORMS, GuidanceConfig, guided_velocity
from .image_output import LoomVaeImageProcessor
from .pipeline_output import ImageSegment, LoomPipelineOutput, TextSegment
from .requests import as_requests, check_sequence_of_numbers, per_output_generators
from .text_decoding import InterruptCriteria, ProgressStreamer, sampling_processors, text_generation_config

__all__ = [
    "LoomInterleavedPipeline",
    "GuidanceContexts",
    "EncodedImage",
    "ImageJob",
    "DenoisingSettings",
    "TutorialSettings",
    "GEN_THINK_SYSTEM_PROMPT",
    "VLM_THINK_SYSTEM_PROMPT",
]

logger = logging.getLogger(__name__)

# The official inferencer's system prompts, verbatim (including the space before each line break).
GEN_THINK_SYSTEM_PROMPT = (
    "You should first think about the planning process in the mind and then generate the image. \n"
    "The planning process is enclosed within <think> </think> tags, i.e. <think> planning process here </think> "
    "image here"
)
VLM_THINK_SYSTEM_PROMPT = (
    "You should first think about the reasoning process in the mind and then provide the user with the answer. \n"
    "The reasoning process is enclosed within <think> </think> tags, i.e. <think> reasoning process here </think> "
    "answer here"
)
TASKS = ("image", "text", "interleaved")
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# Static decoding caches (`generation_config.cache_implementation = "static"`) are sized in steps of this many tokens.
STATIC_CACHE_BUCKET = 256
# The most tokens that several pieces of a context (text turns, image blocks) are written with in one forward pass.
CONTEXT_PASS_TOKENS = 2048

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> from PIL import Image
        >>> from loom_hf import LoomInterleavedPipeline

        >>> pipe = LoomInterleavedPipeline.from_bagel("BAGEL-7B-MoT", dtype=torch.bfloat16).to("cuda")
        >>> # text to image
        >>> image = pipe(["A red square above a blue circle."], height=1024, width=1024).images[0]
        >>> # editing, or several reference images: images and text in the order the model should read them
        >>> edited = pipe([Image.open("cat.png"), "Make the cat wear a hat."], guidance_renorm="text_channel").images[0]
        >>> # understanding
        >>> answer = pipe([Image.open("cat.png"), "What animal is this?"], task="text").texts[0]
        >>> # a batch: one input list per request; outputs flat in request order and per request
        >>> out = pipe([["A red square."], [Image.open("cat.png"), "Make it blue."]], num_images_per_prompt=2)
        >>> out.images, out.requests[1].images
        ```
"""


@dataclass
class EncodedImage:
    """An image ready to enter a context, encoded once: clean latent tokens and ViT patches with their grids."""

    latent_tokens: torch.Tensor | None = None
    latent_grid: tuple[int, int] | None = None
    vit_patches: torch.Tensor | None = None
    vit_grid: tuple[int, int] | None = None


@dataclass
class GuidanceContexts:
    """The three KV caches BAGEL's guidance reads.

    * `cond`: the whole context;
    * `text_uncond`: the context without the final text turn(s) (reset to the context before each text turn and
      after each image);
    * `image_uncond`: every text turn and no image; only built when `image_free` (a call whose image guidance is off
      never reads it, and an answer reads neither guidance context).
    """

    cond: LoomCache
    text_uncond: LoomCache
    image_uncond: LoomCache
    image_free: bool = True

    @classmethod
    def empty(cls, image_free: bool = True) -> "GuidanceContexts":
        cond = LoomCache()
        return cls(cond, cond.fork(), cond.fork(), image_free)

    def fork(self) -> "GuidanceContexts":
        return GuidanceContexts(self.cond.fork(), self.text_uncond.fork(), self.image_uncond.fork(), self.image_free)

    def extend(
        self,
        pipe: "LoomInterleavedPipeline",
        blocks: ContextBlocks,
        text_free_at: ContextMark | None,
        text_turns: ContextBlocks,
    ) -> None:
        """Append `blocks` to the conditional context (one forward pass), branch the text-free context off it at
        `text_free_at` (unchanged when `None`) and, when it is kept, append `text_turns` (the text of `blocks`) to the
        image-free context."""
        length, position = self.cond.get_seq_length(), self.cond.next_position
        pipe.write_context(self.cond, blocks)
        if text_free_at is not None:
            self.text_uncond = self.cond.prefix(length + text_free_at.tokens, position + text_free_at.positions)
        if self.image_free:
            pipe.write_context(self.image_uncond, text_turns)

    def branch(self, name: str) -> LoomCache:
        return getattr(self, name)


@dataclass
class ImageJob:
    """One image to denoise: its guidance contexts, size, noise source and Loom conditioning (a tutorial frame's
    `previous_latents` are the final latents of the frame before it, which [`FrameKeeping`] keeps from)."""

    contexts: GuidanceContexts
    size: tuple[int, int]
    generator: torch.Generator | None = None
    latents: torch.Tensor | None = None
    frame_index: int | None = None
    entity_weights: torch.Tensor | None = None
    previous_latents: torch.Tensor | None = None


@dataclass(frozen=True)
class DenoisingSettings:
    """How every image of a call is sampled."""

    num_inference_steps: int
    guidance: GuidanceConfig
    timestep_shift: float
    callback_on_step_end: Callable | None = None
    callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",)
    frame_keeping: FrameKeeping | None = None


@dataclass(frozen=True)
class PreviousFrames:
    """The final latents `(N, C, h, w)` of the frames a batch of jobs keeps from, and which jobs have one."""

    latents: torch.Tensor
    has_frame: torch.Tensor


@dataclass(frozen=True)
class TutorialSettings:
    """The interleaved-only options of a call."""

    num_steps: int | None
    max_history_frames: int
    history: str
    use_step_text: bool


def distinct_shifted_timesteps(shift: float, num_inference_steps: int) -> bool:
    """Whether the pipeline's schedule (`linspace(1, 0, N + 1)[:-1]`, shifted as the flow-match scheduler shifts it:
    `shift·σ / (1 + (shift − 1)·σ)`) keeps N distinct float32 timesteps; an extreme shift maps them all to one."""
    sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1]
    with np.errstate(all="ignore"):
        shifted = shift * sigmas / (1 + (shift - 1) * sigmas)
    timesteps = (shifted * 1000).astype(np.float32)
    return bool(np.isfinite(timesteps).all() and (np.diff(timesteps) < 0).all())


class LoomInterleavedPipeline(DiffusionPipeline):
    r"""
    Interleaved text-image generation with a Loom (or BAGEL) model, for one request or a batch of them.

    The context (strings and images in order) is encoded once into KV caches: text turns causally, images as a
    clean VAE-latent block then a ViT block. Text is decoded from the caches with `model.generate()`; an image is
    generated by Euler steps of the flow whose noisy latent tokens attend to the cached context without being written
    into it. At each step the guidance branches of every image of the batch run as the rows of one forward pass.

    One pipeline object may be shared by several threads: calls are serialised by a lock (the model, its step cache
    hooks and the scheduler hold per-call state).

    Args:
        model ([`LoomForInterleavedGeneration`]): the MoT transformer with its ViT and latent heads.
        vae ([`AutoencoderKL`]): the FLUX autoencoder (latents are `(z - shift) · scale`).
        scheduler ([`FlowMatchEulerDiscreteScheduler`]): Euler sampler; BAGEL's schedule is
            `set_timesteps(sigmas=linspace(1, 0, N+1)[:-1])` shifted by `timestep_shift`.
        processor ([`LoomProcessor`]): tokenizer and image paths.
        default_guidance_scale / default_image_guidance_scale: the guidance a call uses when it names none, saved
            with the pipeline (`model_index.json`): BAGEL's 4.0 / 2.0 unless a checkpoint was tuned otherwise.
        default_frame_keep_threshold: the `frame_keep_threshold` of a tutorial call that names none, saved likewise
            (`None`: frame keeping off, as for BAGEL).
        default_frame_keep_text_share: the `frame_keep_text_share` of a call that keeps frames and names none, saved
            likewise (`None`: the clean-frame estimate alone decides).
        default_num_inference_steps: the Euler steps per image of a call that names none, saved likewise (50 unless
            a checkpoint samples as well in fewer; the official code's default `num_timesteps=50` is 49 steps).
    """

    # The VAE (under 1 % of BAGEL) stays on the accelerator: with "model->vae" every decoded frame of a tutorial would
    # send the whole model back to the CPU, and the next frame fetch it again (6 fetches for 6 frames, measured).
    model_cpu_offload_seq = "model"
    _exclude_from_cpu_offload = ["vae"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        model: LoomForInterleavedGeneration,
        vae: AutoencoderKL,
        scheduler: FlowMatchEulerDiscreteScheduler,
        processor: LoomProcessor,
        default_guidance_scale: float = 4.0,
        default_image_guidance_scale: float = 2.0,
        default_frame_keep_threshold: float | None = None,
        default_num_inference_steps: int = 50,
        default_frame_keep_text_share: float | None = None,
    ):
        super().__init__()
        check_integer("default_num_inference_steps", default_num_inference_steps, minimum=1)
        check_frame_keep_text_share("default_frame_keep_text_share", default_frame_keep_text_share)
        self.register_modules(model=model, vae=vae, scheduler=scheduler, processor=processor)
        self.register_to_config(
            default_guidance_scale=default_guidance_scale,
            default_image_guidance_scale=default_image_guidance_scale,
            default_frame_keep_threshold=default_frame_keep_threshold,
            default_num_inference_steps=default_num_inference_steps,
            default_frame_keep_text_share=default_frame_keep_text_share,
        )
        self.image_processor = LoomVaeImageProcessor(vae_scale_factor=self.latent_stride // 2)
        self._guidance_scale, self._num_timesteps, self._interrupt = 1.0, 0, False
        self._call_device: torch.device | None = None
        self._call_lock = threading.RLock()

    @classmethod
    def from_bagel(
        cls,
        release_dir: str | os.PathLike,
        vae_image_size: tuple[int, int, int] = (1024, 512, 16),
        vit_image_size: tuple[int, int, int] = (980, 224, 14),
        dtype: torch.dtype | None = None,
        timestep_shift: float = 3.0,
        max_frames: int = 16,
        entity_tokens: tuple[str, ...] = ENTITY_TOKENS,
        quantization_config=None,
    ) -> "LoomInterleavedPipeline":
        """Pipeline of an official BAGEL release folder (`ByteDance-Seed/BAGEL-7B-MoT` layout).

        Args:
            release_dir: folder with `llm_config.json`, `vit_config.json`, `ema.safetensors`, `ae.safetensors` and
                the Qwen2 tokenizer.
            vae_image_size / vit_image_size: (max side, min side, stride) of the VAE and ViT image paths.
            dtype: cast the model and VAE (default: as stored).
            timestep_shift: default shift of the sampling schedule (BAGEL's inference default is 3.0).
            max_frames: rows of Loom's temporal frame table; BAGEL has none, so it starts at zero (a no-op until
                fine-tuned). 0 builds the plain BAGEL model.
            entity_tokens: Loom's entity tokens, added to the tokenizer and placed into spare embedding rows.
            quantization_config: a transformers quantization config for the model (`TorchAoConfig(...)`), applied
                weight by weight while the release streams in.
        """
        check_release_numbers(timestep_shift=timestep_shift, max_frames=max_frames)
        model, vae, processor = load_bagel_release(
            release_dir, vae_image_size, vit_image_size, dtype, max_frames, entity_tokens, quantization_config
        )
        return cls(model, vae, FlowMatchEulerDiscreteScheduler(shift=timestep_shift), processor)

    @classmethod
    def convert_bagel(
        cls,
        release_dir: str | os.PathLike,
        save_directory: str | os.PathLike,
        vae_image_size: tuple[int, int, int] = (1024, 512, 16),
        vit_image_size: tuple[int, int, int] = (980, 224, 14),
        dtype: torch.dtype | None = None,
        timestep_shift: float = 3.0,
        max_frames: int = 16,
        entity_tokens: tuple[str, ...] = ENTITY_TOKENS,
        max_shard_size: str | int = "5GB",
    ) -> None:
        """Write a BAGEL release as a pipeline folder, the folder `from_bagel(...).save_pretrained(...)` writes (the
        same bytes), without holding the model: it is built on the meta device and each safetensors shard is read
        from the release, converted and written in turn, so peak memory is about one shard. This is how
        `loom convert-bagel` converts; BAGEL-7B-MoT (29 GB) converts on a machine with less memory than that.

        Arguments as in `from_bagel`; `max_shard_size` is the largest safetensors shard of the model.
        """
        check_release_numbers(timestep_shift=timestep_shift, max_frames=max_frames)
        model, vae, processor = load_bagel_release(
            release_dir, vae_image_size, vit_image_size, dtype, max_frames, entity_tokens, streamed=True
        )
        pipe = cls(model, vae, FlowMatchEulerDiscreteScheduler(shift=timestep_shift), processor)
        pipe.save_pretrained(save_directory, max_shard_size=max_shard_size)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "LoomInterleavedPipeline":
        """`DiffusionPipeline.from_pretrained`; a `quantization_config` (`PipelineQuantizationConfig`) whose backend
        is not installed is refused before any component loads, and in a local folder every JSON and safetensors file
        of `model_index.json` and its components is checked readable first (a broken one is named in the error)."""
        check_quantization_backend(kwargs.get("quantization_config"))
        folder = Path(pretrained_model_name_or_path)
        if (folder / "model_index.json").is_file():
            index = read_json(folder / "model_index.json", "pipeline")
            for component in sorted(name for name in index if not name.startswith("_")):
                if (folder / component).is_dir():
                    check_saved_folder(folder / component, "pipeline")
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def enable_group_offload(self, onload_device: torch.device | str, *args, **kwargs) -> None:
        """diffusers' group offloading; an accelerator `onload_device` on a machine without one is refused here
        (diffusers accepts it and fails inside the first forward pass)."""
        device = torch.device(onload_device)
        if device.type != "cpu" and not torch.accelerator.is_available():
            raise RuntimeError(f"`onload_device` is {device}, but this machine has no accelerator.")
        super().enable_group_offload(device, *args, **kwargs)

    def load_lora_weights(self, adapter_dir: str | os.PathLike, adapter_name: str | None = None) -> None:
        """Load a LoRA adapter saved by `LoomTrainer` (PEFT format) into the model; the pipeline then runs with it."""
        self.model.load_adapter(str(adapter_dir), adapter_name=adapter_name)

    @property
    def latent_stride(self) -> int:
        """Pixels per latent token along one side."""
        return self.model.config.latent_downsample

    @property
    def max_image_side(self) -> int:
        return self.model.config.max_latent_size * self.latent_stride

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @property
    def input_device(self) -> torch.device:
        """Where inputs go: the execution device, looked up once per call (diffusers finds it by walking every
        module, which a forward pass per token or step should not repeat)."""
        return self._call_device if self._call_device is not None else self._execution_device

    @contextmanager
    def _input_device_fixed(self) -> Iterator[None]:
        self._call_device = self._execution_device
        try:
            yield
        finally:
            self._call_device = None

    # ---------------------------------------------------------------- context encoding

    def append_text(self, cache: LoomCache, text: str | list[int]) -> None:
        """Append one text turn (`<|im_start|>` + tokens + `<|im_end|>`) to `cache`."""
        blocks = ContextBlocks()
        blocks.add_text(self.processor.text_block(text) if isinstance(text, str) else text)
        self.write_context(cache, blocks)

    def encode_image(self, image: PIL.Image.Image, use_vae: bool = True, use_vit: bool = True) -> EncodedImage:
        """Clean latent tokens (VAE posterior mean) and ViT patches of an image already resized for the VAE."""
        encoded = EncodedImage()
        if use_vae:
            pixels = self.processor.image_processor.vae_pixel_values(image)
            pixels = pixels.to(device=self.input_device, dtype=self.vae.dtype)
            latents = encode_latents(self.vae, pixels)
            patch = self.model.config.latent_patch_size
            encoded.latent_tokens = pack_latents(latents.float(), patch)
            encoded.latent_grid = (latents.shape[-2] // patch, latents.shape[-1] // patch)
        if use_vit:
            patches, encoded.vit_grid = self.processor.image_processor.vit_patches(image)
            encoded.vit_patches = patches.to(self.input_device)
        return encoded

    def add_image(self, blocks: ContextBlocks, image: EncodedImage, frame_index: int | None = None) -> None:
        """Add an encoded image to `blocks`: its clean latent block, then its ViT block (those it holds); each takes one
        RoPE position. `frame_index` adds Loom's temporal embedding of that frame to the image's tokens."""
        if image.latent_tokens is not None:
            ids, types = self.processor.image_block(image.latent_tokens.shape[0], TokenType.LATENT)
            blocks.add_block(ids, types, frame_index, latent=(image.latent_tokens, image.latent_grid))
        if image.vit_patches is not None:
            ids, types = self.processor.image_block(image.vit_patches.shape[0], TokenType.VIT)
            blocks.add_block(ids, types, frame_index, vit=(image.vit_patches, image.vit_grid))

    @property
    def writes_one_piece_per_pass(self) -> bool:
        """Flash attention knows only causal or full attention per call, so under it every text turn and image block
        of a context takes a forward pass of its own."""
        return is_flash_attention_requested(self.model.config.get_text_config())

    def write_context(self, cache: LoomCache, blocks: ContextBlocks) -> None:
        """Append `blocks` to `cache`, consecutive pieces sharing a forward pass (see [`context_passes`])."""
        for pieces in self.context_passes(blocks):
            self.model(**self._context_inputs(pieces), past_key_values=cache, logits_to_keep=1)

    def context_passes(self, blocks: ContextBlocks) -> list[list[ContextPiece]]:
        """The pieces of `blocks` grouped into forward passes, in order.

        Consecutive pieces share a pass of up to `CONTEXT_PASS_TOKENS` tokens, a larger piece goes alone: merging saves
        the fixed cost of a pass, which only small pieces notice, while the bound keeps a pass's attention mask and
        activations near those of one large image block (a 1024 px BAGEL tutorial frame's history is tens of thousands
        of tokens). Under flash attention each piece takes a pass of its own ([`writes_one_piece_per_pass`]).
        """
        if self.writes_one_piece_per_pass:
            return [[piece] for piece in blocks.pieces]
        passes, tokens = [], 0
        for piece in blocks.pieces:
            if passes and tokens + len(piece.input_ids) <= CONTEXT_PASS_TOKENS:
                passes[-1].append(piece)
                tokens += len(piece.input_ids)
            else:
                passes.append([piece])
                tokens = len(piece.input_ids)
        return passes

    def _context_inputs(self, pieces: list[ContextPiece]) -> dict:
        """The forward inputs that write `pieces` as one sequence."""
        device = self.input_device

        def row(field: str) -> torch.Tensor:
            """One `[1, length]` row of the pieces' `field` (`input_ids`, `token_types` or `frame_ids`)."""
            return torch.tensor([[value for piece in pieces for value in getattr(piece, field)]], device=device)

        inputs = {"input_ids": row("input_ids"), "mm_token_type_ids": row("token_types")}
        if any(frame >= 0 for piece in pieces for frame in piece.frame_ids):
            inputs["frame_ids"] = row("frame_ids")
        latents = [piece.latent for piece in pieces if piece.latent is not None]
        if latents:
            inputs["latents"] = torch.cat([tokens for tokens, _ in latents]).to(device)
            inputs["latent_grid_hw"] = torch.tensor([grid for _, grid in latents], device=device)
            inputs["timesteps"] = torch.zeros(len(latents), device=device)
        patches = [piece.vit for piece in pieces if piece.vit is not None]
        if patches:
            pixels = torch.cat([patch for patch, _ in patches])
            inputs["pixel_values"] = pixels.to(device=device, dtype=self.model.dtype)
            inputs["image_grid_hw"] = torch.tensor([grid for _, grid in patches], device=device)
        return inputs

    def _block_inputs(self, ids: list[int], types: list[int], rows: int) -> dict:
        """`input_ids` and `mm_token_type_ids` of `rows` copies of one image block."""
        device = self.input_device
        token_types = torch.tensor([types], device=device).expand(rows, -1)
        return {"input_ids": torch.tensor([ids], device=device).expand(rows, -1), "mm_token_type_ids": token_types}

    def encode_context(
        self,
        inputs: list[str | PIL.Image.Image],
        system_prompt: str | None = None,
        use_vae: bool = True,
        contexts: GuidanceContexts | None = None,
        image_free: bool = True,
    ) -> GuidanceContexts:
        """Encode the interleaved inputs into the three guidance contexts, as the official inferencer does.

        Appends to `contexts` when given (the inputs continue an existing context); a new context builds its
        image-free branch only with `image_free`.
        """
        contexts = contexts or GuidanceContexts.empty(image_free)
        blocks, text_turns, text_free_at = ContextBlocks(), ContextBlocks(), None
        if system_prompt is not None:
            for turns in (blocks, text_turns):
                turns.add_text(self.processor.text_block(system_prompt))
        for item in inputs:
            if isinstance(item, str):
                text_free_at = blocks.mark()
                for turns in (blocks, text_turns):
                    turns.add_text(self.processor.text_block(item))
            else:
                image = self.processor.image_processor.resize_for_vae(item)
                self.add_image(blocks, self.encode_image(image, use_vae=use_vae))
                text_free_at = blocks.mark()
        contexts.extend(self, blocks, text_free_at, text_turns)
        return contexts

    # ---------------------------------------------------------------- text

    def decode_texts(
        self,
        contexts: list[LoomCache],
        generation_config: GenerationConfig,
        generators: list[torch.Generator | None],
    ) -> list[TextSegment]:
        """Decode one turn from each context, all rows in one `model.generate()` call (contexts are not changed).

        Each row is primed with `<|im_start|>` and stops at `<|im_end|>`; sampling draws row `i` from `generators[i]`.
        """
        if self.interrupt:
            return [TextSegment(text="", token_ids=[]) for _ in contexts]
        stacked, padding = LoomCache.stack(contexts, pad_token_id=self.processor.tokenizer.pad_token_id or 0)
        device = self.input_device
        start = torch.full((len(contexts), 1), self.processor.bos_token_id, dtype=torch.long, device=device)
        input_ids = torch.cat([stacked.token_ids.to(device), start], dim=1)
        attention_mask = torch.cat([padding.to(device), torch.ones_like(start)], dim=1)
        # BAGEL positions: generate() reads the last column and advances it by one per token (only text follows).
        position_ids = torch.zeros_like(input_ids)
        position_ids[:, -1] = stacked.next_position.to(device)
        config, processors, cache = generation_config, None, stacked
        if generation_config.do_sample:
            processors = sampling_processors(generation_config, generators)
            config = copy.deepcopy(generation_config)
            config.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        if generation_config.cache_implementation == "static":
            cache = self.static_decoding_cache(stacked, generation_config.max_new_tokens)
            del stacked  # its keys and values now live in the static cache: decode without a second copy
        with self.progress_bar(total=generation_config.max_new_tokens) as progress_bar:
            sequences = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([InterruptCriteria(lambda: self.interrupt)]),
                streamer=ProgressStreamer(progress_bar),
            )
        stops = set(config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id])
        segments = []
        for row in sequences[:, input_ids.shape[1] :].tolist():
            ends = [index for index, token in enumerate(row) if token in stops]
            generated = row[: ends[0]] if ends else row
            segments.append(TextSegment(text=self.processor.decode_generated(generated), token_ids=generated))
        return segments

    def static_decoding_cache(self, context: LoomCache, max_new_tokens: int) -> LoomStaticCache:
        """`context` in a preallocated cache with room for the start token and `max_new_tokens`, so that `generate()`
        can compile the decoding step. Its length is rounded up to a multiple of `STATIC_CACHE_BUCKET` tokens: calls
        of similar lengths then share one compiled graph instead of each compiling its own."""
        needed = context.get_seq_length() + 1 + max_new_tokens
        length = -(-needed // STATIC_CACHE_BUCKET) * STATIC_CACHE_BUCKET
        return LoomStaticCache.from_cache(context, self.model.config.get_text_config(decoder=True), length)

    # ---------------------------------------------------------------- image

    def prepare_latents(
        self,
        height: int,
        width: int,
        generator: torch.Generator | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Initial noise in diffusers layout `(1, C, height / 8, width / 8)` (drawn on the CPU for reproducibility)."""
        if latents is not None:
            return latents.to(device=self.input_device, dtype=torch.float32)
        downsample = self.model.config.vae_downsample
        shape = (1, self.model.config.latent_channels, height // downsample, width // downsample)
        noise = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
        return noise.to(self.input_device)

    def denoise(self, jobs: list[ImageJob], settings: DenoisingSettings) -> list[torch.Tensor]:
        """Final diffusers-layout latents of every job; jobs of one size are denoised together."""
        results: list[torch.Tensor | None] = [None] * len(jobs)
        for size in dict.fromkeys(job.size for job in jobs):
            members = [index for index, job in enumerate(jobs) if job.size == size]
            for index, latents in zip(members, self._denoise_together([jobs[i] for i in members], settings).split(1)):
                results[index] = latents
        return results

    def _denoise_together(self, jobs: list[ImageJob], settings: DenoisingSettings) -> torch.Tensor:
        """Euler flow sampling of same-size images as one batch; returns their final latents `(N, C, h, w)`."""
        latents = noise = torch.cat([self.prepare_latents(*job.size, job.generator, job.latents) for job in jobs])
        self.scheduler.set_shift(settings.timestep_shift)
        sigmas = np.linspace(1.0, 0.0, settings.num_inference_steps + 1)[:-1]
        self.scheduler.set_timesteps(sigmas=sigmas, device=latents.device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        generators = [job.generator for job in jobs]
        # A stochastic scheduler draws fresh noise every step: from each image's own generator, as its first noise.
        step_generator = generators if all(generator is not None for generator in generators) else None
        keeping = settings.frame_keeping
        previous = self._previous_frames(jobs, noise) if keeping is not None else None
        kept = None
        stacks: dict[tuple[str, ...], tuple[LoomCache, torch.Tensor]] = {}
        with self.model.step_cache(), self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                sigma = self.scheduler.sigmas[i]
                velocity, text_effect = self._guided_step(jobs, latents, sigma, settings.guidance, stacks)
                if previous is not None and i == keeping.decision_step(len(timesteps)):
                    kept = previous.has_frame * kept_tokens(
                        latents - sigma * velocity,
                        previous.latents,
                        keeping.threshold,
                        patch_size=self.model.config.latent_patch_size,
                        text_effect=text_effect,
                        text_share=keeping.text_share,
                    )
                latents = self.scheduler.step(velocity, t, latents, generator=step_generator, return_dict=False)[0]
                if kept is not None:
                    next_sigma = float(self.scheduler.sigmas[i + 1])
                    latents = follow_kept_tokens(latents, previous.latents, noise, mask=kept, sigma=next_sigma)
                if settings.callback_on_step_end is not None:
                    step_tensors = {"latents": latents}
                    callback_kwargs = {name: step_tensors[name] for name in settings.callback_on_step_end_tensor_inputs}
                    callback_outputs = settings.callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)
                progress_bar.update()
        return latents

    @staticmethod
    def _previous_frames(jobs: list[ImageJob], noise: torch.Tensor) -> "PreviousFrames | None":
        """The previous frames the jobs keep from, stacked (zeros and `has_frame` 0 for a job without one); `None`
        when no job has one."""
        if all(job.previous_latents is None for job in jobs):
            return None
        latents = torch.cat(
            [
                torch.zeros_like(noise[:1]) if job.previous_latents is None else job.previous_latents.to(noise)
                for job in jobs
            ]
        )
        has_frame = torch.tensor([job.previous_latents is not None for job in jobs], dtype=noise.dtype)
        return PreviousFrames(latents, has_frame.to(noise.device).view(-1, 1, 1, 1))

    def guided_velocities(
        self,
        jobs: list[ImageJob],
        latents: torch.Tensor,
        sigma: torch.Tensor,
        guidance: GuidanceConfig,
        stacks: dict[tuple[str, ...], tuple[LoomCache, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Guided velocity `(N, C, h, w)` of one Euler step for same-size `latents` `(N, C, h, w)`.

        The conditional branch of every job, plus its text-free and image-free branches when their scales are on at
        `sigma`, run as the rows of one forward pass over their left-padded KV caches (`stacks` keeps the stacked
        caches between steps). Inside a job's `entity_weights` (a latent-resolution mask in [0, 1]) the text scale is
        `guidance.entity_scale` instead.
        """
        return self._guided_step(jobs, latents, sigma, guidance, stacks)[0]

    def _guided_step(
        self,
        jobs: list[ImageJob],
        latents: torch.Tensor,
        sigma: torch.Tensor,
        guidance: GuidanceConfig,
        stacks: dict[tuple[str, ...], tuple[LoomCache, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[`guided_velocities`] and the text's effect on each latent token, `(N, 1, h/p, w/p)`: the mean absolute
        difference between the conditional and the text-free velocity (`None` where text guidance is off)."""
        text_scale, image_scale, entity_scale = guidance.scales_at(float(sigma))
        branches = ["cond"]
        if max(text_scale, entity_scale or 1.0) > 1.0:
            branches.append("text_uncond")
            if image_scale > 1.0:
                branches.append("image_uncond")
        key = tuple(branches)
        if "image_uncond" in branches and not all(job.contexts.image_free for job in jobs):
            raise RuntimeError("Image guidance is on but a context was encoded without its image-free branch.")
        stacks = {} if stacks is None else stacks
        if key not in stacks:
            caches = [job.contexts.branch(name) for job in jobs for name in branches]
            stacks[key] = LoomCache.stack(caches)
        cache, padding = stacks[key]
        with self.model.step_cache_context(f"branches={len(branches)}"):
            packed = self._branch_velocities(jobs, latents, sigma, cache, padding, len(branches))
        by_branch = dict(zip(branches, packed.unbind(1)))  # each [N, tokens, channels]

        def combine(scale: float) -> torch.Tensor:
            return guided_velocity(
                by_branch["cond"],
                by_branch.get("text_uncond"),
                by_branch.get("image_uncond"),
                scale,
                image_scale,
                guidance.renorm,
                guidance.renorm_min,
            )

        patch = self.model.config.latent_patch_size
        grid = (latents.shape[-2] // patch, latents.shape[-1] // patch)
        velocity = torch.cat([unpack_latents(tokens, *grid, patch_size=patch) for tokens in combine(text_scale)])
        weighted = [index for index, job in enumerate(jobs) if job.entity_weights is not None]
        if weighted:
            entity = torch.cat([unpack_latents(tokens, *grid, patch_size=patch) for tokens in combine(entity_scale)])
            for index in weighted:
                velocity[index] = torch.lerp(velocity[index], entity[index], jobs[index].entity_weights[0])
        text_effect = None
        if "text_uncond" in by_branch:
            difference = (by_branch["cond"] - by_branch["text_uncond"]).abs().mean(dim=-1)  # [N, tokens], row-major
            text_effect = difference.view(len(jobs), 1, *grid)
        return velocity, text_effect

    def _branch_velocities(
        self,
        jobs: list[ImageJob],
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cache: LoomCache,
        padding: torch.Tensor,
        num_branches: int,
    ) -> torch.Tensor:
        """One forward pass of every job's branches (rows `job·num_branches + branch`); packed velocities
        `[N, num_branches, tokens, channels]`."""
        device = self.input_device
        patch = self.model.config.latent_patch_size
        grid = (latents.shape[-2] // patch, latents.shape[-1] // patch)
        tokens = torch.stack([pack_latents(latent[None], patch) for latent in latents])  # [N, T, C]
        rows = len(jobs) * num_branches
        ids, types = self.processor.image_block(tokens.shape[1], TokenType.LATENT)
        inputs = self._block_inputs(ids, types, rows=rows)
        frames = [job.frame_index for job in jobs]
        if any(frame is not None for frame in frames):
            per_row = torch.tensor([-1 if f is None else f for f in frames], device=device).repeat_interleave(
                num_branches
            )
            inputs["frame_ids"] = torch.where(inputs["mm_token_type_ids"] != TokenType.TEXT.value, per_row[:, None], -1)
        query = torch.ones(rows, len(ids), dtype=padding.dtype, device=device)
        with cache.read_only():
            output = self.model(
                **inputs,
                attention_mask=torch.cat([padding.to(device), query], dim=1),
                latents=tokens.repeat_interleave(num_branches, dim=0).flatten(0, 1).to(device),
                latent_grid_hw=torch.tensor([grid], device=device).expand(rows, -1),
                timesteps=torch.as_tensor(sigma, dtype=torch.float32, device=device).reshape(1).expand(rows),
                past_key_values=cache,
                logits_to_keep=1,
            )
        return output.velocity.float().reshape(len(jobs), num_branches, tokens.shape[1], -1)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, output_type: str) -> list:
        """Decode diffusers-layout latents `(N, C, h, w)` to a list of images of `output_type` (`"latent"` returns
        them unchanged, one `(1, C, h, w)` tensor each)."""
        if output_type == "latent":
            return list(latents.split(1))
        return self.image_processor.postprocess(self._decode_pixels(latents), output_type=output_type)

    def _decode_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        scaled = latents / self.vae.config.scaling_factor + self.vae.config.shift_factor
        return self.vae.decode(scaled.to(self.vae.dtype), return_dict=False)[0].float()

    def entity_weights(self, entity_masks: dict, height: int, width: int, name: str = "entity_masks") -> torch.Tensor:
        """Union of the entity masks at latent resolution: `(1, 1, height / 8, width / 8)` weights in [0, 1]; errors
        name the masks `name[token]`."""
        downsample = self.model.config.vae_downsample
        masks = []
        for token, mask in entity_masks.items():
            mask = entity_mask_array(token, mask, name)
            if mask.shape != (height, width):
                raise ValueError(
                    f"`{name}[{token!r}]` must be {height}x{width} (the output image); got {tuple(mask.shape)}."
                )
            masks.append(mask)
        union = torch.stack(masks).amax(dim=0)[None, None]
        weights = torch.nn.functional.interpolate(union, size=(height // downsample, width // downsample), mode="area")
        return weights.to(self.input_device)

    # ---------------------------------------------------------------- tutorials

    def frame_contexts(
        self,
        base: GuidanceContexts,
        frames: list[EncodedImage],
        step_index: int,
        step_text: str | None,
        tutorial: TutorialSettings,
    ) -> tuple[GuidanceContexts, list[int]]:
        """Contexts that render frame `step_index` (0-based): the shared instruction + plan prefix, the chosen
        earlier frames as clean latent + ViT blocks with their temporal indices, then the step's text turn
        (left out when `step_text` is `None`). Returns them with the chosen frame indices."""
        contexts, blocks, text_turns = base.fork(), ContextBlocks(), ContextBlocks()
        chosen = history_frame_indices(step_index, tutorial.max_history_frames, tutorial.history)
        for index in chosen:
            self.add_image(blocks, frames[index], frame_index=self._frame_index(index))
        text_free_at = blocks.mark()
        if step_text is not None:
            for turns in (blocks, text_turns):
                turns.add_text(self.processor.text_block(step_turn(step_index + 1, step_text)))
        contexts.extend(self, blocks, text_free_at, text_turns)
        return contexts, chosen

    def _frame_index(self, index: int) -> int | None:
        """The temporal-table row of frame `index`, or `None` when the model has no table."""
        return index if self.model.config.max_frames > 0 else None

    def generate_tutorials(
        self,
        requests: list[list[str | PIL.Image.Image]],
        plans: list[list[str] | None],
        sizes: list[tuple[int, int]],
        *,
        tutorial: TutorialSettings,
        denoising: DenoisingSettings,
        generation_config: GenerationConfig,
        generators: list[torch.Generator | None],
        output_type: str,
        emit: Callable[[int, TextSegment | ImageSegment], None],
    ) -> list[list[str]]:
        """Plan first, then render every step (Loom's interleaved generation) for a batch of tutorials; returns
        each tutorial's plan.

        Plans still missing are written in one batched decode; then frame `t` of every tutorial that has a step `t`
        is rendered in one batched denoising, so tutorials whose plans differ in length finish independently.
        """
        # 1. Shared prefix of every frame: the inputs and the planning instruction.
        bases = [
            self.encode_context(
                [*inputs[:-1], plan_instruction(inputs[-1], tutorial.num_steps)],
                image_free=denoising.guidance.uses_image_free,
            )
            for inputs in requests
        ]
        # 2. Plans: the given ones, the others written by the model in one batch.
        missing = [index for index, plan in enumerate(plans) if plan is None]
        if missing:
            written = self.decode_texts(
                [bases[i].cond for i in missing], generation_config, [generators[i] for i in missing]
            )
            for index, segment in zip(missing, written):
                steps = parse_plan(segment.text)[: tutorial.num_steps or self._max_tutorial_steps()]
                if not steps and not self.interrupt:
                    raise ValueError(
                        f"The model's plan could not be parsed into steps: {segment.text!r}. Pass `plan=[...]` to "
                        "skip planning."
                    )
                plans[index] = steps
        for index, plan in enumerate(plans):
            plan_text = format_plan(plan)
            emit(index, TextSegment(text=plan_text, token_ids=self._token_ids(plan_text)))
            self.encode_context([plan_text], contexts=bases[index])
        # 3. Frames, step by step across the batch.
        frames: list[list[EncodedImage]] = [[] for _ in requests]
        last_latents: list[torch.Tensor | None] = [None] * len(requests)
        with self.progress_bar(total=sum(len(plan) for plan in plans)) as progress_bar:
            for step in range(max((len(plan) for plan in plans), default=0)):
                if self.interrupt:
                    break
                active = [index for index, plan in enumerate(plans) if len(plan) > step]
                jobs = []
                for index in active:
                    turn = step_turn(step + 1, plans[index][step])
                    emit(index, TextSegment(text=turn, token_ids=self._token_ids(turn)))
                    shown = plans[index][step] if tutorial.use_step_text else None
                    contexts, _ = self.frame_contexts(bases[index], frames[index], step, shown, tutorial)
                    jobs.append(
                        ImageJob(
                            contexts,
                            sizes[index],
                            generators[index],
                            frame_index=self._frame_index(step),
                            previous_latents=last_latents[index],
                        )
                    )
                for index, latents in zip(active, self.denoise(jobs, denoising)):
                    last_latents[index] = latents
                    pixels = self._decode_pixels(latents)
                    history_image = self.image_processor.postprocess(pixels, output_type="pil")[0]
                    frames[index].append(self.encode_image(history_image))
                    if output_type == "pil":
                        image = history_image
                    elif output_type == "latent":
                        image = latents
                    else:
                        image = self.image_processor.postprocess(pixels, output_type=output_type)[0]
                    emit(index, ImageSegment(image=image))
                    progress_bar.update()
        return plans

    def _token_ids(self, text: str) -> list[int]:
        return self.processor.tokenizer.encode(text, add_special_tokens=False)

    def _max_tutorial_steps(self) -> int:
        return self.model.config.max_frames if self.model.config.max_frames > 0 else 64

    # ---------------------------------------------------------------- validation

    def resolved_defaults(
        self,
        task: str,
        *,
        guidance_scale: float | None = None,
        image_guidance_scale: float | None = None,
        frame_keep_threshold: float | None = None,
        num_inference_steps: int | None = None,
        frame_keep_text_share: float | None = None,
    ) -> dict[str, float | int | None]:
        """The guidance scales, frame keeping and Euler steps a call of `task` runs with: each value given, or the
        pipeline's saved `default_*` where it is `None` (frame keeping only for `interleaved`, its text share only
        where frames are kept)."""
        if num_inference_steps is None:
            num_inference_steps = self.config.default_num_inference_steps
        if guidance_scale is None:
            guidance_scale = self.config.default_guidance_scale
        if image_guidance_scale is None:
            image_guidance_scale = self.config.default_image_guidance_scale
        if frame_keep_threshold is None and task == "interleaved":
            frame_keep_threshold = self.config.default_frame_keep_threshold
        if frame_keep_text_share is None and task == "interleaved" and frame_keep_threshold:
            frame_keep_text_share = self.config.default_frame_keep_text_share
        return {
            "guidance_scale": guidance_scale,
            "image_guidance_scale": image_guidance_scale,
            "frame_keep_threshold": frame_keep_threshold,
            "num_inference_steps": num_inference_steps,
            "frame_keep_text_share": frame_keep_text_share,
        }

    def check_inputs(
        self,
        *,
        inputs,
        task: str,
        think: bool,
        use_step_text: bool,
        plan,
        num_images_per_prompt: int,
        num_steps: int | None,
        max_history_frames: int,
        history: str,
        num_inference_steps: int,
        guidance: GuidanceConfig,
        frame_keep_threshold: float | None,
        frame_keep_at: float,
        frame_keep_text_share: float | None,
        entity_masks,
        timestep_shift: float | None,
        height: int | None,
        width: int | None,
        latents: torch.Tensor | None,
        generator,
        max_new_tokens: int,
        min_new_tokens: int | None,
        do_sample: bool,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        repetition_penalty: float | None,
        eos_token_id,
        output_type: str,
        return_dict: bool,
        callback_on_step_end,
        callback_on_step_end_tensor_inputs,
        callback_on_segment,
    ) -> "CallPlan":
        """Raise a clear error for every invalid argument, before any work starts.

        Returns the call's requests, each request's given plan, its entity weights (the masks at latent resolution)
        and output size, and one generator per output.
        """
        requests, batched = as_requests(inputs)
        if task not in TASKS:
            raise ValueError(f"`task` must be one of {TASKS}; got {task!r}.")
        for name, flag in (("think", think), ("use_step_text", use_step_text), ("do_sample", do_sample)):
            check_flag(name, flag)
        check_flag("return_dict", return_dict)
        check_integer("num_images_per_prompt", num_images_per_prompt, minimum=1)
        if num_images_per_prompt > 1 and task != "image":
            raise ValueError(
                "`num_images_per_prompt` applies to task='image'; pass a tutorial or question once per answer you want."
            )
        plans = self._check_tutorial_inputs(
            requests, batched, task, think, plan, num_steps, max_history_frames, history
        )
        check_integer("num_inference_steps", num_inference_steps, minimum=1)
        for name, value in (
            ("guidance_scale", guidance.scale),
            ("image_guidance_scale", guidance.image_scale),
            ("entity_guidance_scale", guidance.entity_scale),
        ):
            check_number(name, value, minimum=0.0, optional=name == "entity_guidance_scale")
        interval = check_sequence_of_numbers("guidance_interval", guidance.interval, 2)
        if not 0.0 <= interval[0] <= interval[1] <= 1.0:
            raise ValueError(f"`guidance_interval` must be (start, end) with 0 <= start <= end <= 1; got {interval}.")
        if guidance.renorm not in GUIDANCE_RENORMS:
            raise ValueError(f"`guidance_renorm` must be one of {GUIDANCE_RENORMS}; got {guidance.renorm!r}.")
        check_number("guidance_renorm_min", guidance.renorm_min, minimum=0.0, maximum=1.0)
        masks = self._check_entity_inputs(requests, batched, task, entity_masks, guidance.entity_scale)
        check_number("frame_keep_threshold", frame_keep_threshold, minimum=0.0, optional=True)
        check_number("frame_keep_at", frame_keep_at, minimum=0.0, maximum=1.0)
        if frame_keep_threshold is not None and task != "interleaved":
            raise ValueError(f"`frame_keep_threshold` applies to task='interleaved' only; got task={task!r}.")
        check_frame_keep_text_share("frame_keep_text_share", frame_keep_text_share)
        if frame_keep_text_share is not None and not frame_keep_threshold:
            raise ValueError(
                f"`frame_keep_text_share` ({frame_keep_text_share}) widens frame keeping, which is off for this call "
                f"(task={task!r}, frame_keep_threshold={frame_keep_threshold}); pass a `frame_keep_threshold` > 0."
            )
        check_number("timestep_shift", timestep_shift, minimum=0.0, exclusive_minimum=True, optional=True)
        if timestep_shift is not None and not distinct_shifted_timesteps(timestep_shift, num_inference_steps):
            raise ValueError(
                f"`timestep_shift` = {timestep_shift} collapses the {num_inference_steps}-step schedule: its shifted "
                "timesteps are no longer distinct in float32 (BAGEL uses 3.0)."
            )
        self._check_size("height", height)
        self._check_size("width", width)
        outputs = len(requests) * num_images_per_prompt
        if latents is not None:
            self._check_latents(latents, task, outputs)
        generators = per_output_generators(generator, outputs)
        check_integer("max_new_tokens", max_new_tokens, minimum=1)
        check_integer("min_new_tokens", min_new_tokens, minimum=0, optional=True)
        if min_new_tokens is not None and min_new_tokens > max_new_tokens:
            raise ValueError(f"`min_new_tokens` ({min_new_tokens}) exceeds `max_new_tokens` ({max_new_tokens}).")
        # Greedy decoding ignores the temperature, but a non-finite or negative one is still a mistake.
        check_number("temperature", temperature, minimum=0.0, exclusive_minimum=do_sample)
        check_integer("top_k", top_k, minimum=0, optional=True)
        check_number("top_p", top_p, minimum=0.0, maximum=1.0, exclusive_minimum=True, optional=True)
        check_number("repetition_penalty", repetition_penalty, minimum=0.0, exclusive_minimum=True, optional=True)
        vocabulary = self.model.config.text_config.vocab_size
        if isinstance(eos_token_id, (list, tuple)) and not eos_token_id:
            raise ValueError("`eos_token_id` is an empty list; give token ids, or None for the model's own.")
        for token in eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]:
            if token is not None and (
                isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocabulary
            ):
                raise ValueError(f"`eos_token_id` must be token ids in [0, {vocabulary}); got {eos_token_id!r}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}; got {output_type!r}.")
        callbacks = {"callback_on_step_end": callback_on_step_end, "callback_on_segment": callback_on_segment}
        for name, callback in callbacks.items():
            if callback is not None and not callable(callback):
                raise TypeError(f"`{name}` must be a callable (or None); got {type(callback).__name__}.")
        if isinstance(callback_on_step_end_tensor_inputs, str) or not isinstance(
            callback_on_step_end_tensor_inputs, (list, tuple)
        ):
            raise TypeError(
                f"`callback_on_step_end_tensor_inputs` must be a list of names from {self._callback_tensor_inputs}; "
                f"got {callback_on_step_end_tensor_inputs!r}."
            )
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` may only name {self._callback_tensor_inputs}; got {unknown}."
            )
        sizes = [self._image_size(height, width, latents, request) for request in requests] if task != "text" else []
        # The masks' sizes can only be checked once the output sizes are known; their weights are kept for the call.
        weights = [
            self.entity_weights(m, *size, name=f"entity_masks[{index}]" if batched else "entity_masks") if m else None
            for index, (m, size) in enumerate(zip(masks, sizes))
        ]
        decodes = task == "text" or think or (task == "interleaved" and any(steps is None for steps in plans))
        self._check_prompt_lengths(requests, max_new_tokens if decodes else 0)
        return CallPlan(requests, batched, plans, weights, sizes, generators)

    def _check_tutorial_inputs(self, requests, batched, task, think, plan, num_steps, max_history_frames, history):
        """Checks of the interleaved-only arguments; returns each request's given steps (`None`: the model plans)."""
        if task != "interleaved":
            for name, value in (("plan", plan), ("num_steps", num_steps)):
                if value is not None:
                    raise ValueError(f"`{name}` applies to task='interleaved' only.")
            return None
        if think:
            raise ValueError("`think` applies to task='image' or 'text'; an interleaved tutorial always plans first.")
        for index, request in enumerate(requests):
            if not isinstance(request[-1], str):
                raise ValueError(
                    f"For task='interleaved' the last item of request {index} must be the instruction (a string)."
                )
        max_frames = self.model.config.max_frames
        check_integer("num_steps", num_steps, minimum=1, optional=True)
        if num_steps is not None and max_frames and num_steps > max_frames:
            raise ValueError(f"`num_steps` is {num_steps} but the model's frame table holds {max_frames} frames.")
        check_integer("max_history_frames", max_history_frames, minimum=0)
        if history not in HISTORY_MODES:
            raise ValueError(f"`history` must be one of {HISTORY_MODES}; got {history!r}.")
        per_request = (
            batched
            and isinstance(plan, (list, tuple))
            and len(plan) > 0
            and all(item is None or isinstance(item, (list, tuple)) for item in plan)
        )
        if not per_request:
            return [self._plan_steps("plan", plan, num_steps)] * len(requests)
        if len(plan) != len(requests):
            raise ValueError(
                f"`plan` holds {len(plan)} plans for {len(requests)} requests; give one plan (or None) per request, "
                "or a single plan for all."
            )
        return [self._plan_steps(f"plan[{index}]", item, num_steps) for index, item in enumerate(plan)]

    def _plan_steps(self, name: str, plan, num_steps: int | None) -> list[str] | None:
        """The steps of one given plan (a list of step strings or a plan text), or `None` to let the model plan."""
        if plan is None:
            return None
        if isinstance(plan, str):
            steps = parse_plan(plan)
        elif isinstance(plan, (list, tuple)) and all(isinstance(step, str) for step in plan):
            steps = [step.strip() for step in plan]
        else:
            raise TypeError(f"`{name}` must be a list of step strings or a plan text ('Step 1: ... Step 2: ...').")
        if not steps or not all(steps):
            raise ValueError(f"`{name}` must hold at least one non-empty step; got {plan!r}.")
        if num_steps is not None and len(steps) > num_steps:
            raise ValueError(f"`{name}` has {len(steps)} steps, more than `num_steps` = {num_steps}.")
        max_frames = self.model.config.max_frames
        if max_frames and len(steps) > max_frames:
            raise ValueError(f"`{name}` has {len(steps)} steps but the model's frame table holds {max_frames} frames.")
        return steps

    def _check_entity_inputs(self, requests, batched, task, entity_masks, entity_scale) -> list[dict | None]:
        """The entity masks of each request (a batch passes a list with one dict, or `None`, per request)."""
        if entity_masks is None:
            if entity_scale is not None:
                raise ValueError("`entity_guidance_scale` needs `entity_masks` ({'<token>': mask, ...}).")
            return [None] * len(requests)
        if task != "image":
            raise ValueError("`entity_masks` apply to task='image'.")
        if entity_scale is None:
            raise ValueError("`entity_masks` need an `entity_guidance_scale` (the guidance scale inside the masks).")
        if batched:
            if not isinstance(entity_masks, (list, tuple)) or len(entity_masks) != len(requests):
                raise ValueError(
                    f"For a batch of {len(requests)} requests `entity_masks` must be a list with one dict (or None) "
                    f"per request; got {type(entity_masks).__name__}"
                    f"{f' of {len(entity_masks)}' if isinstance(entity_masks, (list, tuple)) else ''}."
                )
            per_request = list(entity_masks)
            if all(masks is None for masks in per_request):
                raise ValueError(
                    "`entity_masks` holds no mask for any request, but `entity_guidance_scale` is set; give a dict for "
                    "at least one request, or leave both out."
                )
        else:
            per_request = [entity_masks]
        known = {self.processor.tokenizer.convert_ids_to_tokens(i) for i in self.model.config.entity_token_ids}
        for index, masks in enumerate(per_request):
            name = f"entity_masks[{index}]" if batched else "entity_masks"
            if masks is None and batched:
                continue
            if not isinstance(masks, dict) or not masks:
                raise ValueError(f"`{name}` must be a non-empty dict {{'<token>': mask}}.")
            for token, mask in masks.items():
                if token not in known:
                    raise ValueError(f"`{name}` key {token!r} is not one of the model's entity tokens {sorted(known)}.")
                entity_mask_array(token, mask, name)
        return per_request

    def _check_latents(self, latents, task: str, outputs: int) -> None:
        channels, downsample = self.model.config.latent_channels, self.model.config.vae_downsample
        if task != "image":
            raise ValueError(
                "`latents` give the initial noise of task='image' outputs; a tutorial draws its own per "
                "frame and text has none."
            )
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[:2] != (outputs, channels):
            raise ValueError(
                f"`latents` must be a tensor of shape ({outputs}, {channels}, height / {downsample}, width / "
                f"{downsample}) (one noise per output); got "
                f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}."
            )
        if not latents.is_floating_point() or latents.device.type == "meta":
            raise ValueError(
                f"`latents` must be a real floating-point tensor holding values; got {latents.dtype} on "
                f"{latents.device}."
            )
        if not bool(torch.isfinite(latents).all()):
            raise ValueError("`latents` hold non-finite values (NaN or inf).")
        stride, largest = self.latent_stride, self.max_image_side
        size = (latents.shape[-2] * downsample, latents.shape[-1] * downsample)
        if any(side < stride or side % stride or side > largest for side in size):
            raise ValueError(
                f"`latents` of shape {tuple(latents.shape)} give a {size[0]}x{size[1]} image; each side must be a "
                f"positive multiple of {stride} of at most {largest} pixels."
            )

    def _check_size(self, name: str, value: int | None) -> None:
        stride, largest = self.latent_stride, self.max_image_side
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < stride or value % stride or value > largest
        ):
            raise ValueError(
                f"`{name}` must be a positive multiple of {stride} of at most {largest} pixels; got {value!r}."
            )

    def _image_size(self, height, width, latents, inputs) -> tuple[int, int]:
        """Output size: explicit, else the latents', else the last input image's, else the largest VAE side."""
        downsample = self.model.config.vae_downsample
        if latents is not None:
            size = (latents.shape[-2] * downsample, latents.shape[-1] * downsample)
            if (height or size[0], width or size[1]) != size:
                raise ValueError(
                    f"`latents` of shape {tuple(latents.shape)} give a {size} image, not ({height}, {width})."
                )
            return size
        image_processor = self.processor.image_processor
        images = [item for item in inputs if isinstance(item, PIL.Image.Image)]
        if images:
            fallback = image_processor.target_size(*images[-1].size, image_processor.vae_image_size)[::-1]
        else:
            fallback = (image_processor.vae_image_size[0],) * 2
        size = (height or fallback[0], width or fallback[1])
        self._check_size("height", size[0])
        self._check_size("width", size[1])
        return size

    def _check_prompt_lengths(self, requests, decoded_tokens: int) -> None:
        """A request's text, and the `decoded_tokens` the call may write after it, must fit the model's positions
        (an image block takes one position; images are checked by their own size rules)."""
        limit = self.model.config.text_config.max_position_embeddings
        for index, request in enumerate(requests):
            tokens = sum(len(self._token_ids(item)) + 2 for item in request if isinstance(item, str))
            if tokens >= limit:
                raise ValueError(
                    f"Request {index} holds {tokens} text tokens, more than the model's {limit} positions allow."
                )
            if tokens + decoded_tokens > limit:
                raise ValueError(
                    f"Request {index} holds {tokens} text tokens; with `max_new_tokens` = {decoded_tokens} its answer "
                    f"could pass the model's {limit} positions. Lower `max_new_tokens` to {limit - tokens} or less."
                )

    # ---------------------------------------------------------------- call

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        inputs: list[str | PIL.Image.Image] | list[list[str | PIL.Image.Image]],
        task: str = "image",
        think: bool = False,
        plan: list[str] | str | None = None,
        num_images_per_prompt: int = 1,
        num_steps: int | None = None,
        max_history_frames: int = 4,
        history: str = "sparse",
        use_step_text: bool = True,
        frame_keep_threshold: float | None = None,
        frame_keep_at: float = 0.3,
        frame_keep_text_share: float | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        image_guidance_scale: float | None = None,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        guidance_renorm: str = "global",
        guidance_renorm_min: float = 0.0,
        entity_masks: dict | list[dict | None] | None = None,
        entity_guidance_scale: float | None = None,
        timestep_shift: float | None = None,
        height: int | None = None,
        width: int | None = None,
        latents: torch.Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        max_new_tokens: int = 500,
        min_new_tokens: int | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        eos_token_id: int | list[int] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
        callback_on_segment: Callable | None = None,
    ) -> LoomPipelineOutput | tuple:
        r"""
        Generate over interleaved contexts: one image, a text answer, or a whole tutorial per request.

        Args:
            inputs: one request — the context in reading order: strings are text turns, PIL images are images (RGBA,
                palette and grayscale images are converted to RGB); for `task="interleaved"` the last item is the
                instruction — or a batch: a list of such requests, of any lengths and image counts.
            task: `"image"` generates one image (text-to-image, editing, composition from several references,
                decomposition, style transfer); `"text"` answers (understanding: images enter through the ViT only);
                `"interleaved"` writes a plan, then renders one frame per step (Loom's plan-first tutorials).
            think: first write a plan (`"image"`) or reasoning (`"text"`) under BAGEL's thinking system prompt.
            plan: the tutorial's steps (a list, or a plan text to parse) instead of the model's own plan; a batch
                takes one plan for all requests, or a list with one plan (or `None`: the model plans) per request.
            num_images_per_prompt: images per request (`task="image"`); a request's thought is written once.
            num_steps: at most this many tutorial steps (the planning instruction asks for exactly this many).
            max_history_frames: Loom's history budget `K_max`: earlier frames shown when rendering a frame.
            history: `"sparse"` (all earlier frames while they fit the budget, then uniform sparse sampling),
                `"full"` (every earlier frame) or `"none"`.
            use_step_text: render each frame after its step's text turn (`False` is the paper's "w/o stepwise
                prompt" ablation, for models trained that way).
            frame_keep_threshold: frame keeping (`task="interleaved"`; see `frame_keeping`): each frame after the
                first keeps, exactly, the latent tokens of the previous frame that its own clean-frame estimate
                leaves within this mean absolute difference (and that no changing token touches). 0 turns it off.
                Default: the pipeline's `default_frame_keep_threshold` (off for BAGEL).
            frame_keep_at: the share of the Euler steps after which a frame decides what it keeps, in [0, 1].
            frame_keep_text_share: with frame keeping, the tokens where the step's text moves the velocity by at
                least this share (in (0, 1]) of its largest effect (the conditional against the text-free guidance
                branch) change too: the part the step names, as the model places it. Needs text guidance on.
                Default: the pipeline's `default_frame_keep_text_share` (`None`: the estimate alone decides).
            num_inference_steps: Euler steps per image (the official code's `num_timesteps` is this + 1). Default: the
                pipeline's `default_num_inference_steps` (50 for BAGEL).
            guidance_scale: text guidance (official `cfg_text_scale`); guidance is off at 1 or less. Default: the
                pipeline's `default_guidance_scale` (4.0 for BAGEL).
            image_guidance_scale: image guidance (official `cfg_img_scale`), applied only with text guidance on.
                Default: the pipeline's `default_image_guidance_scale` (2.0 for BAGEL).
            guidance_interval: guidance applies where `interval[0] < σ <= interval[1]` (official `cfg_interval`).
            guidance_renorm: `"global"`, `"channel"` or `"text_channel"` (official `cfg_renorm_type`).
            guidance_renorm_min: lower clamp of the renorm ratio (official `cfg_renorm_min`; 1 disables renorm).
            entity_masks: `{"<upper>": mask, ...}` (PIL image, array or tensor of the output size, values in [0, 1]):
                Loom's localized guidance: inside the masks the text guidance scale is `entity_guidance_scale`. A batch
                passes a list with one dict (or `None`) per request.
            entity_guidance_scale: the guidance scale inside `entity_masks`.
            timestep_shift: schedule shift (default: the scheduler's `shift`).
            height / width: output size in pixels, a multiple of the latent stride (default: each request's last
                input image, else the largest VAE side).
            latents: initial noise, diffusers layout `(outputs, C, height / 8, width / 8)` (`task="image"`).
            generator: one `torch.Generator` for the whole call, or a list with one per output (requests ×
                `num_images_per_prompt`): it seeds that output's noise (every frame of a tutorial) and text sampling.
            max_new_tokens, min_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty, eos_token_id:
                text decoding through `model.generate()` (greedy by default; the model's generation config fills
                the rest: with its `cache_implementation = "static"` text decodes from a preallocated cache, which
                `generate()` compiles with CUDA graphs on a GPU).
            output_type: `"pil"`, `"np"`, `"pt"` or `"latent"`.
            callback_on_step_end: `fn(pipeline, step, timestep, {"latents": ...})` after every Euler step (latents
                of all images denoised together); may return replacement latents.
            callback_on_segment: `fn(pipeline, index, segment)` as soon as each text or image segment exists, so a
                caller can show a tutorial while it is being made; in a batch `index` is `(request, index)`.

        Examples:

        Returns:
            [`LoomPipelineOutput`] with `segments` in generation order, `.texts`, `.images`, `.requests` (each
            request's own output) and, for one tutorial, `.plan`; or a tuple `(segments,)` when `return_dict=False`.
        """
        with self._call_lock:
            # 1. Check inputs; nothing runs before every argument is known to be valid
            resolved = self.resolved_defaults(
                task,
                guidance_scale=guidance_scale,
                image_guidance_scale=image_guidance_scale,
                frame_keep_threshold=frame_keep_threshold,
                num_inference_steps=num_inference_steps,
                frame_keep_text_share=frame_keep_text_share,
            )
            guidance_scale, image_guidance_scale = resolved["guidance_scale"], resolved["image_guidance_scale"]
            frame_keep_threshold, frame_keep_text_share = (
                resolved["frame_keep_threshold"],
                resolved["frame_keep_text_share"],
            )
            num_inference_steps = resolved["num_inference_steps"]
            guidance = GuidanceConfig(
                guidance_scale,
                image_guidance_scale,
                tuple(guidance_interval) if isinstance(guidance_interval, list) else guidance_interval,
                guidance_renorm,
                guidance_renorm_min,
                entity_guidance_scale,
            )
            call = self.check_inputs(
                inputs=inputs,
                task=task,
                think=think,
                use_step_text=use_step_text,
                plan=plan,
                num_images_per_prompt=num_images_per_prompt,
                num_steps=num_steps,
                max_history_frames=max_history_frames,
                history=history,
                num_inference_steps=num_inference_steps,
                guidance=guidance,
                frame_keep_threshold=frame_keep_threshold,
                frame_keep_at=frame_keep_at,
                frame_keep_text_share=frame_keep_text_share,
                entity_masks=entity_masks,
                timestep_shift=timestep_shift,
                height=height,
                width=width,
                latents=latents,
                generator=generator,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens,
                do_sample=do_sample,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                repetition_penalty=repetition_penalty,
                eos_token_id=eos_token_id,
                output_type=output_type,
                return_dict=return_dict,
                callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                callback_on_segment=callback_on_segment,
            )
            if task != "text" and guidance_scale <= 1.0 < image_guidance_scale:
                logger.warning("`image_guidance_scale` is ignored unless `guidance_scale` > 1 (BAGEL's guidance rule).")
            if task != "text" and self.model.is_cache_enabled and self.scheduler.config.get("stochastic_sampling"):
                logger.warning(
                    "A step cache is enabled while the scheduler draws fresh noise every step (`stochastic_sampling`):"
                    " cached features then go stale and frames drift from the uncached ones (SSIM 0.55-0.65 in"
                    " benchmarks/bench_step_cache.py). Load the scheduler with `stochastic_sampling=False` to cache."
                )

            # 2. Define call parameters
            self._guidance_scale = guidance_scale
            self._interrupt = False
            generation_config = text_generation_config(
                self.model.generation_config,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                repetition_penalty=repetition_penalty,
                min_new_tokens=min_new_tokens,
                eos_token_id=eos_token_id,
            )
            denoising = DenoisingSettings(
                num_inference_steps=num_inference_steps,
                guidance=guidance,
                timestep_shift=timestep_shift if timestep_shift is not None else self.scheduler.config.shift,
                callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=tuple(callback_on_step_end_tensor_inputs),
                frame_keeping=(
                    FrameKeeping(frame_keep_threshold, frame_keep_at, frame_keep_text_share)
                    if frame_keep_threshold
                    else None
                ),
            )
            segments: list[list[TextSegment | ImageSegment]] = [[] for _ in call.requests]

            def emit(request: int, segment: TextSegment | ImageSegment) -> None:
                segments[request].append(segment)
                if callback_on_segment is not None:
                    index = (request, len(segments[request]) - 1) if call.batched else len(segments[request]) - 1
                    callback_on_segment(self, index, segment)

            # 3. Generate: answers, tutorials or images
            with self._input_device_fixed():
                plans = [None] * len(call.requests)
                if task == "text":
                    system_prompt = VLM_THINK_SYSTEM_PROMPT if think else None
                    contexts = [
                        self.encode_context(request, system_prompt, use_vae=False, image_free=False)
                        for request in call.requests
                    ]
                    for index, answer in enumerate(
                        self.decode_texts([c.cond for c in contexts], generation_config, call.generators)
                    ):
                        emit(index, answer)
                elif task == "interleaved":
                    plans = self.generate_tutorials(
                        call.requests,
                        list(call.plans),
                        call.sizes,
                        tutorial=TutorialSettings(num_steps, max_history_frames, history, use_step_text),
                        denoising=denoising,
                        generation_config=generation_config,
                        generators=call.generators,
                        output_type=output_type,
                        emit=emit,
                    )
                else:
                    self.generate_images(
                        call,
                        think=think,
                        num_images_per_prompt=num_images_per_prompt,
                        latents=latents,
                        denoising=denoising,
                        generation_config=generation_config,
                        output_type=output_type,
                        emit=emit,
                    )

            # 4. Offload and return the outputs, request by request
            self.maybe_free_model_hooks()
            outputs = [LoomPipelineOutput(segments=s, plan=p) for s, p in zip(segments, plans)]
            output = LoomPipelineOutput.of_batch(outputs) if call.batched else outputs[0]
            return output if return_dict else (output.segments,)

    def generate_images(
        self,
        call: "CallPlan",
        *,
        think: bool,
        num_images_per_prompt: int,
        latents: torch.Tensor | None,
        denoising: DenoisingSettings,
        generation_config: GenerationConfig,
        output_type: str,
        emit: Callable[[int, TextSegment | ImageSegment], None],
    ) -> None:
        """`num_images_per_prompt` images per request (after a thought per request with `think`), all denoised in
        one batched loop per output size."""
        system_prompt = GEN_THINK_SYSTEM_PROMPT if think else None
        contexts = [
            self.encode_context(request, system_prompt, image_free=denoising.guidance.uses_image_free)
            for request in call.requests
        ]
        if think:
            first_generators = call.generators[::num_images_per_prompt]
            for index, thought in enumerate(
                self.decode_texts([c.cond for c in contexts], generation_config, first_generators)
            ):
                self.append_text(contexts[index].cond, thought.text)
                emit(index, thought)
        jobs = []
        for index, request_contexts in enumerate(contexts):
            weights = call.entity_weights[index]
            for image_index in range(num_images_per_prompt):
                output_index = index * num_images_per_prompt + image_index
                noise = latents[output_index : output_index + 1] if latents is not None else None
                jobs.append(
                    ImageJob(request_contexts, call.sizes[index], call.generators[output_index], noise, None, weights)
                )
        finals = self.denoise(jobs, denoising)
        for job_index, image in enumerate(self.decode_images(finals, output_type)):
            emit(job_index // num_images_per_prompt, ImageSegment(image=image))

    def decode_images(self, latents: list[torch.Tensor], output_type: str) -> list:
        """Decode `(1, C, h, w)` latents to images of `output_type`, same-size ones in one VAE call."""
        images: list = [None] * len(latents)
        for shape in dict.fromkeys(tuple(item.shape) for item in latents):
            members = [index for index, item in enumerate(latents) if tuple(item.shape) == shape]
            decoded = self.decode_latents(torch.cat([latents[i] for i in members]), output_type)
            for index, image in zip(members, decoded):
                images[index] = image
        return images


@dataclass
class CallPlan:
    """A checked call: its requests (and whether they came as a batch), each request's given plan (tutorials),
    per-request entity weights and output sizes, and one generator per output."""

    requests: list[list[str | PIL.Image.Image]]
    batched: bool
    plans: list[list[str] | None]
    entity_weights: list[torch.Tensor | None]
    sizes: list[tuple[int, int]]
    generators: list[torch.Generator | None]


def check_frame_keep_text_share(name: str, value: float | None) -> None:
    """A frame-keeping text share is `None` or a number in (0, 1] (a share of the largest text effect)."""
    check_number(name, value, minimum=0.0, maximum=1.0, exclusive_minimum=True, optional=True)


def check_release_numbers(*, timestep_shift: float, max_frames: int) -> None:
    """`from_bagel` / `convert_bagel`'s numbers, before the release is read: the shift is saved into the scheduler
    (a NaN or negative one breaks every later call) and the frame table needs a row count."""
    check_number("timestep_shift", timestep_shift, minimum=0.0, exclusive_minimum=True)
    check_integer("max_frames", max_frames, minimum=0)


def entity_mask_array(token: str, mask, name: str = "entity_masks") -> torch.Tensor:
    """An entity mask as a float `[H, W]` tensor in [0, 1] (a PIL mask is read as 8-bit grey levels); errors name it
    `name[token]`."""
    if isinstance(mask, PIL.Image.Image):
        mask = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    elif not isinstance(mask, (np.ndarray, torch.Tensor)):
        raise TypeError(f"`{name}[{token!r}]` must be a PIL image, array or tensor; got {type(mask).__name__}.")
    values = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask).float().squeeze()
    if values.ndim != 2:
        raise ValueError(f"`{name}[{token!r}]` must be a 2D mask; got shape {tuple(values.shape)}.")
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()) or bool((values > 1).any()):
        raise ValueError(f"`{name}[{token!r}]` must hold finite values in [0, 1].")
    return values
