"""The Gradio demo in a real browser: `loom demo` serves the embedded default model on a free localhost port and
Debian's chromium, driven by Playwright (the system browser, no download), watches a tutorial being drawn, and sees
bad input answered with its message while the app keeps serving."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright

from loom_hf import DEFAULT_MODEL
from loom_hf.demo import PipelineRunner, load_pipeline
from loom_hf.demo.inputs import generator_from_seed, read_images, whole_number

CHROMIUM = "/usr/bin/chromium"
# Headless as root, with the background connections a closed network refuses switched off.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DENOISING_STEPS = "8"
MODEL_DENOISING_STEPS = str(
    json.loads((Path(DEFAULT_MODEL) / "model_index.json").read_text())["default_num_inference_steps"]
)
# Generous upper bounds for a loaded two-core machine; the checks are on what the page shows, not on how fast.
SERVE_TIMEOUT_S = 120
GENERATION_TIMEOUT_MS = 90_000
PAGE_TIMEOUT_MS = 30_000
expect.set_options(timeout=PAGE_TIMEOUT_MS)

# Records, in the page, every frame count the gallery goes through and the frame count when the plan first shows.
RECORD_PROGRESS = """() => {
    const frames = () => document.querySelectorAll('#tutorial-frames img').length;
    const seen = {counts: [frames()], planShownAtFrames: null};
    window.loomProgress = seen;
    new MutationObserver(() => {
        const count = frames();
        if (count !== seen.counts[seen.counts.length - 1]) seen.counts.push(count);
        const plan = document.querySelector('#tutorial-plan textarea').value;
        if (seen.planShownAtFrames === null && plan.includes('Step 1')) seen.planShownAtFrames = count;
    }).observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
}"""
ALL_FRAMES_LOADED = """[...document.querySelectorAll('#tutorial-frames img')]
    .every(image => image.complete && image.naturalWidth > 0)"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_served(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"`loom demo` exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    pytest.fail(f"`loom demo` did not serve {url}:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory) -> Iterator[str]:
    """`loom demo` with the embedded default model, in its own process, offline."""
    port = _free_port()
    log = tmp_path_factory.mktemp("demo") / "server.log"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, "-m", "loom_hf.cli", "demo", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_until_served(url, server, log)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).is_file(), f"the browser tests need Debian's chromium at {CHROMIUM}: apt-get install chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, demo_url: str) -> Iterator[Page]:
    """A fresh browser session on the demo (its own cookies and Gradio session)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = context.new_page()
    page.goto(demo_url)
    expect(page.locator("#tutorial-prompt textarea")).to_be_visible()
    yield page
    context.close()


def _set_denoising_steps(page: Page, tab: str) -> None:
    """Open the tab's settings, see the steps start at the model's saved default, and set them to DENOISING_STEPS."""
    page.locator(f"#{tab}-settings").get_by_text("Settings").click()
    expect(page.locator(f"#{tab}-denoise input[type=number]")).to_have_value(MODEL_DENOISING_STEPS)
    page.fill(f"#{tab}-denoise input[type=number]", DENOISING_STEPS)
    page.keyboard.press("Enter")


def _expect_error(page: Page, message: str) -> None:
    expect(page.get_by_test_id("toast-body").filter(has_text=message)).to_be_visible()


def _generate_tutorial(page: Page) -> None:
    page.click("#tutorial-generate")
    expect(page.locator("#tutorial-status")).to_contain_text("Done", timeout=GENERATION_TIMEOUT_MS)


@pytest.mark.slow
def test_tutorial_shows_the_plan_first_then_streams_its_frames(page: Page, tmp_path: Path):
    page.fill("#tutorial-prompt textarea", "Draw a red house")
    _set_denoising_steps(page, "tutorial")
    page.evaluate(RECORD_PROGRESS)
    page.click("#tutorial-generate")

    frames = page.locator("#tutorial-frames img")
    page.wait_for_function(
        "document.querySelectorAll('#tutorial-frames img').length >= 3", timeout=GENERATION_TIMEOUT_MS
    )
    expect(frames.nth(2)).to_be_visible()
    expect(page.locator("#tutorial-status")).to_contain_text("Done", timeout=GENERATION_TIMEOUT_MS)
    # Every frame is an image the browser could load (the gallery loads them lazily).
    page.wait_for_function(ALL_FRAMES_LOADED)
    page.screenshot(path=tmp_path / "demo.png", full_page=True)

    # One frame per planned step, each captioned with its step.
    plan = page.locator("#tutorial-plan textarea").input_value().splitlines()
    count = frames.count()
    assert count >= 3 and len(plan) == count and plan[0].startswith("Step 1:")
    assert [frames.nth(i).get_attribute("alt") for i in range(count)] == plan
    # The plan was on the page before the last frame, and frames appeared one after another, not all at the end.
    progress = page.evaluate("window.loomProgress")
    assert progress["planShownAtFrames"] is not None and progress["planShownAtFrames"] < count
    assert progress["counts"][-1] == count and any(0 < seen < count for seen in progress["counts"])

    # The download is the HTML tutorial the pipeline's save() writes, zipped.
    with page.expect_download() as download:
        page.locator("#tutorial-download a").click()
    archive = tmp_path / "tutorial.zip"
    download.value.save_as(archive)
    names = set(zipfile.ZipFile(archive).namelist())
    assert {"tutorial.html", "tutorial.md"} | {f"frame_{i:02d}.png" for i in range(1, count + 1)} <= names
    assert Image.open(tmp_path / "demo.png").size[0] == 1280


@pytest.mark.slow
def test_bad_tutorial_input_shows_its_message_and_the_next_request_works(page: Page):
    page.click("#tutorial-generate")
    _expect_error(page, "The prompt is empty")

    page.fill("#tutorial-prompt textarea", "Draw a red house")
    page.fill("#tutorial-steps textarea", "0")
    page.click("#tutorial-generate")
    _expect_error(page, "`num_steps` must be an integer >= 1; got 0.")

    page.fill("#tutorial-steps textarea", "two")
    page.click("#tutorial-generate")
    _expect_error(page, "Number of steps must be a whole number; got 'two'.")

    page.fill("#tutorial-steps textarea", "2")
    _set_denoising_steps(page, "tutorial")
    _generate_tutorial(page)
    expect(page.locator("#tutorial-frames img")).to_have_count(2)
    assert len(page.locator("#tutorial-plan textarea").input_value().splitlines()) == 2


@pytest.mark.slow
def test_image_tab_names_an_unreadable_upload_then_composes_references(page: Page, tmp_path: Path):
    red, blue, broken = tmp_path / "red.png", tmp_path / "blue.png", tmp_path / "broken.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(red)
    Image.new("RGB", (64, 64), (30, 30, 200)).save(blue)
    broken.write_bytes(b"not an image")
    page.get_by_role("tab", name="Image").click()
    page.fill("#image-prompt textarea", "Dress the <model> of image 1 in the <upper> garment of image 2")
    _set_denoising_steps(page, "image")

    page.set_input_files("#image-references input[type=file]", [red, broken])
    page.click("#image-generate")
    _expect_error(page, "The upload 'broken.png' is not a readable image")

    page.locator("#image-references").get_by_role("button", name="Remove this file").last.click()
    page.set_input_files("#image-references input[type=file]", [blue])
    # References keep their upload order: image 1 is red, image 2 is blue.
    expect(page.locator("#image-references")).to_contain_text(re.compile(r"red[\s\S]*blue"))
    expect(page.locator("#image-references")).not_to_contain_text("broken")
    page.click("#image-generate")
    output = page.locator("#image-output img")
    expect(output).to_be_visible(timeout=GENERATION_TIMEOUT_MS)
    output.evaluate("image => image.decode()")
    assert output.evaluate("image => image.naturalWidth") > 0


@pytest.mark.slow
def test_ask_tab_answers_and_refuses_an_empty_question(page: Page):
    page.get_by_role("tab", name="Ask").click()
    page.click("#ask-run")
    _expect_error(page, "The question is empty")

    page.fill("#ask-question textarea", "How do I draw a red house?")
    page.click("#ask-run")
    expect(page.locator("#ask-answer textarea")).not_to_have_value("", timeout=GENERATION_TIMEOUT_MS)


def test_number_fields_read_blank_as_unset_and_name_the_field():
    assert whole_number("", "Number of steps") is None and whole_number(None, "Number of steps") is None
    assert whole_number(" 3 ", "Number of steps") == 3 and whole_number(4.0, "Denoising steps") == 4
    with pytest.raises(ValueError, match=re.escape("Number of steps must be a whole number; got '2.5'.")):
        whole_number("2.5", "Number of steps")
    assert torch.equal(torch.rand(3, generator=generator_from_seed(7)), torch.rand(3, generator=generator_from_seed(7)))
    with pytest.raises(ValueError, match="Seed must be a whole number from 0"):
        generator_from_seed(-1)


def test_uploads_are_read_in_order_and_an_unreadable_one_is_named(tmp_path: Path):
    colours = [(200, 30, 30), (30, 30, 200)]
    paths = [tmp_path / f"reference_{i}.png" for i in range(len(colours))]
    for path, colour in zip(paths, colours):
        Image.new("RGB", (8, 8), colour).save(path)
    assert [image.getpixel((0, 0)) for image in read_images(paths)] == colours
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="The upload 'notes.png' is not a readable image"):
        read_images([paths[0], tmp_path / "notes.png"])


@pytest.mark.slow
def test_runner_streams_segments_in_order_reraises_bad_input_and_keeps_serving():
    runner = PipelineRunner(load_pipeline())
    call = {"task": "interleaved", "num_steps": 2, "num_inference_steps": 2}
    *segments, output = runner.stream(["Draw a red house"], **call, generator=torch.Generator().manual_seed(0))
    assert segments == output.segments and len(output.images) == 2

    with pytest.raises(ValueError, match=re.escape("`num_steps` must be an integer >= 1; got 0.")):
        runner.run(["Draw a red house"], **{**call, "num_steps": 0})
    # A reader that leaves after the plan does not block the next call.
    abandoned = runner.stream(["Draw a red house"], **call)
    next(abandoned)
    abandoned.close()
    assert len(runner.run(["Draw a red house"], **call).images) == 2
