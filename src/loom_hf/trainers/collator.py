"""Packing training instances into model inputs: BAGEL's splits, condition dropout and token-budget batches.

A packed batch is one row holding several instances back to back (no padding). Inside an instance text turns are
causal, clean images (latent and ViT blocks) are bidirectional, and a noised target block is seen by no other token;
instances never see each other. The collator returns CPU tensors plus, for every latent block, its VAE pixels
`[3, H, W]` or its cached latent tokens `[h·w, p·p·C]`: the trainer encodes pixels under `no_grad`, outside the
trained module, and noises the targets.
"""

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from ..modeling.packing import TokenType
from ..modeling.processing_loom import LoomProcessor
from .instances import ImageItem, Instance, TextItem

__all__ = ["DrawnBatch", "LoomDataCollator", "TokenBudgetBatchSampler"]

IGNORE_INDEX = -100


@dataclass(frozen=True)
class DrawnBatch:
    """The instances of one batch and the seed of its condition dropout.

    [`LoomTrainingDataset`] derives both from `(seed, epoch, instance indices)`, never from torch's global generator,
    so a batch is the same however the data loader reaches it: resumed after a crash, in a worker process, or
    prefetched ahead of the step whose noise the global generator draws.
    """

    instances: list[Instance]
    seed: int


@dataclass
class _Sequence:
    """Per-token lists of one row under construction, and the images it references in order."""

    ids: list[int] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    noised: list[bool] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    documents: list[int] = field(default_factory=list)

    def extend(
        self,
        ids: list[int],
        types: list[int],
        *,
        position: int | list[int],
        block: int,
        noised: bool,
        frame: int,
        labels: list[int],
        document: int,
    ) -> None:
        """Append tokens: `position` one per token or one for all (an image block), `frame` on the visual tokens."""
        count = len(ids)
        self.ids += ids
        self.types += types
        self.positions += position if isinstance(position, list) else [position] * count
        self.blocks += [block] * count
        self.noised += [noised] * count
        self.frames += [frame if token_type != TokenType.TEXT else -1 for token_type in types]
        self.labels += labels
        self.documents += [document] * count


@dataclass(frozen=True)
class _Block:
    """One block of an instance as laid out for packing: a text turn, a latent block or a ViT block.

    `ids` and `types` are its tokens, framing markers included (none when dropped); `position` is the RoPE position
    of its first token (an image block's one position); `grid` is an image block's latent or patch grid (rows, cols).
    """

    kind: TokenType
    item: TextItem | ImageItem
    ids: list[int]
    types: list[int]
    position: int
    dropped: bool = False
    grid: tuple[int, int] | None = None


