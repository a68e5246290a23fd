"""Store a trained pipeline as the package's embedded default model (`loom_hf.DEFAULT_MODEL`).

    python examples/default_model/export_default_model.py --pipeline runs/default/pipeline

Weights are stored in float16 (loaded back in float32), the folder is written next to the destination and
renamed into place, and its size is checked against the package budget.
"""

import argparse
import json
from pathlib import Path

import torch

import loom_hf
from loom_hf import LoomInterleavedPipeline
from loom_hf.utils import written_atomically

BUDGET_MB = 25


def export(pipeline: str, destination: str | Path = loom_hf.DEFAULT_MODEL) -> float:
    """Write `pipeline` in float16 to `destination`; returns its size in MB."""
    destination = Path(destination)
    pipe = LoomInterleavedPipeline.from_pretrained(pipeline, dtype=torch.float16)
    with written_atomically(destination) as staging:
        pipe.save_pretrained(staging)
        staging.chmod(0o755)  # mkdtemp creates the folder private; the package's files are world-readable
        # The weights stay float16 on disk; `dtype="auto"` (transformers' default) loads them back in float32.
        config_file = staging / "model" / "config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "dtype": "float32"}, indent=2) + "\n")
        size = sum(path.stat().st_size for path in staging.rglob("*") if path.is_file()) / 2**20
        if size > BUDGET_MB:
            raise ValueError(f"The exported model takes {size:.1f} MB, more than the {BUDGET_MB} MB budget.")
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="the trained pipeline folder")
    parser.add_argument("--output", default=loom_hf.DEFAULT_MODEL, help="destination (default: the package's)")
    args = parser.parse_args()
    print(f"Wrote {args.output} ({export(args.pipeline, args.output):.1f} MB)")


if __name__ == "__main__":
    main()
