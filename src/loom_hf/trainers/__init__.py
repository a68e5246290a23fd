"""Training side of Loom: the dataset schema, its validator and the official-parquet converter."""

from .schema import (
    LOOM_FEATURES,
    TASKS,
    RowProblem,
    convert_loom_parquet,
    from_loom_parquet_row,
    validate_rows,
)

__all__ = [
    "LOOM_FEATURES",
    "TASKS",
    "RowProblem",
    "validate_rows",
    "from_loom_parquet_row",
    "convert_loom_parquet",
]
