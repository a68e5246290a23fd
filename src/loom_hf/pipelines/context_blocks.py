"""What one forward pass appends to a context: text turns and image blocks gathered first, written together.

A context is built from several pieces (a system prompt, input images, instructions; in a tutorial the chosen earlier
frames and the step's text). Writing each piece with a forward pass of its own pays the fixed cost of a pass per
piece; the attention rules (text causal, a block bidirectional within itself, everything after a piece sees it) give
the same keys and values when the pieces go through one pass together. [`ContextBlocks`] gathers them, and a
[`ContextMark`] records a point between them where a guidance context branches off.
"""

from dataclasses import dataclass, field

import torch

from ..modeling.packing import TokenType

__all__ = ["ContextPiece", "ContextBlocks", "ContextMark"]


@dataclass(frozen=True)
class ContextMark:
    """A point between the pieces of [`ContextBlocks`]: the tokens before it and how far they advance BAGEL's position
    counter."""

    tokens: int
    positions: int


@dataclass
class ContextPiece:
    """One text turn or image block: ids, token types, the Loom frame of each visual token (`-1` elsewhere) and, for
    a block, its image input (`(latent tokens, grid)` or `(ViT patches, grid)`)."""

    input_ids: list[int]
    token_types: list[int]
    frame_ids: list[int]
    latent: tuple[torch.Tensor, tuple[int, int]] | None = None
    vit: tuple[torch.Tensor, tuple[int, int]] | None = None

    @property
    def positions(self) -> int:
        """RoPE positions taken: one per text token, one for a whole image block."""
        return 1 if self.latent is not None or self.vit is not None else len(self.input_ids)


@dataclass
class ContextBlocks:
    """The pieces to append to one context, in order."""

    pieces: list[ContextPiece] = field(default_factory=list)

    def add_text(self, ids: list[int]) -> None:
        """A text turn (its ids, markers included)."""
        self.pieces.append(ContextPiece(list(ids), [TokenType.TEXT] * len(ids), [-1] * len(ids)))

    def add_block(
        self,
        ids: list[int],
        types: list[int],
        frame_index: int | None,
        *,
        latent: tuple[torch.Tensor, tuple[int, int]] | None = None,
        vit: tuple[torch.Tensor, tuple[int, int]] | None = None,
    ) -> None:
        """An image block with its input; `frame_index` goes on its visual tokens, not on its markers."""
        frame = -1 if frame_index is None else frame_index
        frame_ids = [-1 if token_type == TokenType.TEXT else frame for token_type in types]
        self.pieces.append(ContextPiece(list(ids), list(types), frame_ids, latent=latent, vit=vit))

    def mark(self) -> ContextMark:
        """The point after the pieces added so far."""
        return ContextMark(
            tokens=sum(len(piece.input_ids) for piece in self.pieces),
            positions=sum(piece.positions for piece in self.pieces),
        )
