"""Evaluation of Loom tutorials: image and plan metrics, the paper's judge protocol, and the `loom eval` runner."""

from .evaluate import add_eval_arguments, evaluate_tutorials, run_eval
from .judge import (
    JUDGE_PROMPT,
    JUDGE_RESPONSE_FORMAT,
    SCORE_KEYS,
    Judge,
    JudgeScores,
    OpenAICompatibleJudge,
    RecordedJudge,
    build_judge_messages,
    parse_judge_response,
)
from .metrics import (
    PSNR_CAP_DB,
    StepFidelity,
    normalise_step,
    plan_exact_match,
    psnr,
    ssim,
    step_fidelity,
    temporal_coherence,
)

__all__ = [
    "add_eval_arguments",
    "evaluate_tutorials",
    "run_eval",
    "JUDGE_PROMPT",
    "JUDGE_RESPONSE_FORMAT",
    "SCORE_KEYS",
    "Judge",
    "JudgeScores",
    "OpenAICompatibleJudge",
    "RecordedJudge",
    "build_judge_messages",
    "parse_judge_response",
    "PSNR_CAP_DB",
    "StepFidelity",
    "normalise_step",
    "plan_exact_match",
    "psnr",
    "ssim",
    "step_fidelity",
    "temporal_coherence",
]
