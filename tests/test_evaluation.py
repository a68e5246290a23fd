"""Evaluation: image and plan metrics, the judge protocol and its clients, and the end-to-end tutorial evaluation."""

import argparse
import base64
import io
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from loom_hf.data import build_dataset
from loom_hf.evaluation import (
    PSNR_CAP_DB,
    JudgeScores,
    OpenAICompatibleJudge,
    RecordedJudge,
    add_eval_arguments,
    evaluate_tutorials,
    normalise_step,
    parse_judge_response,
    plan_exact_match,
    psnr,
    run_eval,
    ssim,
    step_fidelity,
    temporal_coherence,
)
from loom_hf.tiny import tiny_pipeline

WHITE, RED, CYAN, BLUE, GREY = (255, 255, 255), (255, 0, 0), (0, 255, 255), (0, 0, 255), (128, 128, 128)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Run the tiny pipeline on one thread: its matrices are too small to gain from more, and when another process
    keeps a core busy, two threads waiting on each other make it ~30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def verdict(temporal: int, following: int, narrative: int) -> str:
    """A judge answer in the protocol's JSON format."""
    return json.dumps(
        {
            "temporal_coherence": temporal,
            "temporal_coherence_reasoning": "Parts stay in place.",
            "instruction_following": following,
            "instruction_following_reasoning": "Each frame shows its step.",
            "narrative_consistency": narrative,
            "narrative_consistency_reasoning": "The order makes sense.",
            "overall_score": (temporal + following + narrative) / 3,
            "step_alignment": [{"step": 1, "aligned": True, "issue": ""}],
            "usability": "Easy to follow.",
            "image_text_pairing": "Good.",
        }
    )


# ---------------------------------------------------------------- SSIM and PSNR


@pytest.fixture
def smooth_image() -> np.ndarray:
    """A 64x64 float image with gradients and a square, in [0, 1]."""
    y, x = np.mgrid[0:64, 0:64] / 63.0
    image = np.stack([x, y, 0.5 * (x + y)], axis=-1)
    image[16:40, 20:44] = (0.9, 0.2, 0.1)
    return image


def test_identical_images_score_perfectly(smooth_image):
    assert ssim(smooth_image, smooth_image) == pytest.approx(1.0, abs=1e-9)
    assert psnr(smooth_image, smooth_image) == PSNR_CAP_DB
    as_pil = Image.fromarray((smooth_image * 255).round().astype(np.uint8))
    assert ssim(as_pil, np.asarray(as_pil)) == pytest.approx(1.0, abs=1e-9)


def test_psnr_of_a_known_error():
    # A uniform error of 0.1 on [0, 1] images: MSE = 0.01, PSNR = 10 log10(1 / 0.01) = 20 dB.
    assert psnr(np.full((32, 32, 3), 0.6), np.full((32, 32, 3), 0.5)) == pytest.approx(20.0, abs=1e-4)


def test_ssim_and_psnr_fall_as_noise_grows(smooth_image):
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(smooth_image.shape)
    noisy = [np.clip(smooth_image + level * noise, 0, 1) for level in (0.02, 0.05, 0.1, 0.2)]
    ssims = [ssim(image, smooth_image) for image in noisy]
    psnrs = [psnr(image, smooth_image) for image in noisy]
    assert ssims == sorted(ssims, reverse=True) and len(set(ssims)) == 4 and ssims[0] < 1
    assert psnrs == sorted(psnrs, reverse=True) and len(set(psnrs)) == 4 and psnrs[0] < PSNR_CAP_DB


def test_generated_images_are_compared_at_the_reference_size(smooth_image):
    reference = Image.fromarray((smooth_image * 255).round().astype(np.uint8))
    larger = reference.resize((128, 128), Image.Resampling.BICUBIC)
    assert ssim(larger, reference) > 0.95
    assert psnr(larger, reference) > 30


def test_image_metrics_reject_bad_images(smooth_image):
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        ssim(smooth_image[..., 0], smooth_image)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        psnr(smooth_image * 2, smooth_image)
    with pytest.raises(TypeError, match="PIL image or an"):
        ssim("frame.png", smooth_image)


# ---------------------------------------------------------------- plan exact match


