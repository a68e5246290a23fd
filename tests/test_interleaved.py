"""Loom's method: plan-first tutorials, sparse history, temporal embeddings, entity-localized guidance, streaming."""

from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

from loom_hf import ImageSegment, LoomPipelineOutput, TextSegment
from loom_hf.modeling.history import history_frame_indices, rotation_offset_limit
from loom_hf.pipelines.guidance import GuidanceConfig
from loom_hf.pipelines.pipeline_loom import DenoisingSettings, ImageJob
from loom_hf.planning import format_plan, parse_plan, plan_instruction, step_turn

PLAN = [
    "Draw the square walls",
    "Add a red triangular roof",
    "Add a brown door",
    "Add two windows",
    "Add a chimney",
    "Add a path",
    "Add the sun",
]


def tutorial(pipe, plan, **kwargs):
    arguments = {"task": "interleaved", "plan": plan, "num_inference_steps": 1, "height": 32, "width": 32}
    return pipe(["Draw a red house"], **{**arguments, **kwargs})


# ---------------------------------------------------------------- plan parsing

PLAN_FORMS = [
    (
        "Step1: Boil water, add pasta, Step2: Cut avocado, Step3: Mix and serve",
        ["Boil water, add pasta", "Cut avocado", "Mix and serve"],
    ),
    ("Step 1: Boil: water, salt.\nStep 2: Cut avocado.\nStep 3: Mix.", ["Boil: water, salt.", "Cut avocado.", "Mix."]),
    ("Step1: Soak for 2 hours. **Step2:** Chop. **Step3:** Serve.", ["Soak for 2 hours.", "Chop.", "Serve."]),
    ("1: An outline. **2:** Refine the head. **3:** The body.", ["An outline.", "Refine the head.", "The body."]),
    ("1. A sketch, outlined. 2. More detail. 3. Full body.", ["A sketch, outlined.", "More detail.", "Full body."]),
    ("1: Mix 1.5 cups. 2: Bake at 150 °C for 50 minutes.", ["Mix 1.5 cups.", "Bake at 150 °C for 50 minutes."]),
    ("Step 1: Mix 2. Add flour. Step 2: Bake", ["Mix 2. Add flour.", "Bake"]),
    ("Step 1) Walls\nStep 2) Roof", ["Walls", "Roof"]),
]


@pytest.mark.parametrize(("text", "expected"), PLAN_FORMS)
def test_plan_parser_forms(text, expected):
    assert parse_plan(text) == expected


def test_plan_parser_handles_what_the_official_parser_breaks_on():
    """The official inference parser returns the separating comma as every other step of a comma-separated plan
    (so steps 2 and 4 are rendered from ','), and misses newline-separated plans; ours returns the steps."""
    text = "Step1: Walls, Step2: Roof, Step3: Door, Step4: Windows"
    assert parse_plan(text) == ["Walls", "Roof", "Door", "Windows"]
    assert parse_plan("Step1: Walls\nStep2: Roof") == ["Walls", "Roof"]


def test_plan_round_trip_and_empty_plans():
    assert parse_plan(format_plan(PLAN)) == PLAN
    assert parse_plan("") == [] and parse_plan("just some words") == []
    assert "exactly 4 steps" in plan_instruction("Draw a tree", 4)


# ---------------------------------------------------------------- history sampling


