"""The `loom` commands never destroy their input, check their outputs and numbers before any work, and create what
they write with the user's umask."""

import os
import stat

import datasets
import pytest
from PIL import Image

from loom_hf import LoomInterleavedPipeline
from loom_hf.cli import main as loom
from loom_hf.utils import user_folder_mode

from .test_conversion import SIZES, release  # noqa: F401 - `release` is a fixture
from .test_training_faults import snapshot

ROOT_SKIP = pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: nothing to refuse")


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a command gets as far as loading a pipeline (its checks must come first)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the command started work before checking its arguments")

    monkeypatch.setattr(LoomInterleavedPipeline, "from_pretrained", refuse)
    monkeypatch.setattr(LoomInterleavedPipeline, "from_bagel", refuse)


def argparse_error(capsys, argv: list[str]) -> str:
    """The message argparse prints (exit status 2) for `argv`."""
    with pytest.raises(SystemExit) as raised:
        loom(argv)
    assert raised.value.code == 2
    return capsys.readouterr().err


# ---------------------------------------------------------------- convert-bagel


@pytest.mark.parametrize("target", ["same", "parent", "inside"])
def test_convert_never_destroys_its_input(release, no_loading, target):  # noqa: F811
    """SRC SRC, an output containing SRC and an output inside SRC are refused, even with --overwrite."""
    destination = {"same": release, "parent": release.parent, "inside": release / "hf"}[target]
    before = snapshot(release.parent)
    with pytest.raises(SystemExit, match=r"dst .* overlaps the input src .* would destroy the input"):
        loom(["convert-bagel", str(release), str(destination), *SIZES, "--overwrite"])
    assert snapshot(release.parent) == before


def test_convert_refuses_a_file_as_output(release, tmp_path, no_loading):  # noqa: F811
    target = tmp_path / "out"
    target.write_text("mine")
    with pytest.raises(SystemExit, match=r"dst '.*out' is a file"):
        loom(["convert-bagel", str(release), str(target), *SIZES, "--overwrite"])
    assert target.read_text() == "mine"


@ROOT_SKIP
def test_convert_refuses_an_unwritable_location(release, tmp_path, no_loading):  # noqa: F811
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(SystemExit, match="is not writable"):
            loom(["convert-bagel", str(release), str(locked / "out"), *SIZES])
    finally:
        locked.chmod(0o755)
    assert not (locked / "out").exists()


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--timestep-shift", "nan", "expected a finite number > 0, got 'nan'"),
        ("--timestep-shift", "inf", "expected a finite number > 0, got 'inf'"),
        ("--timestep-shift", "-3", "expected a finite number > 0, got '-3'"),
        ("--max-shard-size", "5XB", "expected a size such as 5GB"),
    ],
)
def test_convert_numbers_are_checked(capsys, tmp_path, option, value, message):
    error = argparse_error(capsys, ["convert-bagel", "src", str(tmp_path / "out"), option, value])
    assert f"argument {option}: {message}" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("values", [["64", "abc", "16"], ["64", "0", "16"], ["64", "32.5", "16"]])
def test_convert_sizes_must_be_positive_integers(capsys, tmp_path, values):
    error = argparse_error(capsys, ["convert-bagel", "src", str(tmp_path / "out"), "--vae-image-size", *values])
    assert "argument --vae-image-size: expected an integer >= 1" in error


def test_convert_creates_folders_and_files_with_the_umask(release, tmp_path):  # noqa: F811
    previous = os.umask(0o027)
    try:
        assert loom(["convert-bagel", str(release), str(tmp_path / "out" / "hf"), *SIZES]) == 0
    finally:
        os.umask(previous)
    modes = {path: stat.S_IMODE(path.stat().st_mode) for path in [tmp_path / "out", *(tmp_path / "out").rglob("*")]}
    assert {mode for path, mode in modes.items() if path.is_dir()} == {0o750}
    assert {mode for path, mode in modes.items() if path.is_file()} == {0o640}


def test_reading_the_umask_never_changes_it(tmp_path, monkeypatch):
    """Setting the process umask, even for a moment, would give files other threads create then the wrong mode."""
    previous = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda mask: pytest.fail("the process umask was set"))
        assert user_folder_mode(tmp_path) == 0o750
        tmp_path.chmod(0o2775)  # a setgid parent passes its bit to new folders: not a permission bit to copy
        assert user_folder_mode(tmp_path) == 0o750
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert list(tmp_path.iterdir()) == []  # the probe is gone


# ---------------------------------------------------------------- generate


def test_generate_checks_its_output_folder_before_drawing(tmp_path, no_loading):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    with pytest.raises(SystemExit, match=r"--output-dir '.*taken' is a file"):
        loom(["generate", "Draw a red house", "--output-dir", str(taken)])
    assert taken.read_text() == "mine"


