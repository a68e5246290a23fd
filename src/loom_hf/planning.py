"""Loom's plan-first tutorials: the planning instruction, plan text format and a robust plan parser.

The same strings are used to build training sequences, so the model sees at inference exactly what it was trained on.
"""

import re

__all__ = ["plan_instruction", "format_plan", "step_turn", "parse_plan"]

# A step marker: "Step 3:", "Step3:", "**Step 3:**", "3:", "3." or "3)" (not a decimal such as "1.5"), at the start of
# the text or after whitespace, a comma, a semicolon or markdown emphasis.
_MARKER = re.compile(
    r"(?:^|(?<=[\s,;*#]))(?:\*\*|__)?\s*(?P<step>step\s*)?(?P<number>\d{1,3})\s*(?::|\.(?!\d)|\))(?:\*\*|__)?",
    re.IGNORECASE,
)
_STRIP = " \t\r\n,;*_#"


def plan_instruction(prompt: str, num_steps: int | None = None) -> str:
    """The instruction under which the model writes a plan for `prompt`."""
    count = f"exactly {num_steps} steps" if num_steps else "a few steps"
    return (
        f"Plan a step-by-step visual tutorial for: {prompt}\n"
        f"Write {count}, one per line, as 'Step 1: ...', 'Step 2: ...'. Each step says what is added or changed "
        "in the picture."
    )


def format_plan(steps: list[str]) -> str:
    """The canonical plan text: one `Step k: ...` line per step."""
    return "\n".join(f"Step {index}: {text}" for index, text in enumerate(steps, start=1))


def step_turn(index: int, text: str) -> str:
    """The text turn that precedes frame `index` (1-based) when it is rendered."""
    return f"Step {index}: {text}"


def parse_plan(text: str) -> list[str]:
    """Split a plan into its steps.

    Accepts `Step1:`, `Step 1:`, `1:`, `1.` and `1)` markers, separated by newlines, commas or nothing, with or
    without markdown emphasis. Markers must count up from 1; any other number (a quantity, a temperature, a step
    mentioned inside a step) stays in the step text, and when the plan uses `Step` markers, bare numbers are text.
    Returns `[]` when no `1` marker is found.
    """
    candidates = list(_MARKER.finditer(text))
    worded = [match for match in candidates if match.group("step")]
    if any(int(match.group("number")) == 1 for match in worded):
        candidates = worded
    markers = []
    expected = 1
    for match in candidates:
        if int(match.group("number")) == expected:
            markers.append(match)
            expected += 1
    steps = []
    for match, following in zip(markers, [*markers[1:], None]):
        end = following.start() if following is not None else len(text)
        step = text[match.end() : end].strip(_STRIP)
        steps.append(re.sub(r"\s+", " ", step))
    return [step for step in steps if step]