def test_history_indices_follow_equations_4_and_6():
    for num_prior in range(0, 16):
        for budget in range(0, 7):
            sparse = history_frame_indices(num_prior, budget)
            if num_prior <= budget:  # full-context mode
                assert sparse == list(range(num_prior))
                continue
            for offset in range(0, num_prior // (budget + 1) + 1):
                expected = [(i * num_prior) // (budget + 1) + offset for i in range(1, budget + 1)]  # 1-based frames
                assert [k + 1 for k in history_frame_indices(num_prior, budget, "sparse", offset)] == expected
            assert history_frame_indices(num_prior, budget, "full") == list(range(num_prior))
            assert history_frame_indices(num_prior, budget, "none") == []


def test_history_paper_example():
    """T = 5, K_max = 4: o = 0 gives frames {1, 2, 3, 4}; o = 1 gives {2, 3, 4, 5}."""
    assert [k + 1 for k in history_frame_indices(5, 4, offset=0)] == [1, 2, 3, 4]
    assert [k + 1 for k in history_frame_indices(5, 4, offset=1)] == [2, 3, 4, 5]
    assert rotation_offset_limit(5, 4) == 1 and rotation_offset_limit(12, 3) == 3
    with pytest.raises(ValueError, match="offset"):
        history_frame_indices(5, 4, offset=2)


# ---------------------------------------------------------------- tutorials


@pytest.mark.parametrize("steps", [1, 3, 7])
def test_segment_structure(framed_pipe, steps):
    output = tutorial(framed_pipe, PLAN[:steps])
    kinds = [type(segment) for segment in output.segments]
    assert kinds == [TextSegment] + [TextSegment, ImageSegment] * steps
    assert output.plan == PLAN[:steps]
    assert output.segments[0].text == format_plan(PLAN[:steps])
    assert [s.text for s in output.segments[1::2]] == [f"Step {i}: {text}" for i, text in enumerate(PLAN[:steps], 1)]
    assert all(image.size == (32, 32) for image in output.images)


def test_frame_contexts_hold_the_chosen_frames_with_their_indices(framed_pipe, monkeypatch):
    """Rendering frame t puts exactly the sampled earlier frames into its context, each with its own temporal index
    (read from the frame ids of the clean latent blocks the model receives; all of a frame's history goes in with one
    forward pass), and the frame being generated carries index t."""
    history_blocks, rendered = [], []
    forward = framed_pipe.model.forward

    def spy(*args, **kwargs):
        cache = kwargs.get("past_key_values")
        if kwargs.get("frame_ids") is not None and kwargs.get("latents") is not None:
            frames = kwargs["frame_ids"][kwargs["mm_token_type_ids"] != 0].unique().tolist()
            if cache is not None and cache.is_read_only:
                rendered.append(frames)
            elif kwargs["timesteps"].abs().sum() == 0:
                history_blocks.append(frames)
        return forward(*args, **kwargs)

    monkeypatch.setattr(framed_pipe.model, "forward", spy)
    tutorial(framed_pipe, PLAN, max_history_frames=3)
    expected = [history_frame_indices(t, 3) for t in range(7)]
    assert rendered == [[t] for t in range(7)]  # one Euler step per frame
    assert history_blocks == [sorted(chosen) for chosen in expected if chosen]
    assert expected[3] == [0, 1, 2] and expected[6] == [0, 2, 3]


@torch.no_grad()
def test_temporal_embeddings_reach_the_visual_tokens(framed_pipe, monkeypatch):
    seen = []
    forward = framed_pipe.model.forward

    def spy(*args, **kwargs):
        if kwargs.get("frame_ids") is not None:
            types, frames = kwargs["mm_token_type_ids"], kwargs["frame_ids"]
            seen.append((frames[types != 0].unique().tolist(), frames[types == 0].unique().tolist()))
        return forward(*args, **kwargs)

    monkeypatch.setattr(framed_pipe.model, "forward", spy)
    tutorial(framed_pipe, PLAN[:3], guidance_scale=1.0)
    visual = sorted({value for frames, _ in seen for value in frames})
    assert visual == [0, 1, 2]
    assert all(markers == [-1] for _, markers in seen)  # block markers get no frame embedding


def test_frame_index_changes_the_generated_frame(framed_pipe):
    noise = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    contexts = framed_pipe.encode_context(["Draw a red house"])
    settings = DenoisingSettings(num_inference_steps=1, guidance=GuidanceConfig(scale=1.0), timestep_shift=3.0)

    def render(frame_index):
        job = ImageJob(contexts, (32, 32), latents=noise.clone(), frame_index=frame_index)
        return framed_pipe.denoise([job], settings)[0]

    assert not torch.allclose(render(0), render(5))


def test_history_modes_change_the_context(framed_pipe, monkeypatch):
    lengths = {}
    original = framed_pipe.frame_contexts

    def record(base, frames, index, text, settings):
        contexts, chosen = original(base, frames, index, text, settings)
        lengths.setdefault(settings.history, []).append(len(chosen))
        return contexts, chosen

    monkeypatch.setattr(framed_pipe, "frame_contexts", record)
    for history in ("full", "sparse", "none"):
        tutorial(framed_pipe, PLAN, history=history, max_history_frames=2)
    assert lengths["full"] == list(range(7))
    assert lengths["sparse"] == [0, 1, 2, 2, 2, 2, 2]
    assert lengths["none"] == [0] * 7


def test_image_to_interleaved_reads_the_input_image(framed_pipe):
    image = Image.new("RGB", (48, 48), (0, 120, 200))
    with_image = tutorial(framed_pipe, PLAN[:2], output_type="latent", generator=torch.Generator().manual_seed(0))
    framed_pipe_output = framed_pipe(
        [image, "Draw a red house"],
        task="interleaved",
        plan=PLAN[:2],
        num_inference_steps=1,
        height=32,
        width=32,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    )
    assert not torch.allclose(with_image.images[0], framed_pipe_output.images[0])


def test_generated_plan_is_parsed_and_capped(framed_pipe, monkeypatch):
    written = TextSegment(text="Step 1: Walls\nStep 2: Roof\nStep 3: Door\nStep 4: Chimney", token_ids=[])
    prompts = []
    original = framed_pipe.encode_context

    def record(inputs, *args, **kwargs):
        prompts.extend(item for item in inputs if isinstance(item, str))
        return original(inputs, *args, **kwargs)

    monkeypatch.setattr(framed_pipe, "decode_texts", lambda contexts, *args: [written] * len(contexts))
    monkeypatch.setattr(framed_pipe, "encode_context", record)
    output = framed_pipe(
        ["Draw a red house"], task="interleaved", num_steps=3, num_inference_steps=1, height=32, width=32
    )
    assert output.plan == ["Walls", "Roof", "Door"]
    assert prompts[0] == plan_instruction("Draw a red house", 3)


def test_unparsable_generated_plan_is_reported(framed_pipe, monkeypatch):
    monkeypatch.setattr(framed_pipe, "decode_texts", lambda contexts, *a: [TextSegment(text="no steps here")])
    with pytest.raises(ValueError, match="could not be parsed"):
        framed_pipe(["Draw a red house"], task="interleaved", num_inference_steps=1)


def test_segments_stream_as_soon_as_they_exist(framed_pipe, monkeypatch):
    events = []
    denoise = framed_pipe.denoise

    def render(*args, **kwargs):
        events.append("render")
        return denoise(*args, **kwargs)

    monkeypatch.setattr(framed_pipe, "denoise", render)
    tutorial(
        framed_pipe,
        PLAN[:2],
        callback_on_segment=lambda pipe, index, segment: events.append((index, type(segment).__name__)),
    )
    assert events == [
        (0, "TextSegment"),
        (1, "TextSegment"),
        "render",
        (2, "ImageSegment"),
        (3, "TextSegment"),
        "render",
        (4, "ImageSegment"),
    ]


class _ImageSources(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def test_save_writes_an_openable_tutorial(framed_pipe, tmp_path):
    output = tutorial(framed_pipe, PLAN[:3])
    folder = output.save(tmp_path / "tutorial", title="How to draw a house")
    parser = _ImageSources()
    parser.feed((folder / "tutorial.html").read_text())
    assert parser.sources == ["frame_01.png", "frame_02.png", "frame_03.png"]
    for source in parser.sources:
        assert Image.open(folder / source).size == (32, 32)
    markdown = (folder / "tutorial.md").read_text()
    assert "# How to draw a house" in markdown and "Step 3: Add a brown door" in markdown
    assert all(f"]({source})" in markdown for source in parser.sources)
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_saving_a_shorter_tutorial_over_a_longer_one_leaves_no_stale_frames(framed_pipe, tmp_path):
    tutorial(framed_pipe, PLAN[:3]).save(tmp_path / "tutorial")
    (tmp_path / "tutorial" / "notes.txt").write_text("mine")
    Image.new("RGB", (4, 4)).save(tmp_path / "tutorial" / "frame_0007.png")  # another tool's naming
    tutorial(framed_pipe, PLAN[:2]).save(tmp_path / "tutorial")
    names = sorted(p.name for p in (tmp_path / "tutorial").iterdir())
    assert names == ["frame_0007.png", "frame_01.png", "frame_02.png", "notes.txt", "tutorial.html", "tutorial.md"]
    # A folder that held no tutorial keeps every file it had.
    (tmp_path / "video").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "video" / "frame_03.png")
    tutorial(framed_pipe, PLAN[:2]).save(tmp_path / "video")
    assert (tmp_path / "video" / "frame_03.png").is_file()


@pytest.mark.parametrize("output_type", ["np", "pt"])
def test_a_saved_float_output_is_the_pil_output_exactly(framed_pipe, tmp_path, output_type):
    def saved_frames(kind):
        output = tutorial(framed_pipe, PLAN[:2], output_type=kind, generator=torch.Generator().manual_seed(0))
        folder = output.save(tmp_path / kind)
        return [np.asarray(Image.open(folder / f"frame_{index:02d}.png")) for index in (1, 2)]

    for floats, pil in zip(saved_frames(output_type), saved_frames("pil"), strict=True):
        np.testing.assert_array_equal(floats, pil)


def test_a_grey_float_image_saves_as_a_grey_frame(tmp_path):
    LoomPipelineOutput(segments=[ImageSegment(image=np.full((4, 6), 0.5))]).save(tmp_path)
    saved = Image.open(tmp_path / "frame_01.png")
    assert saved.mode == "L" and saved.size == (6, 4) and set(saved.getdata()) == {127}  # 127.5, truncated


def test_latent_outputs_cannot_be_saved_as_images(framed_pipe, tmp_path):
    output = tutorial(framed_pipe, PLAN[:1], output_type="latent")
    with pytest.raises(ValueError, match="output_type='pil'"):
        output.save(tmp_path)


# ---------------------------------------------------------------- entity tokens and localized guidance


def test_entity_prompts_run_through_the_same_call(framed_pipe):
    tokenizer = framed_pipe.processor.tokenizer
    for token in ("<upper>", "<style>", "<model>", "<garment>"):
        assert tokenizer.convert_ids_to_tokens(tokenizer.encode(token, add_special_tokens=False)) == [token]
    figure, garment_ref = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")
    decomposed = framed_pipe([figure, "Extract the <upper> of the <model> in image 1"], num_inference_steps=1)
    styled = framed_pipe([garment_ref, figure, "Apply the <style> of image 1 to image 2"], num_inference_steps=1)
    assert decomposed.images[0].size == styled.images[0].size == (32, 32)


def test_entity_tokens_survive_saving(framed_pipe, tmp_path):
    framed_pipe.save_pretrained(tmp_path)
    from loom_hf import LoomInterleavedPipeline

    loaded = LoomInterleavedPipeline.from_pretrained(tmp_path)
    assert loaded.model.config.entity_token_ids == framed_pipe.model.config.entity_token_ids
    ids = loaded.processor.tokenizer.encode("<upper>", add_special_tokens=False)
    assert ids == [loaded.processor.tokenizer.convert_tokens_to_ids("<upper>")]


def test_entity_mask_changes_latents_only_inside_the_mask(framed_pipe):
    mask = np.zeros((32, 48), dtype=np.float32)
    mask[:16, 16:32] = 1.0  # one latent token (16 px) exactly
    noise = torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(0))
    image = Image.new("RGB", (48, 32), "white")

    def first_step(**kwargs):
        return framed_pipe(
            [image, "Replace the <upper> with a red sweater"],
            num_inference_steps=1,
            latents=noise,
            output_type="latent",
            **kwargs,
        ).images[0]

    plain = first_step()
    localized = first_step(entity_masks={"<upper>": mask}, entity_guidance_scale=9.0)
    changed = (localized - plain).abs().amax(dim=1)[0]  # per latent pixel (8 px)
    inside = torch.zeros(4, 6, dtype=torch.bool)
    inside[:2, 2:4] = True
    assert (changed[inside] > 1e-4).all()
    assert (changed[~inside] == 0).all()
    # A mask given as a PIL image or a tensor selects the same region.
    pil_mask = Image.fromarray((mask * 255).astype(np.uint8))
    torch.testing.assert_close(first_step(entity_masks={"<upper>": pil_mask}, entity_guidance_scale=9.0), localized)
    tensor_mask = torch.from_numpy(mask)[None]
    torch.testing.assert_close(first_step(entity_masks={"<upper>": tensor_mask}, entity_guidance_scale=9.0), localized)


# ---------------------------------------------------------------- bad input

BAD_TUTORIALS = [
    ({"num_steps": 0}, ValueError, "`num_steps`"),
    ({"num_steps": 9}, ValueError, "frame table holds 8"),
    ({"max_history_frames": -1}, ValueError, "`max_history_frames`"),
    ({"history": "recent"}, ValueError, "`history`"),
    ({"plan": []}, ValueError, "`plan`"),
    ({"plan": "no steps in here"}, ValueError, "`plan`"),
    ({"plan": ["walls", ""]}, ValueError, "`plan`"),
    ({"plan": [1, 2]}, TypeError, "`plan`"),
    ({"plan": PLAN[:3], "num_steps": 2}, ValueError, "more than `num_steps`"),
    ({"plan": PLAN + ["a", "b"]}, ValueError, "frame table holds 8"),
    ({"think": True}, ValueError, "`think`"),
    ({"inputs": ["Draw a house", Image.new("RGB", (8, 8))]}, ValueError, "last item"),
    ({"entity_masks": {"<upper>": np.ones((32, 32))}, "entity_guidance_scale": 5.0}, ValueError, "task='image'"),
    ({"latents": torch.zeros(1, 16, 4, 4)}, ValueError, "`latents`"),
    # frame keeping
    ({"frame_keep_threshold": -0.1}, ValueError, "`frame_keep_threshold` must be >= 0.0"),
    ({"frame_keep_threshold": float("nan")}, ValueError, "`frame_keep_threshold` must be a finite number"),
    ({"frame_keep_threshold": True}, TypeError, "`frame_keep_threshold` must be a number"),
    ({"frame_keep_threshold": "0.4"}, TypeError, "`frame_keep_threshold` must be a number"),
    ({"frame_keep_at": 1.5}, ValueError, "`frame_keep_at` must be >= 0.0 and <= 1.0"),
    ({"frame_keep_at": -0.1}, ValueError, "`frame_keep_at`"),
    ({"frame_keep_at": float("inf")}, ValueError, "`frame_keep_at`"),
    ({"frame_keep_threshold": 0.4, "task": "image"}, ValueError, "applies to task='interleaved' only"),
    ({"frame_keep_threshold": 0.4, "frame_keep_text_share": 0.0}, ValueError, "`frame_keep_text_share` must be > 0.0"),
    ({"frame_keep_threshold": 0.4, "frame_keep_text_share": 1.5}, ValueError, "`frame_keep_text_share` must be > 0.0"),
    ({"frame_keep_text_share": float("nan")}, ValueError, "`frame_keep_text_share` must be a finite number"),
    ({"frame_keep_text_share": "0.5"}, TypeError, "`frame_keep_text_share` must be a number"),
    ({"frame_keep_text_share": 0.5}, ValueError, "widens frame keeping, which is off for this call"),
    ({"frame_keep_text_share": 0.5, "task": "image", "plan": None}, ValueError, "widens frame keeping, which is off"),
    ({"frame_keep_threshold": 0.4, "task": "text"}, ValueError, "applies to task='interleaved' only"),
]


@pytest.mark.parametrize(("overrides", "error", "message"), BAD_TUTORIALS)
def test_bad_tutorial_input_is_rejected_before_work(framed_pipe, monkeypatch, overrides, error, message):
    calls = []
    monkeypatch.setattr(framed_pipe.model, "forward", lambda *a, **k: calls.append(1))
    arguments = {"inputs": ["Draw a red house"], "task": "interleaved", "plan": PLAN[:2], **overrides}
    with pytest.raises(error, match=message):
        framed_pipe(**arguments)
    assert calls == []


BAD_ENTITY_CALLS = [
    ({"entity_guidance_scale": 5.0}, "`entity_guidance_scale` needs `entity_masks`"),
    ({"entity_masks": {"<upper>": np.ones((32, 32))}}, "need an `entity_guidance_scale`"),
    ({"entity_masks": {"<unicorn>": np.ones((32, 32))}, "entity_guidance_scale": 5.0}, "not one of the model's"),
    ({"entity_masks": {"<upper>": np.ones((16, 32))}, "entity_guidance_scale": 5.0}, "must be 32x32"),
    ({"entity_masks": {}, "entity_guidance_scale": 5.0}, "non-empty dict"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_ENTITY_CALLS)
def test_bad_entity_input_is_rejected_before_work(framed_pipe, monkeypatch, overrides, message):
    calls = []
    monkeypatch.setattr(framed_pipe.model, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match=message):
        framed_pipe(["Replace the <upper>"], height=32, width=32, **overrides)
    assert calls == []


def test_frames_without_step_text(framed_pipe, monkeypatch):
    """`use_step_text=False` (the "w/o stepwise prompt" ablation) renders each frame without its text turn, while
    the output still shows the step texts."""
    written = []
    write_context = framed_pipe.write_context

    def record(cache, blocks):
        written.append([token for piece in blocks.pieces for token in piece.input_ids])
        return write_context(cache, blocks)

    def holds(ids, turn):
        return any(ids[start : start + len(turn)] == turn for start in range(len(ids) - len(turn) + 1))

    monkeypatch.setattr(framed_pipe, "write_context", record)
    turn = framed_pipe.processor.text_block(step_turn(1, PLAN[0]))
    tutorial(framed_pipe, PLAN[:2])
    assert any(holds(ids, turn) for ids in written)
    written.clear()
    output = tutorial(framed_pipe, PLAN[:2], use_step_text=False)
    assert written and not any(holds(ids, turn) for ids in written)
    assert [s.text for s in output.segments[1::2]] == [step_turn(1, PLAN[0]), step_turn(2, PLAN[1])]