def test_generate_reads_its_images_before_loading(tmp_path, no_loading):
    with pytest.raises(SystemExit, match=r"--image '.*missing.png' cannot be read"):
        loom(["generate", "Finish it", "--output-dir", str(tmp_path / "out"), "--image", str(tmp_path / "missing.png")])
    Image.new("RGB", (64, 64), "red").save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(SystemExit, match=r"--image '.*cut.png' cannot be read"):
        loom(["generate", "Finish it", "--output-dir", str(tmp_path / "out"), "--image", str(tmp_path / "cut.png")])
    (tmp_path / "out").mkdir()
    Image.new("RGB", (64, 64), "red").save(tmp_path / "out" / "frame_01.png")
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit, match="lies inside --output-dir"):
        loom(
            [
                "generate",
                "Go on",
                "--output-dir",
                str(tmp_path / "out"),
                "--image",
                str(tmp_path / "out" / "frame_01.png"),
            ]
        )
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--steps", "0", "expected an integer >= 1"),
        ("--steps", "ten", "expected an integer >= 1"),
        ("--num-steps", "-1", "expected an integer >= 1"),
        ("--guidance-scale", "nan", "expected a finite number"),
        ("--image-guidance-scale", "inf", "expected a finite number"),
        ("--max-history-frames", "-1", "expected an integer >= 0"),
        ("--seed", "1.5", "expected an integer >= 0"),
        ("--frame-keep-text-share", "0", "expected a number in (0, 1]"),
        ("--frame-keep-text-share", "1.5", "expected a number in (0, 1]"),
        ("--frame-keep-text-share", "nan", "expected a number in (0, 1]"),
    ],
)
def test_generate_numbers_are_checked(capsys, tmp_path, option, value, message):
    error = argparse_error(capsys, ["generate", "Draw", "--output-dir", str(tmp_path / "out"), option, value])
    assert f"argument {option}: {message}" in error
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- data synth and eval


def test_synth_checks_its_output_and_uses_the_umask(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(SystemExit, match=r"--out\) '.*file' is a file"):
        loom(["data", "synth", "--out", str(tmp_path / "file"), "--num-samples", "2"])
    assert "argument --num-samples: expected an integer >= 1" in argparse_error(
        capsys, ["data", "synth", "--out", str(tmp_path / "d"), "--num-samples", "0"]
    )
    previous = os.umask(0o022)
    try:
        assert loom(["data", "synth", "--out", str(tmp_path / "data"), "--num-samples", "2"]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "data").rglob("*") if p.is_file()} == {0o644}


def test_synth_mix_selects_the_families_and_refuses_bad_weights(tmp_path, capsys):
    for bad, message in (
        ("drawing", "'drawing' is not family=weight"),
        ("drawing=x", "the weight of 'drawing' must be a number; got 'x'"),
        ("poetry=1", "mix has unknown families ['poetry']"),
        ("drawing=nan", "mix['drawing'] must be a finite number >= 0"),
        ("drawing=-1", "mix['drawing'] must be a finite number >= 0"),
        ("drawing=0", "mix must give at least one family a positive weight"),
        ("drawing=1,drawing=2", "family 'drawing' is given twice"),
    ):
        error = argparse_error(
            capsys, ["data", "synth", "--out", str(tmp_path / "d"), "--num-samples", "4", "--mix", bad]
        )
        assert f"argument --mix: {message}" in error, bad
    assert not (tmp_path / "d").exists()
    assert loom(["data", "synth", "--out", str(tmp_path / "d"), "--num-samples", "6", "--mix", "style=1,plan=2"]) == 0
    tasks = datasets.load_from_disk(str(tmp_path / "d"))["train"]["task"]
    assert sorted(set(tasks)) == ["plan", "style"] and tasks.count("plan") == 4


def test_eval_checks_the_judge_and_outputs_before_generating(tmp_path, no_loading, no_proxy):
    base = ["eval", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data")]
    with pytest.raises(SystemExit, match=r"judge server at 'http://127.0.0.1:9/v1' cannot be reached"):
        loom([*base, "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "judge"])
    (tmp_path / "reports").mkdir()
    with pytest.raises(SystemExit, match=r"--report '.*reports' is a folder"):
        loom([*base, "--report", str(tmp_path / "reports")])
    (tmp_path / "frames").write_text("mine")
    with pytest.raises(SystemExit, match=r"--output-dir '.*frames' is a file"):
        loom([*base, "--output-dir", str(tmp_path / "frames")])
    with pytest.raises(SystemExit, match="--output-dir .* overlaps the input --data "):
        loom([*base, "--output-dir", str(tmp_path / "data" / "tutorials")])


@pytest.mark.parametrize(
    "option, value", [("--steps", "0"), ("--num-samples", "x"), ("--guidance-scale", "nan"), ("--seed", "-2")]
)
def test_eval_numbers_are_checked(capsys, option, value):
    error = argparse_error(capsys, ["eval", "--model", "m", "--data", "d", option, value])
    assert f"argument {option}: expected" in error


@pytest.fixture
def no_proxy(monkeypatch):
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