def test_plan_exact_match_normalises_case_spacing_and_edge_punctuation():
    assert normalise_step("  Add   a RED roof!\n") == "add a red roof"
    reference = ["Draw the walls", "Add a red roof"]
    assert plan_exact_match(["draw the walls.", "  **Add  a red ROOF** "], reference)
    assert not plan_exact_match(["Draw the walls", "Add a blue roof"], reference)
    assert not plan_exact_match(["Draw the walls"], reference)
    assert not plan_exact_match([], reference)


def test_plan_exact_match_rejects_bad_arguments():
    with pytest.raises(TypeError, match="predicted_steps"):
        plan_exact_match("Step 1: Draw the walls", ["Draw the walls"])
    with pytest.raises(ValueError, match="reference_steps"):
        plan_exact_match(["Draw the walls"], [])


# ---------------------------------------------------------------- step fidelity and temporal coherence


def canvas(*rectangles: tuple[tuple[int, int, int, int], tuple[int, int, int]]) -> Image.Image:
    """A 32x32 white canvas with filled rectangles `((top, left, bottom, right), colour)`, painted in order."""
    pixels = np.full((32, 32, 3), 255, dtype=np.uint8)
    for (top, left, bottom, right), colour in rectangles:
        pixels[top:bottom, left:right] = colour
    return Image.fromarray(pixels)


def mask(top: int, left: int, bottom: int, right: int) -> np.ndarray:
    region = np.zeros((32, 32), dtype=bool)
    region[top:bottom, left:right] = True
    return region


SQUARE, BAR = (4, 4, 12, 12), (16, 8, 28, 20)
# A three-step tutorial: a red square, a blue bar, then the square repainted red (a step that changes nothing).
FRAMES = [canvas((SQUARE, RED)), canvas((SQUARE, RED), (BAR, BLUE)), canvas((SQUARE, RED), (BAR, BLUE))]
MASKS = [mask(*SQUARE), mask(*BAR), mask(*SQUARE)]


def test_step_fidelity_of_a_perfect_generation_is_zero():
    result = step_fidelity(FRAMES, FRAMES, MASKS, WHITE)
    assert result.per_step == [0.0, 0.0, None]
    assert result.mean == 0.0


def test_step_fidelity_of_repeating_the_previous_frame_is_one():
    repeated = [canvas(), FRAMES[0], FRAMES[1]]
    result = step_fidelity(repeated, FRAMES, MASKS, WHITE)
    assert result.per_step == [pytest.approx(1.0), pytest.approx(1.0), None]
    assert result.mean == pytest.approx(1.0)


def test_step_fidelity_of_drawing_the_wrong_thing_is_above_one():
    wrong = [canvas((SQUARE, CYAN)), FRAMES[1], FRAMES[2]]
    result = step_fidelity(wrong, FRAMES, MASKS, WHITE)
    assert result.per_step[0] == pytest.approx(1.5)
    assert result.per_step[1:] == [0.0, None]


def test_step_fidelity_compares_with_the_models_own_previous_frame():
    # The bar region was already painted (wrongly, grey) at step 1 and step 2 leaves it as it was: a repeat (1),
    # however far grey is from the reference's previous frame. A step with nothing left to draw has no score.
    grey_early = [canvas((SQUARE, RED), (BAR, GREY)), canvas((SQUARE, RED), (BAR, GREY)), FRAMES[2]]
    assert step_fidelity(grey_early, FRAMES, MASKS, WHITE).per_step[1] == pytest.approx(1.0)
    ahead = [FRAMES[1], FRAMES[1], FRAMES[2]]
    assert step_fidelity(ahead, FRAMES, MASKS, WHITE).per_step[1:] == [None, None]


def test_step_fidelity_reads_background_names_and_checks_its_arguments():
    cream = step_fidelity(FRAMES, FRAMES, MASKS, "cream")
    assert cream.per_step[:2] == [0.0, 0.0]
    with pytest.raises(ValueError, match="background"):
        step_fidelity(FRAMES, FRAMES, MASKS, "plaid")
    with pytest.raises(ValueError, match=r"step_masks\[1\]"):
        step_fidelity(FRAMES, FRAMES, [MASKS[0], np.ones((8, 8), bool), MASKS[2]], WHITE)
    with pytest.raises(ValueError, match="generated_frames"):
        step_fidelity(FRAMES[:2], FRAMES, MASKS, WHITE)


