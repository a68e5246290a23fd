"""Training side of Loom: dataset schema and converters, instances, packing collator and `LoomTrainer`."""

from .collator import LoomDataCollator, TokenBudgetBatchSampler
from .dataset import LoomTrainingDataset
from .instances import ImageItem, Instance, TextItem, build_instance, instance_keys
from .schema import (
    LOOM_FEATURES,
    PLAN_TASKS,
    TASKS,
    RowProblem,
    convert_loom_parquet,
    from_loom_parquet_row,
    validate_rows,
)
from .trainer import EXPERT_CHOICES, LoomTrainer, LoomTrainingArguments, select_trainable_parameters

__all__ = [
    "LOOM_FEATURES",
    "TASKS",
    "PLAN_TASKS",
    "RowProblem",
    "validate_rows",
    "from_loom_parquet_row",
    "convert_loom_parquet",
    "TextItem",
    "ImageItem",
    "Instance",
    "build_instance",
    "instance_keys",
    "LoomDataCollator",
    "TokenBudgetBatchSampler",
    "LoomTrainingDataset",
    "LoomTrainingArguments",
    "LoomTrainer",
    "EXPERT_CHOICES",
    "select_trainable_parameters",
]