@dataclass
class LoomDataCollator:
    """Turns a list of [`Instance`]s into one training batch.

    Args:
        processor: tokenizer and image paths (the same resize rules as inference).
        text_dropout / vit_dropout / vae_dropout: probabilities of dropping a droppable text turn, ViT block or clean
            latent block (BAGEL's defaults 0.1 / 0.3 / 0.3), which teaches the unconditional branches of guidance.
            A dropped text takes no position; a dropped image still takes its RoPE slot, as in BAGEL.
        packing: one packed row (default) or one right-padded row per instance.
        use_frames: pass the temporal indices of frames (`frame_ids`); off for models without a frame table.
    """

    processor: LoomProcessor
    text_dropout: float = 0.1
    vit_dropout: float = 0.3
    vae_dropout: float = 0.3
    packing: bool = True
    use_frames: bool = True

    def __post_init__(self):
        for name in ("text_dropout", "vit_dropout", "vae_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` must be a probability in [0, 1]; got {getattr(self, name)}.")

    def image_grids(self, image) -> tuple[tuple[int, int], tuple[int, int]]:
        """(latent grid, ViT patch grid), each (rows, cols), of an image after BAGEL's resize rules, from its size
        alone (nothing is resized)."""
        image_processor = self.processor.image_processor
        width, height = image_processor.target_size(*image.size, image_processor.vae_image_size)
        stride = image_processor.vae_image_size[2]
        vit_width, vit_height = image_processor.target_size(width, height, image_processor.vit_image_size)
        patch = image_processor.patch_size
        return (height // stride, width // stride), (vit_height // patch, vit_width // patch)

    def num_tokens(self, instance: Instance) -> int:
        """Length of an instance when nothing is dropped (the most it can take in a batch): the tokens of the blocks
        that packing lays out."""
        return sum(len(laid.ids) for laid in self._layout(instance, generator=None, dropout=False))

    @staticmethod
    def _dropped(droppable: bool, probability: float, generator: torch.Generator | None) -> bool:
        """Draw from the batch's generator (a [`DrawnBatch`]'s seed), else from torch's global one."""
        return droppable and probability > 0 and float(torch.rand((), generator=generator)) < probability

    def _layout(self, instance: Instance, *, generator: torch.Generator | None, dropout: bool) -> list[_Block]:
        """The blocks of `instance` in packing order, with their tokens and RoPE positions: what `_add_instance`
        packs and `num_tokens` counts, so the two cannot disagree.

        With `dropout`, every droppable condition is dropped with its probability, drawn in item order from
        `generator`; without it nothing is dropped and nothing is drawn. A dropped text takes no position, a dropped
        image keeps its RoPE slot, as in BAGEL. Image sizes come from the resize rule alone: no image is decoded,
        resized or cut into patches here, which keeps counting a whole dataset cheap.
        """
        blocks: list[_Block] = []
        position = 0
        for item in instance:
            if isinstance(item, TextItem):
                if dropout and self._dropped(item.droppable, self.text_dropout, generator):
                    blocks.append(_Block(TokenType.TEXT, item, [], [], position, dropped=True))
                    continue
                ids = self.processor.text_block(item.text)
                blocks.append(_Block(TokenType.TEXT, item, ids, [TokenType.TEXT] * len(ids), position))
                position += len(ids)
                continue
            latent_grid, vit_grid = self.image_grids(item.image)
            if item.target or item.use_vae:
                dropped = not item.target and dropout and self._dropped(item.droppable, self.vae_dropout, generator)
                blocks.append(
                    self._image_block(TokenType.LATENT, item, latent_grid, position=position, dropped=dropped)
                )
                # A noised target shares its position with the clean copy that would follow it.
                position += 0 if item.target else 1
            if item.use_vit and not item.target:
                dropped = dropout and self._dropped(item.droppable, self.vit_dropout, generator)
                blocks.append(self._image_block(TokenType.VIT, item, vit_grid, position=position, dropped=dropped))
                position += 1
        return blocks

    def _image_block(
        self, kind: TokenType, item: ImageItem, grid: tuple[int, int], *, position: int, dropped: bool
    ) -> _Block:
        """A latent or ViT block of `grid` tokens between its two markers; no tokens when dropped."""
        ids, types = ([], []) if dropped else self.processor.image_block(grid[0] * grid[1], kind)
        return _Block(kind, item, ids, types, position, dropped=dropped, grid=grid)

    def _add_instance(
        self, row: _Sequence, instance: Instance, *, document: int, images: dict, block: int, generator
    ) -> int:
        """Append the laid-out blocks of one instance to `row` and their images' inputs to `images`; returns the next
        free block id."""
        image_processor = self.processor.image_processor
        # Every image is decoded and resized, even one whose blocks are dropped: a broken image fails whatever is drawn.
        resized = {
            id(item): image_processor.resize_for_vae(item.image) for item in instance if isinstance(item, ImageItem)
        }
        for laid in self._layout(instance, generator=generator, dropout=True):
            if laid.dropped:
                continue
            item = laid.item
            if laid.kind == TokenType.TEXT:
                row.extend(
                    laid.ids,
                    laid.types,
                    position=list(range(laid.position, laid.position + len(laid.ids))),
                    block=-1,
                    noised=False,
                    frame=-1,
                    labels=[IGNORE_INDEX, *laid.ids[1:]] if item.loss else [IGNORE_INDEX] * len(laid.ids),
                    document=document,
                )
                continue
            row.extend(
                laid.ids,
                laid.types,
                position=laid.position,
                block=block,
                noised=laid.kind == TokenType.LATENT and item.target,
                frame=item.frame if item.frame is not None and self.use_frames else -1,
                labels=[IGNORE_INDEX] * len(laid.ids),
                document=document,
            )
            block += 1
            image = resized[id(item)]
            if laid.kind == TokenType.LATENT:
                # Cached latents skip the VAE; otherwise the trainer encodes these pixels.
                images["vae_pixel_values"].append(
                    item.latents if item.latents is not None else image_processor.vae_pixel_values(image)[0]
                )
                images["latent_grid_hw"].append(laid.grid)
                images["latent_is_target"].append(item.target)
                if item.target:
                    images["latent_changed"].append(self._changed_tokens(item, image, laid.grid))
            else:
                patches, grid = image_processor.vit_patches(image)
                if grid != laid.grid:
                    raise RuntimeError(
                        f"The ViT cut an image into a {grid} patch grid; its block was laid out {laid.grid}."
                    )
                images["pixel_values"].append(patches)
                images["image_grid_hw"].append(grid)
        return block

    def _changed_tokens(self, item: ImageItem, image, grid: tuple[int, int]) -> torch.Tensor:
        """`[h·w]` bool: the latent tokens of a target whose pixels differ from its `previous` frame, in the latent
        blocks' row-major token order; none without a previous frame or beside one of another size (a valid tutorial
        may change its frame size, and then no pixel corresponds)."""
        unmarked = torch.zeros(grid[0] * grid[1], dtype=torch.bool)
        if item.previous is None:
            return unmarked
        previous = self.processor.image_processor.resize_for_vae(item.previous)
        if previous.size != image.size:
            return unmarked
        difference = torch.from_numpy(np.asarray(image, dtype=np.int16) - np.asarray(previous, dtype=np.int16))
        changed = difference.abs().amax(dim=-1) > 0
        stride = self.processor.image_processor.vae_image_size[2]
        return changed.reshape(grid[0], stride, grid[1], stride).any(dim=3).any(dim=1).flatten()

    def __call__(self, instances: list[Instance] | DrawnBatch) -> dict:
        """One batch of `instances`; a [`DrawnBatch`] draws its condition dropout from its own seed."""
        generator = None
        if isinstance(instances, DrawnBatch):
            generator = torch.Generator().manual_seed(instances.seed)
            instances = instances.instances
        if not instances:
            raise ValueError("The collator received no instances.")
        images = {
            key: []
            for key in (
                "vae_pixel_values",
                "latent_grid_hw",
                "latent_is_target",
                "latent_changed",
                "pixel_values",
                "image_grid_hw",
            )
        }
        rows, block = [], 0
        for document, instance in enumerate(instances):
            if self.packing and rows:
                row = rows[0]
            else:
                row = _Sequence()
                rows.append(row)
            block = self._add_instance(
                row, instance, document=document, images=images, block=block, generator=generator
            )
        batch = self._tensors(rows)
        if images["pixel_values"]:
            batch["pixel_values"] = torch.cat(images["pixel_values"])
            batch["image_grid_hw"] = torch.tensor(images["image_grid_hw"], dtype=torch.long)
        batch["vae_pixel_values"] = images["vae_pixel_values"]
        batch["latent_grid_hw"] = torch.tensor(images["latent_grid_hw"], dtype=torch.long).reshape(-1, 2)
        batch["latent_is_target"] = torch.tensor(images["latent_is_target"], dtype=torch.bool)
        # Per token of the target blocks, in order: whether its tutorial step changes it.
        batch["latent_changed"] = (
            torch.cat(images["latent_changed"]) if images["latent_changed"] else torch.zeros(0, dtype=torch.bool)
        )
        return batch

    def _tensors(self, rows: list[_Sequence]) -> dict:
        """Stack the rows, right-padding them to the longest (a packed batch is a single row)."""
        length = max(len(row.ids) for row in rows)
        pad_id = self.processor.tokenizer.pad_token_id or 0

        def stack(name: str, fill, dtype) -> torch.Tensor:
            return torch.tensor([getattr(row, name) + [fill] * (length - len(row.ids)) for row in rows], dtype=dtype)

        batch = {
            "input_ids": stack("ids", pad_id, torch.long),
            "mm_token_type_ids": stack("types", TokenType.TEXT, torch.long),
            "position_ids": stack("positions", 0, torch.long),
            "block_ids": stack("blocks", -1, torch.long),
            "noised": stack("noised", False, torch.bool),
            "labels": stack("labels", IGNORE_INDEX, torch.long),
        }
        if self.use_frames and any(frame >= 0 for row in rows for frame in row.frames):
            batch["frame_ids"] = stack("frames", -1, torch.long)
        if self.packing:
            batch["document_ids"] = stack("documents", 0, torch.long)
        else:
            batch["attention_mask"] = torch.tensor(
                [[1] * len(row.ids) + [0] * (length - len(row.ids)) for row in rows], dtype=torch.long
            )
        return batch


class TokenBudgetBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of instance indices whose token counts fit `max_tokens`, reshuffled every epoch.

    Indices are visited in a seeded random order and added to the current batch while it fits; a batch is closed
    when the next instance does not fit. Every instance must fit on its own (the training dataset ensures it).
    """

    def __init__(self, num_tokens: list[int], max_tokens: int, *, shuffle: bool = True, seed: int = 0):
        if max_tokens < 1:
            raise ValueError(f"`max_tokens` must be >= 1; got {max_tokens}.")
        too_long = [index for index, count in enumerate(num_tokens) if count > max_tokens]
        if too_long:
            raise ValueError(f"Instances {too_long[:10]} are longer than `max_tokens` = {max_tokens}.")
        self.num_tokens, self.max_tokens, self.shuffle, self.seed = list(num_tokens), max_tokens, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        order = list(range(len(self.num_tokens)))
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)
        batches, current, used = [], [], 0
        for index in order:
            if current and used + self.num_tokens[index] > self.max_tokens:
                batches.append(current)
                current, used = [], 0
            current.append(index)
            used += self.num_tokens[index]
        if current:
            batches.append(current)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
