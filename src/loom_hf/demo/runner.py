"""A pipeline call in a worker thread, its segments handed over while it runs."""

import queue
import threading
from collections.abc import Iterator

from ..pipelines import ImageSegment, LoomInterleavedPipeline, LoomPipelineOutput, TextSegment

__all__ = ["PipelineRunner"]


class _Abandoned(Exception):
    """Raised inside the pipeline's segment callback once nobody reads the run any more, to stop it early."""


class PipelineRunner:
    """Runs `pipe(...)` calls in worker threads and streams each call's segments.

    The pipeline serialises its calls itself (a lock), also when a reader leaves mid-run: the abandoned call stops at
    its next segment and only then lets the next one start.
    """

    def __init__(self, pipe: LoomInterleavedPipeline):
        self.pipe = pipe

    def stream(self, inputs: list, **kwargs) -> Iterator[TextSegment | ImageSegment | LoomPipelineOutput]:
        """Yield the call's segments as the pipeline makes them, then its `LoomPipelineOutput`; errors the
        pipeline raises (bad arguments included) are raised here."""
        events: queue.Queue = queue.Queue()
        abandoned = threading.Event()

        def on_segment(pipe, index: int, segment: TextSegment | ImageSegment) -> None:
            if abandoned.is_set():
                raise _Abandoned
            events.put(segment)

        def work() -> None:
            try:
                events.put(self.pipe(inputs, callback_on_segment=on_segment, **kwargs))
            except _Abandoned:
                pass
            except Exception as error:
                events.put(error)

        threading.Thread(target=work, name="loom-demo-call", daemon=True).start()
        try:
            while True:
                event = events.get()
                if isinstance(event, Exception):
                    raise event
                yield event
                if isinstance(event, LoomPipelineOutput):
                    return
        finally:
            abandoned.set()

    def run(self, inputs: list, **kwargs) -> LoomPipelineOutput:
        """The call's output, once it is complete."""
        *_, output = self.stream(inputs, **kwargs)
        return output
