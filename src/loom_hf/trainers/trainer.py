"""`LoomTrainer`: a `transformers.Trainer` with Loom's joint loss `λ_CE · CE + MSE` over packed batches."""

import functools
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from diffusers import AutoencoderKL
from diffusers.training_utils import EMAModel, compute_density_for_timestep_sampling
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint, seed_worker

from ..modeling import LoomConfig, LoomForInterleavedGeneration, LoomOutput, LoomProcessor
from ..modeling.history import HISTORY_MODES
from ..modeling.latents import encode_latents, pack_latents
from .argument_checks import check_training_numbers
from .checkpoint import check_checkpoint
from .collator import IGNORE_INDEX, LoomDataCollator, TokenBudgetBatchSampler
from .ema import EMA_FILE, EMACallback, load_ema_state, save_ema_state, trainable_names
from .hub import loom_model_card

__all__ = [
    "LoomTrainingArguments",
    "LoomTrainer",
    "EXPERT_CHOICES",
    "check_latent_stride",
    "select_trainable_parameters",
]

logger = logging.getLogger(__name__)

EXPERT_CHOICES = ("all", "generation", "freeze_understanding")
ON_BAD_SAMPLE_CHOICES = ("skip", "raise")
# Parameters of the generation side: the `*_moe_gen` expert and the latent heads (plus Loom's frame table).
_GENERATION_PARTS = ("_moe_gen", "vae2llm", "llm2vae", "time_embedder", "frame_embed")
# Parameters of the understanding side: the original decoder weights and the ViT.
_UNDERSTANDING_PARTS = ("model.vision_model.", "model.language_model.layers.", "model.language_model.norm.")


@dataclass
class LoomTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus Loom's: loss weight, history sampling, condition dropout, timesteps, experts."""

    ce_loss_weight: float = field(default=0.25, metadata={"help": "λ_CE: weight of the text loss (Loom: 0.25)."})
    max_history_frames: int = field(default=4, metadata={"help": "K_max: earlier frames shown per frame."})
    history: str = field(default="sparse", metadata={"help": "History sampling: sparse | full | none."})
    use_step_text: bool = field(default=True, metadata={"help": "Put each frame's step text before it."})
    text_dropout: float = field(default=0.1, metadata={"help": "Probability of dropping a conditioning text."})
    vit_dropout: float = field(default=0.3, metadata={"help": "Probability of dropping a ViT image block."})
    vae_dropout: float = field(default=0.3, metadata={"help": "Probability of dropping a clean latent block."})
    timestep_shift: float = field(default=1.0, metadata={"help": "Shift of the logit-normal flow times."})
    changed_token_loss_weight: float = field(
        default=1.0,
        metadata={
            "help": "MSE weight of a tutorial frame's latent tokens that its step changes (pixels that differ from the "
            "frame before), against 1 for the rest: a step's new part is a few tokens of a frame mostly copied from "
            "its history. 1 weighs every token alike."
        },
    )
    train_experts: str = field(
        default="all",
        metadata={
            "help": "all | generation (only the generation expert and latent heads) | freeze_understanding "
            "(everything but the understanding expert and the ViT)."
        },
    )
    max_tokens_per_batch: int = field(default=8192, metadata={"help": "Token budget of one packed batch."})
    packing: bool = field(default=True, metadata={"help": "Pack instances into one row (else pad per instance)."})
    vae_pixels_per_call: int = field(
        default=1024 * 1024,
        metadata={
            "help": "Pixel budget of one VAE encoding call: same-size images are encoded together up to it "
            "(one 1024² image per call, 256 of 64²), which bounds the autoencoder's activation memory."
        },
    )
    ema_decay: float | None = field(default=None, metadata={"help": "Keep EMA weights with this decay."})
    on_bad_sample: str = field(
        default="skip", metadata={"help": "skip (counted warning) or raise (with row indices) on bad rows."}
    )
    fresh_optimizer: bool = field(
        default=False,
        metadata={
            "help": "On resume, load the weights but start the optimizer and LR schedule afresh (without it, a "
            "checkpoint lacking optimizer.pt or scheduler.pt is refused)."
        },
    )

    def __post_init__(self):
        check_training_numbers(self)
        super().__post_init__()
        self.remove_unused_columns = False
        if self.history not in HISTORY_MODES:
            raise ValueError(f"`history` must be one of {HISTORY_MODES}; got {self.history!r}.")
        if self.train_experts not in EXPERT_CHOICES:
            raise ValueError(f"`train_experts` must be one of {EXPERT_CHOICES}; got {self.train_experts!r}.")
        if self.on_bad_sample not in ON_BAD_SAMPLE_CHOICES:
            raise ValueError(f"`on_bad_sample` must be one of {ON_BAD_SAMPLE_CHOICES}; got {self.on_bad_sample!r}.")


