"""
The Loom paper's judge protocol (Fig. 7): a strict multimodal evaluator scores a step-by-step tutorial on
Temporal Coherence, Instruction Following and Narrative Consistency, each from 1 to 5, and answers in JSON.

[`OpenAICompatibleJudge`] asks any server with an OpenAI-style `/chat/completions` endpoint; [`RecordedJudge`]
replays saved answers, for offline tests and for re-scoring a report's recorded responses.
"""

import base64
import io
import json
import math
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import PIL.Image

__all__ = [
    "SCORE_KEYS",
    "JUDGE_PROMPT",
    "JUDGE_RESPONSE_FORMAT",
    "JudgeScores",
    "Judge",
    "build_judge_messages",
    "parse_judge_response",
    "OpenAICompatibleJudge",
    "RecordedJudge",
]

SCORE_KEYS = ("temporal_coherence", "instruction_following", "narrative_consistency")
MIN_SCORE, MAX_SCORE = 1, 5

# The protocol of the Loom paper's judge (its Fig. 7: the three axes, their criteria, the 1-5 anchors and the JSON
# answer), with the task and the step count filled in.
JUDGE_PROMPT = """You are a STRICT multimodal content evaluator. Your task is to rigorously assess a step-by-step \
tutorial sequence with EXACT image-text alignment verification along three axes and assign a 1-5 score per axis, \
plus a one-sentence justification each. Use the same 1-5 scale: 5 perfect; 4 minor issue; 3 acceptable (some \
issues); 2 poor (multiple issues); 1 fail.

- Temporal Coherence (TC): real-world chronological order in one scene; earlier stages before later ones; logical \
progression; no impossible jumps; executable in practice.
- Instruction Following (IF): matches the instruction exactly; required elements present (including the exact step \
count, {num_steps}); each image visually matches the text of its step; tools, ingredients and parts appear in the \
correct steps; the final result meets the stated goal.
- Narrative Consistency (NC): 1:1 text-image pairing; the same scenario or subject across frames; consistent visual \
style (lighting, angle, setup); no contradictions; a complete story.

Instruction: {instruction}

The tutorial (each step's text, then its image):"""

JUDGE_RESPONSE_FORMAT = """Respond with ONLY this JSON structure (no markdown, no comments):
{
  "temporal_coherence": <integer 1-5>, "instruction_following": <integer 1-5>, "narrative_consistency": <integer 1-5>,
  "temporal_reasoning": "<Are the steps in the correct order? List any violations. 2-4 sentences.>",
  "instruction_reasoning": "<Image-text match quality? List mismatches. 2-4 sentences.>",
  "narrative_reasoning": "<Count ratio? Visual consistency? Any contradictions? 2-4 sentences.>",
  "overall_score": <float: average of the 3 scores, 1 decimal>,
  "detailed_alignment_check": {"step_1": "<Match / Mismatch: reason>", "...": "one entry per step"},
  "usability_assessment": "<Honest answer: can someone actually follow this tutorial? Why or why not?>",
  "image_text_pairing": "<Excellent (4/4) / Good (3/4) / Fair (2/4) / Poor (<1/4)>"
}"""


@dataclass(frozen=True)
class JudgeScores:
    """The three 1-5 scores of one judged tutorial and the judge's full answer (kept for re-scoring)."""

    temporal_coherence: int
    instruction_following: int
    narrative_consistency: int
    raw_response: str = field(repr=False)

    @property
    def overall_score(self) -> float:
        """The mean of the three scores."""
        return (self.temporal_coherence + self.instruction_following + self.narrative_consistency) / 3


class Judge(Protocol):
    """Anything that scores a tutorial: its instruction, its step texts and one frame per step."""

    def __call__(self, instruction: str, steps: Sequence[str], frames: Sequence[PIL.Image.Image]) -> JudgeScores: ...


def _check_tutorial(instruction: str, steps: Sequence[str], frames: Sequence[PIL.Image.Image]) -> None:
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError("`instruction` must be a non-empty string.")
    if isinstance(steps, str) or not isinstance(steps, Sequence) or not all(isinstance(s, str) for s in steps):
        raise TypeError(f"`steps` must be a list of step strings; got {type(steps).__name__}.")
    if not steps:
        raise ValueError("`steps` must hold at least one step.")
    if not isinstance(frames, Sequence) or not all(isinstance(frame, PIL.Image.Image) for frame in frames):
        raise TypeError("`frames` must be a list of PIL images.")
    if len(frames) != len(steps):
        raise ValueError(f"`frames` must hold one image per step: got {len(frames)} images for {len(steps)} steps.")


