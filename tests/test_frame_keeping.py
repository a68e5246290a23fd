"""Frame keeping: tutorial frames keep, exactly, the latent tokens their step leaves alone."""

import torch

from loom_hf import LoomInterleavedPipeline
from loom_hf.pipelines import pipeline_loom
from loom_hf.pipelines.frame_keeping import FrameKeeping, follow_kept_tokens, kept_tokens

PLAN = ["Draw the square walls", "Add a red triangular roof", "Add a brown door"]


def frames(pipe, plan=PLAN, seed=0, **kwargs):
    """The latent frames of one tutorial (3 Euler steps per frame, 32 px)."""
    output = pipe(
        ["Draw a red house"],
        task="interleaved",
        plan=plan,
        num_inference_steps=3,
        height=32,
        width=32,
        output_type="latent",
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )
    return output.images


def redrawn_tokens(pipe, earlier: torch.Tensor, later: torch.Tensor) -> int:
    """How many latent tokens of frame `later` (latents `(1, C, h, w)`) differ from frame `earlier`."""
    changed = (later != earlier).any(dim=1, keepdim=True).float()
    return int(torch.nn.functional.max_pool2d(changed, pipe.model.config.latent_patch_size).sum())


def test_a_token_that_changes_frees_itself_and_its_neighbours():
    previous = torch.zeros(1, 4, 10, 10)
    estimate = previous.clone()
    estimate[:, :, 4:6, 4:6] = 1.0  # token (2, 2) of a 5 x 5 grid of 2 x 2 tokens
    estimate[:, :, 0:2, 8:10] = 0.05  # token (0, 4): below the threshold
    mask = kept_tokens(estimate, previous, threshold=0.5, patch_size=2)
    assert mask.shape == (1, 1, 10, 10)
    per_token = mask[0, 0, ::2, ::2]
    expected = torch.ones(5, 5)
    expected[1:4, 1:4] = 0.0
    torch.testing.assert_close(per_token, expected)
    # Constant over each token.
    torch.testing.assert_close(mask, per_token.repeat_interleave(2, 0).repeat_interleave(2, 1)[None, None])


def test_the_token_that_changes_most_always_changes_alone():
    """Below the threshold everywhere, the most-changed token still changes, without its neighbours."""
    previous = torch.zeros(2, 4, 10, 10)
    estimate = previous.clone()
    estimate[0, :, 4:6, 4:6] = 0.2  # frame 0: token (2, 2) differs most
    estimate[1, :, 0:2, 0:2] = 0.1  # frame 1: token (0, 0)
    mask = kept_tokens(estimate, previous, threshold=0.5, patch_size=2)[:, 0, ::2, ::2]
    expected = torch.ones(2, 5, 5)
    expected[0, 2, 2] = expected[1, 0, 0] = 0.0
    torch.testing.assert_close(mask, expected)


def test_kept_tokens_follow_the_flow_path_and_end_on_the_previous_frame():
    generator = torch.Generator().manual_seed(0)
    latents, previous, noise = (torch.randn(2, 4, 6, 6, generator=generator) for _ in range(3))
    mask = torch.zeros(2, 1, 6, 6)
    mask[0, :, :2] = 1.0
    at_half = follow_kept_tokens(latents, previous, noise, mask=mask, sigma=0.5)
    torch.testing.assert_close(at_half[0, :, :2], 0.5 * previous[0, :, :2] + 0.5 * noise[0, :, :2])
    at_end = follow_kept_tokens(latents, previous, noise, mask=mask, sigma=0.0)
    assert torch.equal(at_end[0, :, :2], previous[0, :, :2])
    assert torch.equal(at_end[0, :, 2:], latents[0, :, 2:])
    assert torch.equal(at_end[1], latents[1])


def test_the_decision_step_is_the_first_at_the_share_and_never_past_the_last():
    assert FrameKeeping(0.4, 0.3).decision_step(20) == 6
    assert FrameKeeping(0.4, 0.31).decision_step(20) == 7
    assert FrameKeeping(0.4, 0.0).decision_step(20) == 0
    assert FrameKeeping(0.4, 1.0).decision_step(20) == 19


