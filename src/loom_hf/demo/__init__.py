"""The Gradio demo (`loom demo`, the repository's `app.py`); needs the `demo` extra (gradio)."""

from .app import LoomDemo, load_pipeline, serve
from .runner import PipelineRunner

__all__ = ["LoomDemo", "PipelineRunner", "load_pipeline", "serve"]