def select_trainable_parameters(model: LoomForInterleavedGeneration, experts: str) -> int:
    """Freeze everything the `experts` choice does not train; returns the number of trainable parameters."""
    if experts not in EXPERT_CHOICES:
        raise ValueError(f"`experts` must be one of {EXPERT_CHOICES}; got {experts!r}.")
    for name, parameter in model.named_parameters():
        generation = any(part in name for part in _GENERATION_PARTS)
        understanding = not generation and name.startswith(_UNDERSTANDING_PARTS)
        if experts == "generation":
            parameter.requires_grad_(generation)
        elif experts == "freeze_understanding":
            parameter.requires_grad_(not understanding)
        else:
            parameter.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def check_latent_stride(processor: LoomProcessor, config: LoomConfig) -> None:
    """The collator lays out an image's latent tokens on the processor's VAE resize stride (`vae_image_size[2]`), the
    model on its pixels per latent token (`vae_downsample` × `latent_patch_size`); raise a clear error when they
    differ, before training starts (they would disagree on every image's token count)."""
    stride, per_token = processor.image_processor.vae_image_size[2], config.latent_downsample
    if stride != per_token:
        raise ValueError(
            f"The processor's `vae_image_size` stride ({stride} px) must equal the model's pixels per latent token "
            f"(`vae_downsample` {config.vae_downsample} × `latent_patch_size` {config.latent_patch_size} = "
            f"{per_token}); set `vae_image_size` to (max, min, {per_token})."
        )


