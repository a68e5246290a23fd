"""The Gradio app: a tutorial drawn while you watch, text-to-image and editing from references, answers about
images. Handlers keep nothing between calls, so sessions share only the (serialised) pipeline."""

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import PIL.Image
import torch

from .. import DEFAULT_MODEL
from ..pipelines import ImageSegment, LoomInterleavedPipeline, LoomPipelineOutput
from .inputs import generator_from_seed, read_images, required_text, whole_number
from .runner import PipelineRunner

__all__ = ["LoomDemo", "load_pipeline", "serve"]

# The default model draws 64 px frames: show them enlarged without blurring.
CSS = "#tutorial-frames img, #image-output img { image-rendering: pixelated; }"
HISTORY_CHOICES = [("sparse (Loom)", "sparse"), ("every earlier frame", "full"), ("none", "none")]
# Every generating event shares one queue slot: one pipeline call at a time per process.
CONCURRENCY_ID = "pipeline"


@contextlib.contextmanager
def _shown_in_page() -> Iterator[None]:
    """Bad input (the demo's own checks, or the pipeline's ValueError / TypeError raised before any work) becomes
    a Gradio error that shows its message in the page."""
    try:
        yield
    except (ValueError, TypeError) as error:
        raise gr.Error(str(error), print_exception=False) from error


def _frame_file(image: PIL.Image.Image, folder: Path, number: int) -> str:
    """A streamed frame as a PNG file. Gradio rewrites a PIL image into its cache at every update of the gallery,
    in place, so the browser could fetch a frame half written; a file is copied into the cache once, atomically."""
    path = folder / f"frame_{number:02d}.png"
    image.save(path)
    return str(path)


def _tutorial_archive(output: LoomPipelineOutput, folder: Path, title: str) -> str:
    """The tutorial as `output.save` writes it (frames, tutorial.md, tutorial.html), zipped for download."""
    output.save(folder / "tutorial", title=title)
    return shutil.make_archive(str(folder / "tutorial"), "zip", folder / "tutorial")