def _data_url(image: PIL.Image.Image) -> str:
    """`image` as a base64 PNG data URL."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def build_judge_messages(
    instruction: str, steps: Sequence[str], frames: Sequence[PIL.Image.Image]
) -> list[dict[str, Any]]:
    """The chat messages of one judgement: the protocol, then each step's text followed by its frame (as a PNG data
    URL), then the answer format."""
    _check_tutorial(instruction, steps, frames)
    content: list[dict[str, Any]] = [
        {"type": "text", "text": JUDGE_PROMPT.format(num_steps=len(steps), instruction=instruction.strip())}
    ]
    for number, (text, frame) in enumerate(zip(steps, frames, strict=True), start=1):
        content.append({"type": "text", "text": f"Step {number}: {text}"})
        content.append({"type": "image_url", "image_url": {"url": _data_url(frame)}})
    content.append({"type": "text", "text": JUDGE_RESPONSE_FORMAT})
    return [{"role": "user", "content": content}]


def _verdict_object(text: str) -> dict[str, Any]:
    """The first JSON object in `text` that holds a score key, wherever it sits (inside markdown fences, after a
    preamble, ...)."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict) and any(key in value for key in SCORE_KEYS):
            return value
        start = text.find("{", start + 1)
    raise ValueError(f"the judge response holds no JSON object with the scores {', '.join(SCORE_KEYS)}: {text!r:.300}")


def _score(verdict: dict[str, Any], key: str) -> int:
    """The integer score `key`, given as a number or as `{"score": number}`."""
    if key not in verdict:
        raise ValueError(f"the judge response has no {key!r} score (expected all of {', '.join(SCORE_KEYS)}).")
    value = verdict[key]
    if isinstance(value, dict):
        value = value.get("score")
    integral = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
    if isinstance(value, bool) or not integral or not MIN_SCORE <= value <= MAX_SCORE:
        raise ValueError(f"the judge score {key!r} must be an integer from {MIN_SCORE} to {MAX_SCORE}; got {value!r}.")
    return int(value)


def parse_judge_response(text: str) -> JudgeScores:
    """
    Read the three scores out of a judge's answer.

    The JSON object may be wrapped in markdown fences or surrounded by other text. Raises a `ValueError` when no
    object with the scores is found, or when a score is missing or not an integer from 1 to 5 (a whole float such
    as `4.0` counts as an integer).
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` must be the judge's response string; got {type(text).__name__}.")
    verdict = _verdict_object(text)
    return JudgeScores(**{key: _score(verdict, key) for key in SCORE_KEYS}, raw_response=text)


def _message_text(payload: Any) -> str:
    """The text of the first choice of a chat-completions response."""
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as error:
        raise ValueError(f"the judge server returned no chat completion: {payload!r:.300}") from error
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise ValueError(f"the judge server returned no message text: {payload!r:.300}")
    return content


class OpenAICompatibleJudge:
    """
    A [`Judge`] served by an OpenAI-compatible chat-completions API (OpenAI, vLLM, SGLang, LiteLLM, ...).

    Args:
        base_url: the API root, for example `http://localhost:8000/v1`; requests go to `{base_url}/chat/completions`.
        model: the judge model's name on that server.
        api_key: sent as a bearer token when given.
        timeout: seconds to wait for each answer.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"`base_url` must be an http:// or https:// URL; got {base_url!r}.")
        if not isinstance(model, str) or not model:
            raise ValueError(f"`model` must be a non-empty model name; got {model!r}.")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"`timeout` must be a number of seconds > 0; got {timeout!r}.")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout

    def check_reachable(self) -> None:
        """Raise a `ConnectionError` naming the URL when no server answers at `base_url` (checked before an evaluation
        spends its time generating). Any HTTP answer, an error status included, shows a server is there."""
        root = self.url.removesuffix("/chat/completions")
        try:
            with urllib.request.urlopen(f"{root}/models", timeout=self.timeout):
                pass
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ConnectionError(f"The judge server at {root!r} cannot be reached: {reason}.") from error

    def request_body(self, instruction: str, steps: Sequence[str], frames: Sequence[PIL.Image.Image]) -> dict:
        """The JSON body of one judgement: the protocol's messages, decoded greedily (temperature 0)."""
        return {"model": self.model, "messages": build_judge_messages(instruction, steps, frames), "temperature": 0}

    def __call__(self, instruction: str, steps: Sequence[str], frames: Sequence[PIL.Image.Image]) -> JudgeScores:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body = json.dumps(self.request_body(instruction, steps, frames)).encode("utf-8")
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = json.load(response)
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", errors="replace")[:500]
            raise RuntimeError(f"judge request to {self.url} failed with HTTP {error.code}: {detail}") from error
        return parse_judge_response(_message_text(payload))


class RecordedJudge:
    """
    A [`Judge`] that replays recorded response texts in order, parsing each as a live answer would be. Used for
    offline tests and to re-score the `raw_response`s an evaluation report keeps.

    `calls` records each judged tutorial as `(instruction, steps, number of frames)`.
    """

    def __init__(self, responses: Sequence[str]):
        if isinstance(responses, str) or not isinstance(responses, Sequence):
            raise TypeError(f"`responses` must be a list of response strings; got {type(responses).__name__}.")
        if not all(isinstance(response, str) for response in responses):
            raise TypeError("`responses` must hold only strings.")
        self.responses = list(responses)
        self.calls: list[tuple[str, list[str], int]] = []

    def __call__(self, instruction: str, steps: Sequence[str], frames: Sequence[PIL.Image.Image]) -> JudgeScores:
        _check_tutorial(instruction, steps, frames)
        if len(self.calls) == len(self.responses):
            raise RuntimeError(f"RecordedJudge has used all of its {len(self.responses)} recorded responses.")
        self.calls.append((instruction, list(steps), len(frames)))
        return parse_judge_response(self.responses[len(self.calls) - 1])