def test_temporal_coherence_drops_when_drawn_parts_are_erased():
    assert temporal_coherence(FRAMES, MASKS) == 1.0
    square_erased = [FRAMES[0], canvas((BAR, BLUE)), canvas((BAR, BLUE))]
    # Pair 1 -> 2 loses the whole square (0); pair 2 -> 3 keeps the bar, the only earlier part step 3 does not repaint.
    assert temporal_coherence(square_erased, MASKS) == pytest.approx(0.5)


def test_temporal_coherence_tolerates_small_changes_and_checks_its_arguments():
    darker = [(np.asarray(frame, dtype=np.int16) - 20).clip(0, 255).astype(np.uint8) for frame in FRAMES[1:]]
    shifted = [FRAMES[0], *map(Image.fromarray, darker)]  # every pixel of frames 2 and 3 changes by 20 / 255 ~ 0.08
    assert temporal_coherence(shifted, MASKS) == 1.0
    assert temporal_coherence(shifted, MASKS, tolerance=0.05) < 1.0
    assert temporal_coherence(FRAMES[:1], MASKS[:1]) is None
    with pytest.raises(ValueError, match="tolerance"):
        temporal_coherence(FRAMES, MASKS, tolerance=0)


# ---------------------------------------------------------------- judge responses


def test_parse_judge_response_reads_fenced_json_and_surrounding_text():
    fenced = parse_judge_response(f"```json\n{verdict(5, 4, 3)}\n```")
    assert (fenced.temporal_coherence, fenced.instruction_following, fenced.narrative_consistency) == (5, 4, 3)
    assert fenced.overall_score == pytest.approx(4.0)
    chatty = parse_judge_response(f"Here is my evaluation {{brief}}:\n{verdict(2, 2, 1)}\nThanks!")
    assert (chatty.temporal_coherence, chatty.narrative_consistency) == (2, 1)
    assert chatty.raw_response.startswith("Here is my evaluation")
    nested = '{"temporal_coherence": {"score": 4}, "instruction_following": 3.0, "narrative_consistency": 5}'
    assert parse_judge_response(nested).instruction_following == 3


@pytest.mark.parametrize(
    "response, message",
    [
        ("I cannot judge this.", "no JSON object"),
        ('{"temporal_coherence": 4, "instruction_following": 4}', "narrative_consistency"),
        ('{"temporal_coherence": 6, "instruction_following": 4, "narrative_consistency": 4}', "from 1 to 5"),
        ('{"temporal_coherence": 3.5, "instruction_following": 4, "narrative_consistency": 4}', "from 1 to 5"),
        ('{"temporal_coherence": "4", "instruction_following": 4, "narrative_consistency": 4}', "from 1 to 5"),
        ('{"temporal_coherence": true, "instruction_following": 4, "narrative_consistency": 4}', "from 1 to 5"),
    ],
)
def test_parse_judge_response_rejects_bad_answers(response, message):
    with pytest.raises(ValueError, match=message):
        parse_judge_response(response)


# ---------------------------------------------------------------- judges


