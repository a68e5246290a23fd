"""Outputs of [`LoomInterleavedPipeline`]: an ordered list of text and image segments."""

import html
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

from .image_output import LoomVaeImageProcessor

__all__ = ["TextSegment", "ImageSegment", "LoomPipelineOutput"]

FRAME_FILE = re.compile(r"^frame_(\d+)\.png$")
REQUEST_FOLDER = re.compile(r"^request_(\d+)$")

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 760px; margin: 2rem auto; padding: 0 1rem; color: #222; }}
.plan {{ background: #f4f4f4; padding: 0.75rem 1rem; border-radius: 6px; }}
.step {{ display: flex; gap: 1rem; align-items: center; margin: 1rem 0; }}
.step img {{ width: 192px; image-rendering: pixelated; border: 1px solid #ccc; }}
</style>
</head>
<body>
<h1>{title}</h1>
{body}
</body>
</html>
"""


@dataclass
class TextSegment:
    """Generated text: the decoded string and the generated token ids (without the start and end markers)."""

    text: str
    token_ids: list[int] = field(default_factory=list)


@dataclass
class ImageSegment:
    """A generated image, in the requested `output_type` (PIL image, `[H, W, 3]` array, `[3, H, W]` tensor or
    diffusers-layout latents)."""

    image: PIL.Image.Image | np.ndarray | torch.Tensor


def _as_pil(image) -> PIL.Image.Image:
    if isinstance(image, PIL.Image.Image):
        return image
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError("Latent outputs cannot be saved as images; call the pipeline with output_type='pil'.")
        image = image.permute(1, 2, 0).float().numpy()
    if image.ndim == 2:
        image = image[..., None]  # grey
    # The pipeline's own float-to-8-bit conversion, so that a saved "np" / "pt" output is the "pil" output exactly.
    return LoomVaeImageProcessor.numpy_to_pil(np.clip(image, 0, 1))[0]


def _frame_name(frame: int) -> str:
    return f"frame_{frame:02d}.png"


def _request_name(request: int) -> str:
    return f"request_{request:02d}"


def _remove_saved_frames(folder: Path, after: int) -> None:
    """Remove the frames `save` wrote past frame `after`: only its own names (frame_07.png, not another tool's
    frame_0007.png)."""
    for path in list(folder.iterdir()):
        match = FRAME_FILE.match(path.name)
        if match and int(match[1]) > after and path.name == _frame_name(int(match[1])) and path.is_file():
            path.unlink()


def _remove_saved_tutorial(folder: Path) -> None:
    """Remove what `save` writes (its frames, `tutorial.md`, `tutorial.html`) from a folder that holds a saved
    tutorial, and the folder itself if nothing else is left in it."""
    if not folder.is_dir() or not (folder / "tutorial.md").is_file():
        return
    _remove_saved_frames(folder, after=0)
    for name in ("tutorial.md", "tutorial.html"):
        if (folder / name).is_file():
            (folder / name).unlink()
    if not any(folder.iterdir()):
        folder.rmdir()


def _write_atomically(path: Path, write) -> None:
    """Write through a temporary sibling, so a crash never leaves a half-written file. The sibling is created as a
    plain `open` would create it, so the OS gives it the user's umask (`tempfile.mkstemp` would make it private)."""
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex}"
    os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


@dataclass
class LoomPipelineOutput(BaseOutput):
    """Output of [`LoomInterleavedPipeline`].

    Args:
        segments: everything the call generated, in order. A tutorial is the plan, then (step text, frame) pairs. For
            a batch of requests: every request's segments, request after request.
        plan: the steps of a tutorial's plan (`task="interleaved"`, one request), else `None`.

    `requests` holds each request's own output, in request order (for one unbatched request: the output itself).
    """

    segments: list[TextSegment | ImageSegment]
    plan: list[str] | None = None
    _batch = None  # the requests of a batched call (not a field: it is not part of the tuple form)

    @classmethod
    def of_batch(cls, requests: list["LoomPipelineOutput"]) -> "LoomPipelineOutput":
        """One output over several requests: flat segments in request order, each request kept in `requests`."""
        output = cls(segments=[segment for request in requests for segment in request.segments], plan=None)
        output._batch = list(requests)
        return output

    @property
    def requests(self) -> list["LoomPipelineOutput"]:
        return self._batch if self._batch is not None else [self]

    @property
    def images(self) -> list:
        return [segment.image for segment in self.segments if isinstance(segment, ImageSegment)]

    @property
    def texts(self) -> list[str]:
        return [segment.text for segment in self.segments if isinstance(segment, TextSegment)]

    def save(self, directory: str | os.PathLike, title: str = "Tutorial") -> Path:
        """Write the images (`frame_01.png`, ...), `tutorial.md` and a self-contained `tutorial.html`; a batch writes
        one `request_01/`, `request_02/`, ... folder per request.

        Saving into the folder of an earlier, longer tutorial (one with a `tutorial.md`) replaces it: the earlier
        tutorial's frames past this output's are removed once everything else is written. Nothing else in the folder
        is touched, nor any frame in a folder that held no tutorial. Likewise a batch saved over an earlier, larger
        batch removes the request folders past its own (their tutorial files; a folder goes once it is empty)."""
        directory = Path(directory)
        if not self.segments:
            raise ValueError("Nothing to save: the output holds no segments.")
        for segment in self.segments:
            if isinstance(segment, ImageSegment):
                _as_pil(segment.image)  # refuse latent outputs before anything is written
        if self._batch is not None:
            for index, request in enumerate(self.requests, start=1):
                request.save(directory / _request_name(index), title=title)
            for path in list(directory.iterdir()):
                match = REQUEST_FOLDER.match(path.name)
                if match and int(match[1]) > len(self.requests) and path.name == _request_name(int(match[1])):
                    _remove_saved_tutorial(path)
            return directory
        return self._save_one(directory, title)

    def _save_one(self, directory: Path, title: str) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        held_a_tutorial = (directory / "tutorial.md").is_file()
        markdown, page = [f"# {title}", ""], []
        pending_text: list[str] = []
        frame = 0
        for segment in self.segments:
            if isinstance(segment, TextSegment):
                pending_text.append(segment.text)
                continue
            frame += 1
            name = _frame_name(frame)
            image = _as_pil(segment.image)
            _write_atomically(directory / name, lambda path, image=image: image.save(path, format="PNG"))
            caption = pending_text.pop() if pending_text else ""
            markdown += [*[f"{text}\n" for text in pending_text], f"**{caption}**" if caption else "", ""]
            markdown += [f"![{caption or name}]({name})", ""]
            page += [f'<div class="plan"><pre>{html.escape(text)}</pre></div>' for text in pending_text]
            page.append(
                f'<div class="step"><img src="{name}" alt="{html.escape(caption or name)}">'
                f"<p>{html.escape(caption)}</p></div>"
            )
            pending_text = []
        markdown += [f"{text}\n" for text in pending_text]
        page += [f'<div class="plan"><pre>{html.escape(text)}</pre></div>' for text in pending_text]
        _write_atomically(directory / "tutorial.md", lambda path: Path(path).write_text("\n".join(markdown)))
        document = _PAGE.format(title=html.escape(title), body="\n".join(page))
        _write_atomically(directory / "tutorial.html", lambda path: Path(path).write_text(document))
        if held_a_tutorial:
            _remove_saved_frames(directory, after=frame)
        return directory