def load_pipeline(model: str | None = None) -> LoomInterleavedPipeline:
    """A saved pipeline folder (default: the embedded `loom_hf.DEFAULT_MODEL`), in float32, without progress bars."""
    pipe = LoomInterleavedPipeline.from_pretrained(model or DEFAULT_MODEL, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class LoomDemo:
    """The three tabs' handlers over one pipeline, and the page that calls them."""

    def __init__(self, pipe: LoomInterleavedPipeline, model_name: str):
        self.runner = PipelineRunner(pipe)
        self.model_name = model_name
        self.entity_tokens = pipe.processor.tokenizer.convert_ids_to_tokens(pipe.model.config.entity_token_ids)
        self.guidance = (pipe.config.default_guidance_scale, pipe.config.default_image_guidance_scale)
        self.denoising_steps = pipe.config.default_num_inference_steps

    def tutorial(
        self,
        prompt: str,
        image_file: str | None,
        num_steps: str | None,
        history: str,
        denoising_steps: float,
        guidance_scale: float,
        image_guidance_scale: float,
        seed: float,
    ) -> Iterator[tuple]:
        """Stream a tutorial: the plan as soon as it is written, then each frame with its step's text, then the
        zipped HTML tutorial. Yields (plan, frames, status, download)."""
        with _shown_in_page():
            instruction = required_text(prompt, "prompt")
            inputs = [*read_images([image_file] if image_file else []), instruction]
            call = {
                "task": "interleaved",
                "num_steps": whole_number(num_steps, "Number of steps"),
                "history": history,
                "num_inference_steps": whole_number(denoising_steps, "Denoising steps"),
                "guidance_scale": guidance_scale,
                "image_guidance_scale": image_guidance_scale,
                "generator": generator_from_seed(seed),
            }
            plan, step, frames = "", "", []
            yield plan, frames, "Planning…", None
            with tempfile.TemporaryDirectory(prefix="loom-demo-") as folder:
                for event in self.runner.stream(inputs, **call):
                    if isinstance(event, LoomPipelineOutput):
                        output = event
                        break
                    if isinstance(event, ImageSegment):
                        frames.append((_frame_file(event.image, Path(folder), len(frames) + 1), step))
                        status = f"Drew frame {len(frames)}."
                    elif plan:
                        step, status = event.text, f"Drawing… {event.text}"
                    else:
                        plan, status = event.text, "Planned. Drawing frame 1…"
                    yield plan, list(frames), status, None
                archive = _tutorial_archive(output, Path(folder), instruction)
                yield plan, frames, f"Done: {len(frames)} frames.", archive

    def image(
        self,
        prompt: str,
        reference_files: list[str] | None,
        denoising_steps: float,
        guidance_scale: float,
        image_guidance_scale: float,
        seed: float,
    ) -> PIL.Image.Image:
        """One image: text-to-image without references, editing or composition with them (read in the order shown)."""
        with _shown_in_page():
            inputs = [*read_images(reference_files or []), required_text(prompt, "prompt")]
            output = self.runner.run(
                inputs,
                task="image",
                num_inference_steps=whole_number(denoising_steps, "Denoising steps"),
                guidance_scale=guidance_scale,
                image_guidance_scale=image_guidance_scale,
                generator=generator_from_seed(seed),
            )
            return output.images[0]

    def ask(self, question: str, image_files: list[str] | None) -> str:
        """The model's answer about the images (understanding: `task="text"`)."""
        with _shown_in_page():
            inputs = [*read_images(image_files or []), required_text(question, "question")]
            return self.runner.run(inputs, task="text").texts[0]

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="Loom", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
            gr.Markdown(
                "# Loom\nInterleaved text–image generation on the BAGEL backbone: a step-by-step tutorial is "
                f"planned first, then drawn frame by frame. Model: `{self.model_name}`."
            )
            with gr.Tab("Tutorial"):
                self._tutorial_tab()
            with gr.Tab("Image"):
                self._image_tab()
            with gr.Tab("Ask"):
                self._ask_tab()
        return demo.queue(default_concurrency_limit=1)

    def _tutorial_tab(self) -> None:
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", placeholder="Draw a red house", elem_id="tutorial-prompt")
                image = gr.File(label="Input image (optional)", file_types=["image"], elem_id="tutorial-image")
                with gr.Row():
                    # A text field: a number field cannot start blank, and blank lets the model decide.
                    num_steps = gr.Textbox(
                        label="Number of steps", placeholder="blank: the model decides", elem_id="tutorial-steps"
                    )
                    history = gr.Radio(HISTORY_CHOICES, value="sparse", label="History", elem_id="tutorial-history")
                settings = self._settings("tutorial")
                run = gr.Button("Generate", variant="primary", elem_id="tutorial-generate")
            with gr.Column():
                status = gr.Markdown(elem_id="tutorial-status")
                plan = gr.Textbox(label="Plan", lines=6, interactive=False, elem_id="tutorial-plan")
                frames = gr.Gallery(label="Frames", columns=3, object_fit="contain", elem_id="tutorial-frames")
                download = gr.File(label="Tutorial (HTML, zip)", interactive=False, elem_id="tutorial-download")
        gr.on(
            [run.click, prompt.submit],
            self.tutorial,
            [prompt, image, num_steps, history, *settings],
            [plan, frames, status, download],
            concurrency_id=CONCURRENCY_ID,
            show_progress="minimal",
        )

    def _image_tab(self) -> None:
        tokens = " ".join(f"`{token}`" for token in self.entity_tokens) or "none (this model has no entity tokens)"
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(
                    label="Prompt",
                    placeholder="Dress the <model> of image 1 in the <upper> garment of image 2",
                    elem_id="image-prompt",
                )
                references = gr.File(
                    label="Reference images (optional; image 1, image 2, … in the order shown, drag to reorder)",
                    file_count="multiple",
                    file_types=["image"],
                    allow_reordering=True,
                    elem_id="image-references",
                )
                gr.Markdown(f"Entity tokens: {tokens}")
                settings = self._settings("image")
                run = gr.Button("Generate", variant="primary", elem_id="image-generate")
            output = gr.Image(label="Image", type="pil", interactive=False, elem_id="image-output")
        gr.on(
            [run.click, prompt.submit],
            self.image,
            [prompt, references, *settings],
            output,
            concurrency_id=CONCURRENCY_ID,
        )

    def _ask_tab(self) -> None:
        with gr.Row():
            with gr.Column():
                question = gr.Textbox(label="Question", placeholder="What is drawn here?", elem_id="ask-question")
                images = gr.File(
                    label="Images (optional)", file_count="multiple", file_types=["image"], elem_id="ask-images"
                )
                run = gr.Button("Ask", variant="primary", elem_id="ask-run")
            answer = gr.Textbox(label="Answer", lines=6, interactive=False, elem_id="ask-answer")
        gr.on([run.click, question.submit], self.ask, [question, images], answer, concurrency_id=CONCURRENCY_ID)

    def _settings(self, tab: str) -> list[gr.components.Component]:
        """Denoising steps, text and image guidance (all starting at the model's defaults), seed: the controls every
        drawing tab shares."""
        with gr.Accordion("Settings", open=False, elem_id=f"{tab}-settings"):
            denoising_steps = gr.Slider(
                1,
                max(50, self.denoising_steps),
                value=self.denoising_steps,
                step=1,
                label="Denoising steps",
                elem_id=f"{tab}-denoise",
            )
            guidance = gr.Slider(
                0, 10, value=self.guidance[0], step=0.5, label="Text guidance", elem_id=f"{tab}-guidance"
            )
            image_guidance = gr.Slider(
                0, 10, value=self.guidance[1], step=0.5, label="Image guidance", elem_id=f"{tab}-image-guidance"
            )
            seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id=f"{tab}-seed")
        return [denoising_steps, guidance, image_guidance, seed]


def serve(model: str | None = None, *, host: str | None = None, port: int | None = None) -> None:
    """Load the model and serve the demo until interrupted. Host and port left as `None` follow Gradio's
    `GRADIO_SERVER_NAME` / `GRADIO_SERVER_PORT`, which a Hugging Face Space sets."""
    name = "loom_hf.DEFAULT_MODEL" if model in (None, DEFAULT_MODEL) else model
    demo = LoomDemo(load_pipeline(model), model_name=name).build()
    demo.launch(server_name=host, server_port=port, css=CSS)