def test_off_by_default_and_at_zero(framed_pipe):
    plain = frames(framed_pipe)
    for kept, unkept in zip(frames(framed_pipe, frame_keep_threshold=0.0), plain):
        assert torch.equal(kept, unkept)
    assert not torch.equal(plain[1], plain[0])


def test_a_threshold_nothing_reaches_redraws_only_the_token_that_changes_most(framed_pipe):
    plain = frames(framed_pipe)
    kept = frames(framed_pipe, frame_keep_threshold=1e9)
    assert torch.equal(kept[0], plain[0])  # the first frame has nothing to keep
    for earlier, later in zip(kept, kept[1:]):
        assert redrawn_tokens(framed_pipe, earlier, later) == 1  # every other token kept exactly


def test_the_tokens_the_step_text_moves_most_change_too():
    """With a text share, tokens whose text effect reaches that share of the largest change as well (without their
    neighbours); without one, or without an effect, the estimate alone decides."""
    previous = torch.zeros(1, 4, 10, 10)
    estimate = previous.clone()
    estimate[:, :, 4:6, 4:6] = 0.2  # below the threshold: only the most-changed token (2, 2) changes
    text_effect = torch.zeros(1, 1, 5, 5)
    text_effect[0, 0, 0, 4] = 1.0  # the text's part: token (0, 4)
    text_effect[0, 0, 4, 0] = 0.6  # 0.6 of the largest effect
    text_effect[0, 0, 4, 4] = 0.3
    alone = kept_tokens(estimate, previous, threshold=0.5, patch_size=2)[0, 0, ::2, ::2]
    assert int((alone == 0).sum()) == 1 and alone[2, 2] == 0
    for share, named in ((0.5, [(0, 4), (4, 0)]), (1.0, [(0, 4)])):
        mask = kept_tokens(estimate, previous, threshold=0.5, patch_size=2, text_effect=text_effect, text_share=share)[
            0, 0, ::2, ::2
        ]
        expected = torch.ones(5, 5)
        for row, column in [(2, 2), *named]:
            expected[row, column] = 0.0
        torch.testing.assert_close(mask, expected)
    unshared = kept_tokens(estimate, previous, threshold=0.5, patch_size=2, text_effect=text_effect)
    torch.testing.assert_close(unshared[0, 0, ::2, ::2], alone)


def test_the_text_effect_reaches_the_decision_only_with_a_share_and_text_guidance(framed_pipe, monkeypatch):
    """The decision sees the conditional-minus-text-free effect per token when text guidance is on, and the call's
    share; a share makes more tokens change than the estimate alone."""
    seen = []
    decide = pipeline_loom.kept_tokens

    def record(estimate, previous, threshold, *, patch_size, text_effect, text_share):
        seen.append((None if text_effect is None else tuple(text_effect.shape), text_share))
        return decide(
            estimate, previous, threshold, patch_size=patch_size, text_effect=text_effect, text_share=text_share
        )

    monkeypatch.setattr(pipeline_loom, "kept_tokens", record)
    grid = 32 // framed_pipe.latent_stride
    shared = frames(framed_pipe, frame_keep_threshold=1e9, frame_keep_text_share=0.01, guidance_scale=4.0)
    assert seen == [((1, 1, grid, grid), 0.01)] * 2
    seen.clear()
    alone = frames(framed_pipe, frame_keep_threshold=1e9, guidance_scale=4.0)
    assert seen == [((1, 1, grid, grid), None)] * 2
    assert redrawn_tokens(framed_pipe, alone[0], alone[1]) == 1  # the most-changed token only
    assert redrawn_tokens(framed_pipe, shared[0], shared[1]) > 1
    seen.clear()
    frames(framed_pipe, frame_keep_threshold=1e9, frame_keep_text_share=0.5, guidance_scale=1.0)
    assert seen == [(None, 0.5)] * 2  # no text-free branch: nothing to measure the text by


