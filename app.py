"""Hugging Face Space entry point: `python app.py` serves the Loom demo (`loom demo`) with the model folder named by
`LOOM_MODEL`, else the embedded default model, on the host and port the Space sets."""

import os
import sys
from pathlib import Path

# A Space runs this repository as checked out, without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from loom_hf.demo import serve  # noqa: E402

if __name__ == "__main__":
    serve(os.environ.get("LOOM_MODEL"))