class LoomTrainer(Trainer):
    """Trains Loom (or BAGEL) on packed interleaved batches.

    The loss is `ce_loss_weight · CE + MSE`, each normalised by its token count over the whole gradient-accumulation
    window and all processes (BAGEL's token normalisation): CE over the supervised text tokens, MSE over the noised
    latent tokens against the flow velocity `noise − x0`. Both parts are logged as `ce_loss` and `mse_loss`. With
    `changed_token_loss_weight` w, a tutorial frame's tokens that its step changes count w times in the MSE and its
    token count (a weighted mean).

    The frozen VAE stays outside the trained (and possibly distributed) model; latents are encoded under
    `no_grad` in `compute_loss`.

    Args:
        vae: the pipeline's `AutoencoderKL`.
        Other arguments: as `transformers.Trainer`; `train_dataset` is a [`LoomTrainingDataset`] and
        `data_collator` a [`LoomDataCollator`].
    """

    loss_is_scaled_for_ga = True

    def __init__(self, model: LoomForInterleavedGeneration, args: LoomTrainingArguments, vae: AutoencoderKL, **kwargs):
        if not isinstance(args, LoomTrainingArguments):
            raise TypeError("`args` must be LoomTrainingArguments.")
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("The model has no trainable parameter.")
        if isinstance(kwargs.get("data_collator"), LoomDataCollator):
            check_latent_stride(kwargs["data_collator"].processor, model.config)
        super().__init__(model=model, args=args, **kwargs)
        self.vae = vae.eval().requires_grad_(False).to(self.args.device)
        self._loss_sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), dtype=torch.float64))
        self.ema = None
        if args.ema_decay is not None:
            self.ema = EMAModel(self.trainable_parameters(), decay=args.ema_decay)
            self.add_callback(EMACallback(self))

    # ---------------------------------------------------------------- data

    def get_train_dataloader(self) -> DataLoader:
        """Token-budget batches (one packed row each) instead of a fixed number of samples per batch."""
        if self.train_dataset is None:
            raise ValueError("LoomTrainer needs a `train_dataset`.")
        sampler = TokenBudgetBatchSampler(
            self.train_dataset.num_tokens, self.args.max_tokens_per_batch, shuffle=True, seed=self.args.seed
        )
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            worker_init_fn=functools.partial(
                seed_worker, num_workers=self.args.dataloader_num_workers, rank=self.args.process_index
            ),
        )
        return self.accelerator.prepare(loader)

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        """Collect the micro-batches of one optimizer step and count their CE and MSE tokens (all processes)."""
        batch_samples = []
        for _ in range(num_batches):
            try:
                batch_samples.append(next(epoch_iterator))
            except StopIteration:
                break
        counts = torch.zeros(2, dtype=torch.float32, device=device)
        weight = self.args.changed_token_loss_weight
        for batch in batch_samples:
            counts += torch.stack([_ce_count(batch["labels"]), _mse_count(batch, weight)]).to(device)
        if self.args.world_size > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        return batch_samples, counts

    # ---------------------------------------------------------------- loss

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @torch.no_grad()
    def _clean_latent_tokens(self, pixels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Packed clean latent tokens per image: cached tokens as they are, same-size images encoded together (up to
        `vae_pixels_per_call` pixels per call)."""
        clean: list[torch.Tensor | None] = [None] * len(pixels)
        by_size: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, image in enumerate(pixels):
            if image.ndim == 2:  # latent tokens cached by `cache_latents`
                clean[index] = image.to(device=self.args.device, dtype=torch.float32)
            else:
                by_size[tuple(image.shape)].append(index)
        for size, indices in by_size.items():
            per_call = max(1, self.args.vae_pixels_per_call // (size[-2] * size[-1]))
            for start in range(0, len(indices), per_call):
                chunk = indices[start : start + per_call]
                images = torch.stack([pixels[i] for i in chunk]).to(device=self.args.device, dtype=self.vae.dtype)
                for index, image_latents in zip(chunk, encode_latents(self.vae, images).float()):
                    clean[index] = pack_latents(image_latents[None], self.model.config.latent_patch_size)
        return clean

    @torch.no_grad()
    def _latents(self, batch: dict) -> "_NoisedLatents | None":
        """Take the batch's latent blocks out of it, encode them and noise the targets (step 1 of `compute_loss`).

        Sets the model inputs `latents` and `timesteps`; returns the noised latents, their flow velocity targets and
        the MSE weight of every token, or `None` for a batch without latent blocks (text alone: nothing to noise).
        """
        pixels = batch.pop("vae_pixel_values")
        is_target = batch.pop("latent_is_target").to(self.args.device)
        changed = batch.pop("latent_changed").to(self.args.device)
        if not pixels:
            return None
        clean = self._clean_latent_tokens(pixels)
        lengths = torch.tensor([tokens.shape[0] for tokens in clean], device=self.args.device)
        clean = torch.cat(clean)
        shift = self.args.timestep_shift
        sigma = compute_density_for_timestep_sampling(
            "logit_normal", len(pixels), logit_mean=0.0, logit_std=1.0, device=self.args.device
        )
        sigma = shift * sigma / (1 + (shift - 1) * sigma)
        sigma = torch.where(is_target, sigma, torch.zeros_like(sigma))
        per_token = sigma.repeat_interleave(lengths)[:, None]
        noise = torch.randn_like(clean)
        batch["latents"] = (1 - per_token) * clean + per_token * noise
        batch["timesteps"] = sigma
        target_tokens = is_target.repeat_interleave(lengths)
        weights = torch.zeros(len(target_tokens), device=self.args.device)
        weights[target_tokens] = 1 + (self.args.changed_token_loss_weight - 1) * changed.float()
        return _NoisedLatents(batch["latents"], noise - clean, weights)

    def compute_loss(self, model, inputs: dict, return_outputs: bool = False, num_items_in_batch=None):
        """`ce_loss_weight · CE + MSE` of one micro-batch: noise the targets, compute the normalised loss from its
        two parts, record the parts' sums for the log."""
        labels = inputs.pop("labels")
        noised = self._latents(inputs)
        # Only positions with a next-token label need logits.
        shift_labels = labels[:, 1:]
        kept = (shift_labels != IGNORE_INDEX).any(dim=0).nonzero().flatten()
        outputs = model(**inputs, logits_to_keep=kept)
        counts = _micro_batch_counts(labels, noised)
        loss, ce_sum, mse_sum = self._joint_loss(
            outputs,
            shift_labels=shift_labels[:, kept],
            noised=noised,
            window_counts=counts if num_items_in_batch is None else num_items_in_batch,
        )
        self._record_loss_sums(ce_sum=ce_sum, mse_sum=mse_sum, counts=counts)
        return (loss, outputs) if return_outputs else loss

    def _joint_loss(
        self,
        outputs: LoomOutput,
        *,
        shift_labels: torch.Tensor,
        noised: "_NoisedLatents | None",
        window_counts: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The loss to backpropagate, and the CE and MSE sums it is made of (step 2 of `compute_loss`).

        Each sum is divided by its token count over the whole accumulation window (`window_counts`: CE, MSE), so
        micro-batches of any size weigh their tokens alike; non-finite sums stop training here.
        """
        # The model's causal-LM loss over the kept logits, normalised by one item: the sum, which the token count of
        # the whole accumulation window normalises below (and the log accumulates).
        ce_sum = self.model.loss_function(
            logits=outputs.logits,
            labels=None,
            vocab_size=self.model.config.text_config.vocab_size,
            num_items_in_batch=1,
            ignore_index=IGNORE_INDEX,
            shift_labels=shift_labels,
        )
        mse_sum = outputs.logits.new_zeros((), dtype=torch.float32)
        if noised is not None:
            error = (outputs.velocity.float() - noised.velocity) ** 2
            mask = noised.weights > 0
            mse_sum = (error[mask].mean(dim=-1) * noised.weights[mask]).sum() if mask.any() else error.sum() * 0
        self._check_finite_losses(ce_sum=ce_sum, mse_sum=mse_sum)
        counts = window_counts.to(ce_sum.device).clamp(min=1).float()
        loss = self.args.ce_loss_weight * ce_sum / counts[0] + mse_sum / counts[1]
        if self.args.world_size > 1:
            # Counts cover all processes while data-parallel training averages the gradients.
            loss = loss * self.accelerator.num_processes
        return loss, ce_sum, mse_sum

    def _record_loss_sums(self, *, ce_sum: torch.Tensor, mse_sum: torch.Tensor, counts: torch.Tensor) -> None:
        """Add a micro-batch's loss sums and token counts to the logging window (step 3 of `compute_loss`); `log`
        turns them into token-weighted means."""
        for name, value in (("ce_sum", ce_sum), ("mse_sum", mse_sum)):
            self._loss_sums[name] += value.detach().double().cpu()
        self._loss_sums["ce_count"] += float(counts[0])
        self._loss_sums["mse_count"] += float(counts[1])

    def _check_finite_losses(self, *, ce_sum: torch.Tensor, mse_sum: torch.Tensor) -> None:
        """Stop at the first non-finite loss part, before its gradients reach the weights."""
        for part, value in (("CE", ce_sum), ("MSE", mse_sum)):
            if not torch.isfinite(value):
                raise FloatingPointError(
                    f"The {part} loss is {float(value.detach())} at step {self.state.global_step + 1}: training stops "
                    "before it reaches the weights (check the data, the learning rate and the precision)."
                )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add `ce_loss` and `mse_loss`: token-weighted means over the logging window and all processes."""
        if self._loss_sums:
            sums = torch.stack([self._loss_sums[k] for k in ("ce_sum", "ce_count", "mse_sum", "mse_count")])
            if self.args.world_size > 1:
                sums = self.accelerator.reduce(sums.to(self.args.device), reduction="sum").cpu()
            ce_sum, ce_count, mse_sum, mse_count = sums.tolist()
            if ce_count:
                logs["ce_loss"] = round(ce_sum / ce_count, 6)
            if mse_count:
                logs["mse_loss"] = round(mse_sum / mse_count, 6)
            self._loss_sums.clear()
        super().log(logs, start_time)

    # ---------------------------------------------------------------- Hub

    def create_model_card(
        self,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        dataset: str | list[str] | None = None,
        license: str = "apache-2.0",
        **kwargs,
    ) -> None:
        """Write `README.md` in the output folder: base model, datasets, training arguments, loss curve, license.

        `push_to_hub` calls this, then uploads the output folder (checkpoints excluded).
        """
        if not self.is_world_process_zero():
            return
        extra = {}
        for name, config in (getattr(self.model, "peft_config", None) or {}).items():
            extra[f"lora ({name})"] = f"rank {config.r}, alpha {config.lora_alpha}, targets `{config.target_modules}`"
        card = loom_model_card(
            model_id=self.hub_model_id or model_name or os.path.basename(os.path.abspath(self.args.output_dir)),
            base_model=finetuned_from,
            datasets=[dataset] if isinstance(dataset, str) else dataset,
            training_arguments={**self.args.to_dict(), "world_size": self.args.world_size},
            log_history=self.state.log_history,
            extra_arguments=extra,
            license=license,
        )
        card.save(os.path.join(self.args.output_dir, "README.md"))

    # ---------------------------------------------------------------- checkpoints and EMA

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """`Trainer.train`, refusing (before any work) a checkpoint that cannot be resumed exactly: see
        [`check_checkpoint`]; `fresh_optimizer` lets one without optimizer and scheduler states through."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise FileNotFoundError(f"`output_dir` {self.args.output_dir!r} holds no checkpoint to resume from.")
        if resume_from_checkpoint:
            check_checkpoint(resume_from_checkpoint, fresh_optimizer=self.args.fresh_optimizer)
        return super().train(resume_from_checkpoint=resume_from_checkpoint or None, **kwargs)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if not self.args.fresh_optimizer:
            super()._load_optimizer_and_scheduler(checkpoint)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`, refusing non-finite weights (they would overwrite a good model with NaNs)."""
        broken = [name for name, p in self.model.named_parameters() if p.requires_grad and not _finite(p)]
        if broken:
            raise FloatingPointError(
                f"Not saving: {len(broken)} trained weight(s) hold NaN or inf at step {self.state.global_step} "
                f"({', '.join(broken[:5])})."
            )
        super().save_model(output_dir, _internal_call)

    def save_ema(self, path: str) -> None:
        """Write the whole EMA state: the shadow weights by parameter name, plus `optimization_step` and decay."""
        save_ema_state(self.ema, trainable_names(self.model), path)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.ema is None:
            return
        ema_path = os.path.join(resume_from_checkpoint, EMA_FILE)
        if os.path.isfile(ema_path):
            load_ema_state(self.ema, trainable_names(self.model), ema_path)
        else:
            logger.warning("%s has no %s: the EMA starts from the restored weights.", resume_from_checkpoint, EMA_FILE)
            self.ema = EMAModel(self.trainable_parameters(), decay=self.args.ema_decay)

    def save_ema_model(self, output_dir: str) -> None:
        """Save the model with its EMA weights swapped in (the training weights are restored afterwards)."""
        if self.ema is None:
            raise ValueError("EMA is off: set `ema_decay` in the training arguments.")
        parameters = self.trainable_parameters()
        self.ema.store(parameters)
        self.ema.copy_to(parameters)
        try:
            self.save_model(output_dir)
        finally:
            self.ema.restore(parameters)


class _NoisedLatents(NamedTuple):
    """The latent tokens of a batch after noising: what the model sees, the flow targets, each token's MSE weight."""

    latents: torch.Tensor  # [tokens, dim] model inputs: clean for conditions, noised for targets
    velocity: torch.Tensor  # [tokens, dim] flow-matching targets `noise − x0`
    weights: torch.Tensor  # [tokens] float: 0 off the noised target blocks, else 1 or `changed_token_loss_weight`


def _micro_batch_counts(labels: torch.Tensor, noised: _NoisedLatents | None) -> torch.Tensor:
    """(CE tokens, MSE tokens) of one micro-batch: supervised text tokens and the noised latent tokens' weights."""
    return torch.stack([_ce_count(labels), noised.weights.sum() if noised is not None else labels.new_zeros(())])


def _finite(parameter: torch.Tensor) -> bool:
    """Whether every element is finite (a sharded parameter: its local shard)."""
    local = parameter.to_local() if hasattr(parameter, "to_local") else parameter
    return bool(torch.isfinite(local.detach()).all())


def _ce_count(labels: torch.Tensor) -> torch.Tensor:
    """Supervised text tokens: positions whose next-token label is set."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()


def _mse_count(batch: dict, changed_weight: float = 1.0) -> torch.Tensor:
    """Noised latent tokens of a collated batch, a changed tutorial token counting `changed_weight` times."""
    grids = batch["latent_grid_hw"]
    if grids.numel() == 0:
        return torch.zeros(())
    targets = (grids[:, 0] * grids[:, 1] * batch["latent_is_target"]).sum()
    return targets + (changed_weight - 1) * batch["latent_changed"].sum()