class ChatCompletionsServer:
    """A local chat-completions endpoint in a thread: records each request and answers with a fixed text."""

    def __init__(self, answer: str, status: int = 200):
        self.requests: list[dict] = []
        recorded = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                recorded.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                reply = {"choices": [{"message": {"role": "assistant", "content": answer}}]}
                payload = json.dumps(reply if status == 200 else {"error": "overloaded"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "ChatCompletionsServer":
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def no_proxy(monkeypatch):
    """Keep proxy settings of the environment away from the local test server."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


def test_openai_compatible_judge_sends_the_protocol_and_parses_the_answer(no_proxy):
    steps = ["Draw the square", "Add the bar"]
    with ChatCompletionsServer(f"```json\n{verdict(4, 5, 3)}\n```") as server:
        judge = OpenAICompatibleJudge(server.url + "/", "judge-model", api_key="sk-test", timeout=10)
        scores = judge("Draw a square and a bar", steps, FRAMES[:2])
    assert isinstance(scores, JudgeScores)
    assert (scores.temporal_coherence, scores.instruction_following, scores.narrative_consistency) == (4, 5, 3)

    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    body = request["body"]
    assert body["model"] == "judge-model" and body["temperature"] == 0
    (message,) = body["messages"]
    texts = [part["text"] for part in message["content"] if part["type"] == "text"]
    images = [part["image_url"]["url"] for part in message["content"] if part["type"] == "image_url"]
    assert "STRICT" in texts[0] and "Temporal Coherence" in texts[0] and "Draw a square and a bar" in texts[0]
    assert texts[1:3] == ["Step 1: Draw the square", "Step 2: Add the bar"]
    assert "ONLY" in texts[-1] and '"narrative_consistency"' in texts[-1]
    assert len(images) == 2 and all(url.startswith("data:image/png;base64,") for url in images)
    decoded = Image.open(io.BytesIO(base64.b64decode(images[1].split(",", 1)[1])))
    assert np.array_equal(np.asarray(decoded.convert("RGB")), np.asarray(FRAMES[1]))


def test_openai_compatible_judge_reports_http_errors(no_proxy):
    with ChatCompletionsServer("", status=503) as server:
        judge = OpenAICompatibleJudge(server.url, "judge-model", timeout=10)
        with pytest.raises(RuntimeError, match="HTTP 503"):
            judge("Draw a square", ["Draw the square"], FRAMES[:1])
    with pytest.raises(ValueError, match="base_url"):
        OpenAICompatibleJudge("localhost:8000", "judge-model")


def test_recorded_judge_replays_its_responses_in_order():
    judge = RecordedJudge([verdict(5, 5, 5), verdict(1, 2, 3)])
    assert judge("Draw a square", ["Draw the square"], FRAMES[:1]).overall_score == 5
    assert judge("Draw a bar", ["Add the bar"], FRAMES[1:2]).overall_score == 2
    assert judge.calls == [("Draw a square", ["Draw the square"], 1), ("Draw a bar", ["Add the bar"], 1)]
    with pytest.raises(RuntimeError, match="all of its 2"):
        judge("Draw a square", ["Draw the square"], FRAMES[:1])
    with pytest.raises(ValueError, match="one image per step"):
        RecordedJudge([verdict(5, 5, 5)])("Draw a square", ["Draw the square", "Add the bar"], FRAMES[:1])


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def eval_split():
    return build_dataset(num_samples=16, seed=0)["eval"]


@pytest.fixture(scope="module")
def random_pipe():
    pipe = tiny_pipeline(seed=0, max_frames=8)
    pipe.set_progress_bar_config(disable=True)
    return pipe


FAST = {"num_inference_steps": 1, "height": 32, "width": 32, "max_new_tokens": 24}


def test_evaluate_tutorials_runs_and_records_the_models_step_count_when_none_is_named(eval_split):
    pipe = tiny_pipeline(seed=0, max_frames=8)
    pipe.set_progress_bar_config(disable=True)
    pipe.register_to_config(default_num_inference_steps=2)
    steps = []
    fast = {name: value for name, value in FAST.items() if name != "num_inference_steps"}
    report = evaluate_tutorials(
        pipe, eval_split, num_samples=1, callback_on_step_end=lambda p, i, t, k: steps.append(i) or k, **fast
    )
    assert report["settings"]["num_inference_steps"] == 2
    assert steps and set(steps) == {0, 1}  # every frame, of the ground-truth and the own-plan run: 2 Euler steps


def test_evaluate_tutorials_end_to_end(random_pipe, eval_split, tmp_path, capsys):
    judge = RecordedJudge([verdict(5, 4, 3), verdict(3, 2, 1)])
    report = evaluate_tutorials(
        random_pipe, eval_split, num_samples=2, seed=7, judge=judge, output_dir=tmp_path, progress=True, **FAST
    )
    progress = capsys.readouterr().err
    assert "tutorials" in progress and "2/2" in progress

    assert report["num_samples"] == 2 and report["seeds"] == [7, 8]
    assert report["settings"]["num_inference_steps"] == 1 and report["settings"]["judge"] == "RecordedJudge"
    assert report["settings"]["pipeline_kwargs"] == {"height": 32, "width": 32, "max_new_tokens": 24}
    # nothing named: the pipeline's defaults ran (the tiny pipeline keeps BAGEL's: 4.0 / 2.0, frame keeping off)
    assert report["settings"]["resolved_defaults"] == {
        "guidance_scale": 4.0,
        "image_guidance_scale": 2.0,
        "frame_keep_threshold": None,
        "frame_keep_text_share": None,
    }
    scheduler = report["settings"]["scheduler"]  # the sampler that ran, from the pipeline's scheduler
    assert scheduler["class"] == "FlowMatchEulerDiscreteScheduler" and scheduler["stochastic_sampling"] is False
    assert scheduler["shift"] == random_pipe.scheduler.config.shift
    json.dumps(report, allow_nan=False)

    gt_plan = report["gt_plan"]
    assert -1 <= gt_plan["ssim"] <= 1 and 0 < gt_plan["psnr"] < PSNR_CAP_DB
    assert math.isfinite(gt_plan["step_fidelity"]) and gt_plan["step_fidelity"] > 0
    assert 0 <= gt_plan["temporal_coherence"] <= 1
    # The judge scored the two ground-truth-plan tutorials: means of (5, 4, 3) and (3, 2, 1).
    assert gt_plan["judge"] == {
        "temporal_coherence": 4.0,
        "instruction_following": 3.0,
        "narrative_consistency": 2.0,
        "overall_score": 3.0,
        "num_judged": 2,
        "num_unusable": 0,
    }
    assert [call[1] for call in judge.calls] == [eval_split[0]["step_texts"], eval_split[1]["step_texts"]]

    # A random model writes no parsable plan: both samples are plan misses with no frames, and nothing to judge.
    own_plan = report["own_plan"]
    assert own_plan["plan_parsed"] == 0.0 and own_plan["plan_exact_match"] == 0.0 and own_plan["ssim"] is None
    assert own_plan["judge"]["num_judged"] == 0

    first = report["samples"][0]
    assert first["num_steps"] == len(eval_split[0]["step_texts"]) == len(first["gt_plan"]["ssim"])
    assert first["own_plan"]["plan"] is None and first["own_plan"]["judge"] is None
    assert (tmp_path / "0000" / "gt_plan" / "frame_01.png").is_file()
    assert not (tmp_path / "0000" / "own_plan").exists()


def test_evaluate_tutorials_rejects_bad_arguments(random_pipe, eval_split):
    with pytest.raises(ValueError, match="num_samples"):
        evaluate_tutorials(random_pipe, eval_split, num_samples=0)
    with pytest.raises(ValueError, match="plan"):
        evaluate_tutorials(random_pipe, eval_split, plan=["Draw"])
    with pytest.raises(ValueError, match="no tutorial rows"):
        evaluate_tutorials(random_pipe, [{"task": "t2i"}])


def test_eval_command_line(random_pipe, eval_split, tmp_path, capsys, no_proxy):
    random_pipe.save_pretrained(tmp_path / "model")
    eval_split.select(range(1)).save_to_disk(str(tmp_path / "data"))
    parser = add_eval_arguments(argparse.ArgumentParser())
    with ChatCompletionsServer(verdict(2, 3, 4)) as server:
        args = parser.parse_args(
            [
                "--model",
                str(tmp_path / "model"),
                "--data",
                str(tmp_path / "data"),
                "--steps",
                "1",
                "--seed",
                "3",
                "--max-new-tokens",
                "8",
                "--device",
                "cpu",
                "--report",
                str(tmp_path / "out" / "report.json"),
                "--judge-url",
                server.url,
                "--judge-model",
                "judge-model",
                "--history",
                "none",
                "--no-step-text",
                "--guidance-scale",
                "1.5",
            ]
        )
        assert args.handler(args) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert report["num_samples"] == 1 and report["seeds"] == [3]
    assert report["settings"]["split"] == "eval" and report["gt_plan"]["judge"]["overall_score"] == 3.0
    assert len(server.requests) == 1
    ablation = report["settings"]["pipeline_kwargs"]
    assert ablation["history"] == "none" and ablation["use_step_text"] is False and ablation["guidance_scale"] == 1.5
    # the named scale, and the saved model's defaults where none was named
    resolved = report["settings"]["resolved_defaults"]
    assert resolved == {
        "guidance_scale": 1.5,
        "image_guidance_scale": 2.0,
        "frame_keep_threshold": None,
        "frame_keep_text_share": None,
    }

    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--data", "d", "--history", "everything"])
    with pytest.raises(SystemExit, match="together"):
        run_eval(parser.parse_args(["--model", "m", "--data", "d", "--judge-url", "http://127.0.0.1:9"]))
    with pytest.raises(SystemExit, match="error:"):
        run_eval(parser.parse_args(["--model", str(tmp_path / "model"), "--data", str(tmp_path / "missing")]))
