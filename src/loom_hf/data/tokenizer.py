"""A small byte-level BPE tokenizer for the default Loom model, trained on the exact texts the model reads and writes.

The vocabulary is learned from the rows of Loom datasets, expanded into every text turn that training
([`build_instance`]) and inference ([`LoomInterleavedPipeline`]) build from them: instructions, planning
instructions, plans, step turns and answers. Special and entity tokens are single tokens, never split by BPE.
"""

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

import datasets
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ..modeling.processing_loom import ENTITY_TOKENS
from ..planning import format_plan, plan_instruction, step_turn
from ..trainers.schema import PLAN_TASKS

__all__ = ["CONTROL_TOKENS", "PAD_TOKEN", "EOS_TOKEN", "caption_texts", "train_caption_tokenizer"]

PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
# BAGEL's (Qwen2's) turn and image-block tokens, in the order Qwen2 numbers them.
CONTROL_TOKENS = (PAD_TOKEN, "<|im_start|>", EOS_TOKEN, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>")
TEXT_COLUMNS = ("task", "instruction", "step_texts", "answer")
# The special tokens cut the corpus into the same pieces that encoding later sees between them.
_SPECIAL_SPLIT = re.compile("|".join(re.escape(token) for token in (*CONTROL_TOKENS, *ENTITY_TOKENS)))

DatasetLike = datasets.Dataset | datasets.DatasetDict


def _row_texts(row: Mapping) -> Iterator[str]:
    """Every text turn built from one row: what the model reads as input and what it is trained to write."""
    instruction, steps = row["instruction"], row["step_texts"] or []
    yield instruction
    if row["task"] in PLAN_TASKS and steps:
        yield plan_instruction(instruction, len(steps))
        yield plan_instruction(instruction)
        yield format_plan(steps)
        yield from (step_turn(index, text) for index, text in enumerate(steps, start=1))
    if row["answer"]:
        yield row["answer"]


def _splits(dataset_or_datasets: DatasetLike | Sequence[DatasetLike]) -> list[datasets.Dataset]:
    """The datasets to read, in order: a `DatasetDict` stands for all of its splits."""
    if isinstance(dataset_or_datasets, (datasets.Dataset, datasets.DatasetDict)):
        dataset_or_datasets = [dataset_or_datasets]
    elif not isinstance(dataset_or_datasets, Sequence) or isinstance(dataset_or_datasets, (str, bytes)):
        raise TypeError(
            "`dataset_or_datasets` must be a datasets.Dataset, a DatasetDict or a sequence of them; "
            f"got {type(dataset_or_datasets).__name__}."
        )
    splits = []
    for item in dataset_or_datasets:
        if isinstance(item, datasets.DatasetDict):
            splits.extend(item.values())
        elif isinstance(item, datasets.Dataset):
            splits.append(item)
        else:
            raise TypeError(
                f"`dataset_or_datasets` may only hold datasets.Dataset or DatasetDict; got {type(item).__name__}."
            )
    for split in splits:
        missing = [column for column in TEXT_COLUMNS if column not in split.column_names]
        if missing:
            raise ValueError(f"`dataset_or_datasets` lacks the Loom text column(s) {missing}.")
    if not splits:
        raise ValueError("`dataset_or_datasets` holds no dataset.")
    return splits


def caption_texts(dataset_or_datasets: DatasetLike | Sequence[DatasetLike]) -> Iterator[str]:
    """Every text turn of every row, in dataset order (image columns are never decoded)."""
    for split in _splits(dataset_or_datasets):
        for row in split.select_columns(list(TEXT_COLUMNS)):
            yield from _row_texts(row)


def _bpe_pieces(texts: Iterable[str]) -> Iterator[str]:
    """`texts` with special tokens cut out, so that BPE learns no merge that spans or spells one."""
    for text in texts:
        yield from (piece for piece in _SPECIAL_SPLIT.split(text) if piece)


def train_caption_tokenizer(
    dataset_or_datasets: DatasetLike | Sequence[DatasetLike], vocab_size: int = 1024
) -> PreTrainedTokenizerFast:
    """
    Train a Qwen2-style byte-level BPE tokenizer on the texts of Loom datasets (see [`caption_texts`]).

    Every byte is in the alphabet, so any text encodes; BAGEL's control tokens (ids 0-5) and [`ENTITY_TOKENS`] are
    special tokens that always encode to one id. The same datasets always give the same tokenizer.

    Args:
        dataset_or_datasets: a `datasets.Dataset` or `DatasetDict` in the Loom schema, or a sequence of them.
        vocab_size: the most tokens, special tokens and the 256 bytes included; a small corpus may stop short of it.
    """
    special_tokens = [*CONTROL_TOKENS, *ENTITY_TOKENS]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    smallest = len(special_tokens) + len(alphabet)
    if not isinstance(vocab_size, int) or vocab_size < smallest:
        raise ValueError(f"`vocab_size` must be an int of at least {smallest} (specials + bytes); got {vocab_size!r}.")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=alphabet, show_progress=False
    )
    tokenizer.train_from_iterator(_bpe_pieces(caption_texts(dataset_or_datasets)), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=special_tokens[1:],
        clean_up_tokenization_spaces=False,
    )