def test_kept_tokens_end_exactly_as_drawn_and_the_others_are_sampled(framed_pipe, monkeypatch):
    """With a decision that keeps the left half, frame t + 1 equals frame t exactly there and differs elsewhere."""
    decided = []

    def left_half(estimate, previous, threshold, *, patch_size, text_effect, text_share):
        mask = torch.zeros_like(estimate[:, :1])
        mask[..., : estimate.shape[-1] // 2] = 1.0
        decided.append(threshold)
        return mask

    monkeypatch.setattr(pipeline_loom, "kept_tokens", left_half)
    kept = frames(framed_pipe, frame_keep_threshold=0.7)
    assert decided == [0.7, 0.7]  # frames 2 and 3 decide; frame 1 has no previous frame
    for earlier, later in zip(kept, kept[1:]):
        assert torch.equal(later[..., :2], earlier[..., :2])
        assert (later[..., 2:] - earlier[..., 2:]).abs().amax() > 1e-3


def test_a_batch_of_tutorials_keeps_as_each_alone(framed_pipe):
    plans = [PLAN, PLAN[:2]]
    batch = framed_pipe(
        [["Draw a red house"], ["Draw a red house"]],
        task="interleaved",
        plan=plans,
        num_inference_steps=3,
        height=32,
        width=32,
        output_type="latent",
        frame_keep_threshold=0.05,
        generator=[torch.Generator().manual_seed(seed) for seed in (0, 1)],
    )
    for request, (plan, seed) in enumerate(zip(plans, (0, 1))):
        alone = frames(framed_pipe, plan=plan, seed=seed, frame_keep_threshold=0.05)
        assert len(batch.requests[request].images) == len(alone)
        for together, single in zip(batch.requests[request].images, alone):
            torch.testing.assert_close(together, single, atol=1e-5, rtol=0)


def test_the_pipeline_default_is_saved_with_it_and_a_call_may_turn_it_off(framed_pipe, tmp_path):
    framed_pipe.register_to_config(default_frame_keep_threshold=1e9)
    try:
        framed_pipe.save_pretrained(tmp_path)
    finally:
        framed_pipe.register_to_config(default_frame_keep_threshold=None)
    loaded = LoomInterleavedPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.default_frame_keep_threshold == 1e9
    kept = frames(loaded)
    assert redrawn_tokens(loaded, kept[0], kept[1]) == 1
    unkept = frames(loaded, frame_keep_threshold=0.0)
    assert not torch.equal(unkept[1], unkept[0])
    # Images and answers do not keep frames: the default does not apply to them.
    loaded(["A red square"], num_inference_steps=1, height=32, width=32)


def test_the_text_share_default_is_saved_and_applies_only_where_frames_are_kept(framed_pipe, tmp_path):
    framed_pipe.register_to_config(default_frame_keep_threshold=1e9, default_frame_keep_text_share=0.01)
    try:
        framed_pipe.save_pretrained(tmp_path)
    finally:
        framed_pipe.register_to_config(default_frame_keep_threshold=None, default_frame_keep_text_share=None)
    loaded = LoomInterleavedPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.default_frame_keep_text_share == 0.01
    assert loaded.resolved_defaults("interleaved")["frame_keep_text_share"] == 0.01
    # frame keeping turned off by the call: its share does not apply (and is no error)
    assert loaded.resolved_defaults("interleaved", frame_keep_threshold=0.0)["frame_keep_text_share"] is None
    assert loaded.resolved_defaults("image")["frame_keep_text_share"] is None
    by_default = frames(loaded, guidance_scale=4.0)
    named = frames(loaded, guidance_scale=4.0, frame_keep_text_share=0.01)
    for default_frame, named_frame in zip(by_default, named):
        assert torch.equal(default_frame, named_frame)
    frames(loaded, frame_keep_threshold=0.0)
