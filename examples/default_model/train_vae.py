"""Train the small FLUX-layout autoencoder of the default Loom model on every image of a Loom dataset.

    loom data synth --out runs/data --num-samples 7000 --seed 0
    python examples/default_model/train_vae.py --dataset runs/data --output-dir runs/vae --num-threads 1

The autoencoder keeps the conventions the pipeline relies on: 8x downsampling (4 levels), no quant convs, and a
`shift_factor`/`scaling_factor` pair that gives the latents zero mean and unit std; its latent channels (16 by
default, as BAGEL's) go into the model's `latent_channels`. Images of all splits are used (the autoencoder never
sees text); whole rows are held out, so that no frame of a held-out tutorial is seen in training, and the
reconstruction PSNR is measured on them at the end. The output folder holds the `save_pretrained` autoencoder and
`training_results.json`.
"""

import argparse
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from diffusers import AutoencoderKL
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch.utils.data import DataLoader, TensorDataset

from loom_hf.evaluation import psnr
from loom_hf.trainers.schema import IMAGE_FIELDS

logger = get_logger("train_vae")

DOWNSAMPLING_LEVELS = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options, checked: a bad value stops with a message naming its option."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="a `save_to_disk` folder in the Loom schema")
    parser.add_argument("--output-dir", required=True, help="where the autoencoder is saved")
    parser.add_argument("--latent-channels", type=int, default=16, help="channels of the latent space (BAGEL's: 16)")
    parser.add_argument("--block-out-channels", type=int, nargs=DOWNSAMPLING_LEVELS, default=[16, 32, 64, 64])
    parser.add_argument("--layers-per-block", type=int, default=1, help="resnets per encoder level (decoder: +1)")
    parser.add_argument("--norm-num-groups", type=int, default=8, help="must divide every block's channels")
    parser.add_argument("--max-steps", type=int, default=1800)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--lr-warmup-steps", type=int, default=50)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--l2-weight", type=float, default=1.0, help="weight of the L2 term next to the L1 term")
    parser.add_argument("--kl-weight", type=float, default=1e-6, help="weight of the per-image KL divergence")
    parser.add_argument("--held-out-rows", type=int, default=64, help="dataset rows whose images are never trained")
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--num-threads", type=int, help="CPU threads of torch (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    counts = (
        "latent_channels",
        "layers_per_block",
        "norm_num_groups",
        "max_steps",
        "batch_size",
        "held_out_rows",
        "eval_batch_size",
    )
    for name in (*counts, "log_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1; got {getattr(args, name)}.")
    for name in ("learning_rate", "max_grad_norm"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive; got {getattr(args, name)}.")
    for name in ("lr_warmup_steps", "l2_weight", "kl_weight"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative; got {getattr(args, name)}.")
    if any(channels < 1 or channels % args.norm_num_groups for channels in args.block_out_channels):
        parser.error(
            f"--block-out-channels {args.block_out_channels} must be positive multiples of --norm-num-groups "
            f"{args.norm_num_groups}."
        )
    if args.num_threads is not None and args.num_threads < 1:
        parser.error(f"--num-threads must be at least 1; got {args.num_threads}.")
    return args


def to_uint8_tensor(image: PIL.Image.Image) -> torch.Tensor:
    """`(3, H, W)` uint8 RGB pixels."""
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()


def load_row_images(path: str) -> list[torch.Tensor]:
    """The images of every row of every split, one uint8 `(n, 3, H, W)` tensor per row that has images."""
    loaded = datasets.load_from_disk(path)
    splits = list(loaded.values()) if isinstance(loaded, datasets.DatasetDict) else [loaded]
    rows = []
    for split in splits:
        columns = [column for column in IMAGE_FIELDS if column in split.column_names]
        if not columns:
            raise ValueError(f"--dataset {path!r} has a split without any of the image columns {IMAGE_FIELDS}.")
        for row in split.select_columns(columns):
            images = [to_uint8_tensor(image) for column in columns for image in row[column] or []]
            if images:
                rows.append(images)
    sizes = {tuple(image.shape[-2:]) for row in rows for image in row}
    if len(sizes) != 1:
        raise ValueError(f"--dataset {path!r} must hold images of a single size; found {sorted(sizes) or 'none'}.")
    height, width = sizes.pop()
    stride = 2 ** (DOWNSAMPLING_LEVELS - 1)
    if height % stride or width % stride:
        raise ValueError(f"--dataset {path!r} holds {width}x{height} images; both sides must be multiples of {stride}.")
    return [torch.stack(images) for images in rows]


def split_rows(rows: list[torch.Tensor], num_held_out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and held-out images: `num_held_out` rows drawn at random (by `seed`) are held out whole."""
    if num_held_out >= len(rows):
        raise ValueError(f"--held-out-rows must be below the {len(rows)} rows with images; got {num_held_out}.")
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    held_out, train = order[:num_held_out], order[num_held_out:]
    return torch.cat([rows[index] for index in train]), torch.cat([rows[index] for index in held_out])


def build_vae(args: argparse.Namespace) -> AutoencoderKL:
    """A FLUX-layout `AutoencoderKL`; its latent normalisation is set after training."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * DOWNSAMPLING_LEVELS,
        up_block_types=["UpDecoderBlock2D"] * DOWNSAMPLING_LEVELS,
        block_out_channels=args.block_out_channels,
        layers_per_block=args.layers_per_block,
        latent_channels=args.latent_channels,
        norm_num_groups=args.norm_num_groups,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def to_model_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to floats in [-1, 1], as `LoomImageProcessor.normalize_pixels` gives them to the autoencoder."""
    return images.float() / 127.5 - 1.0


def to_uint8_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """Decoder output in [-1, 1] back to uint8 images."""
    return ((pixels.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


class AutoencoderObjective(torch.nn.Module):
    """The training loss of an `AutoencoderKL` computed in one forward pass, so that Accelerate can wrap it for
    distributed training: L1 + `l2_weight` * L2 reconstruction of a posterior sample, + `kl_weight` * KL."""

    def __init__(self, vae: AutoencoderKL, l2_weight: float, kl_weight: float):
        super().__init__()
        self.vae = vae
        self.l2_weight = l2_weight
        self.kl_weight = kl_weight

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss to minimise and its L1 term."""
        posterior = self.vae.encode(pixels).latent_dist
        error = self.vae.decode(posterior.sample()).sample - pixels
        l1 = error.abs().mean()
        loss = l1 + self.l2_weight * error.square().mean() + self.kl_weight * posterior.kl().mean()
        return loss, l1


def batches(images: torch.Tensor, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """uint8 `images` as consecutive model-ready batches on `device`."""
    for start in range(0, len(images), batch_size):
        yield to_model_pixels(images[start : start + batch_size].to(device))


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """uint8 reconstructions decoded from the posterior mean, the latents the pipeline and trainer use."""
    batched = batches(images, batch_size, device)
    decoded = [vae.decode(vae.encode(pixels).latent_dist.mode()).sample for pixels in batched]
    return to_uint8_pixels(torch.cat(decoded)).cpu()


def mean_psnr(images: torch.Tensor, reconstructions: torch.Tensor) -> float:
    """Mean per-image PSNR in dB, with the evaluation suite's definition."""
    pairs = zip(reconstructions.permute(0, 2, 3, 1).numpy(), images.permute(0, 2, 3, 1).numpy())
    return float(np.mean([psnr(reconstruction, image) for reconstruction, image in pairs]))


@torch.no_grad()
def latent_normalisation(
    vae: AutoencoderKL, images: torch.Tensor, batch_size: int, device: torch.device
) -> tuple[float, float]:
    """`(shift_factor, scaling_factor)` for which `(z - shift) * scale` of the posterior means has mean 0, std 1."""
    latents = torch.cat([vae.encode(pixels).latent_dist.mode() for pixels in batches(images, batch_size, device)])
    shift = latents.mean()
    return shift.item(), (1.0 / (latents - shift).std()).item()


def train(args: argparse.Namespace, accelerator: Accelerator, vae: AutoencoderKL, images: torch.Tensor) -> float:
    """Train `vae` in place for `args.max_steps` steps; returns the seconds spent."""
    if args.batch_size > len(images):
        raise ValueError(f"--batch-size {args.batch_size} exceeds the {len(images)} training images.")
    objective = AutoencoderObjective(vae, args.l2_weight, args.kl_weight)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.learning_rate)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(args.lr_warmup_steps, args.max_steps), args.max_steps)
    shuffling = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(TensorDataset(images), args.batch_size, shuffle=True, drop_last=True, generator=shuffling)
    objective, optimizer, loader, scheduler = accelerator.prepare(objective, optimizer, loader, scheduler)
    objective.train()
    step, start = 0, time.perf_counter()
    while step < args.max_steps:
        for (batch,) in loader:
            loss, l1 = objective(to_model_pixels(batch))
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(objective.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step % args.log_every == 0 or step == args.max_steps:
                elapsed = time.perf_counter() - start
                logger.info(
                    f"step {step}/{args.max_steps}  loss {loss.item():.4f}  l1 {l1.item():.4f}  "
                    f"lr {scheduler.get_last_lr()[0]:.2e}  {elapsed:.0f}s"
                )
            if step == args.max_steps:
                break
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    """Train, set the latent normalisation, measure the reconstruction PSNR and save; returns the results."""
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    accelerator = Accelerator()
    set_seed(args.seed)
    train_images, held_out_images = split_rows(load_row_images(args.dataset), args.held_out_rows, args.seed)
    vae = build_vae(args)
    parameters = sum(parameter.numel() for parameter in vae.parameters())
    logger.info(f"{parameters} parameters; {len(train_images)} training and {len(held_out_images)} held-out images.")
    seconds = train(args, accelerator, vae, train_images)

    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return {}
    vae.eval()
    device = accelerator.device
    sample_order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(args.seed))
    train_sample = train_images[sample_order[: len(held_out_images)]]
    shift, scale = latent_normalisation(vae, held_out_images, args.eval_batch_size, device)
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    results = {
        "parameters": parameters,
        "steps": args.max_steps,
        "train_seconds": round(seconds, 1),
        "train_images": len(train_images),
        "held_out_images": len(held_out_images),
        "train_psnr": mean_psnr(train_sample, reconstruct(vae, train_sample, args.eval_batch_size, device)),
        "held_out_psnr": mean_psnr(held_out_images, reconstruct(vae, held_out_images, args.eval_batch_size, device)),
        "shift_factor": shift,
        "scaling_factor": scale,
    }
    output_dir = Path(args.output_dir)
    vae.save_pretrained(output_dir)
    (output_dir / "training_results.json").write_text(json.dumps(results, indent=2) + "\n")
    logger.info(f"Saved to {output_dir}: " + json.dumps(results))
    return results


if __name__ == "__main__":
    main()
