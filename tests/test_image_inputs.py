"""Image inputs of the processor: paths are refused rather than read as text, high-depth images are rescaled to 8 bits
rather than clipped, and empty or truncated images get errors that say so."""

import io

import numpy as np
import pytest
from PIL import Image

from loom_hf.modeling.image_processing_loom import to_rgb
from loom_hf.tiny import tiny_pipeline


@pytest.fixture(scope="module")
def processor():
    return tiny_pipeline(seed=0).processor


@pytest.mark.parametrize("images", ["cat.png", ["cat.png"], [Image.new("RGB", (32, 32)), b"bytes"]])
def test_image_paths_are_refused_not_encoded_as_text(processor, images):
    with pytest.raises(TypeError, match="`images` must be PIL images"):
        processor(images=images, text="What animal is this?")


def test_a_path_gets_a_hint_and_text_must_be_a_string(processor):
    with pytest.raises(TypeError, match=r"got str 'cat.png' \(open the file with PIL.Image.open first\)"):
        processor(images="cat.png")
    with pytest.raises(TypeError, match="`text` must be a string; got list"):
        processor(images=Image.new("RGB", (32, 32)), text=["What?"])


# A horizontal ramp from black to full scale, 16 columns, and the 8-bit ramp it should become.
RAMP = np.linspace(0.0, 1.0, 16)
EXPECTED = np.round(RAMP * 255).astype(np.uint8)


@pytest.mark.parametrize(
    "mode, values",
    [
        ("I;16", (RAMP * 65535).round().astype(np.uint16)),
        ("I", (RAMP * 65535).round().astype(np.int32)),
        ("F", RAMP.astype(np.float32)),
    ],
)
def test_high_depth_images_are_rescaled_not_clipped(mode, values):
    image = Image.fromarray(np.tile(values, (4, 1)))
    assert image.mode == mode
    rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (4, 16, 3) and (rgb == rgb[..., :1]).all()
    np.testing.assert_array_equal(rgb[0, :, 0], EXPECTED)
    assert rgb[0, 8, 0] == 136  # mid-grey stays mid-grey (PIL's own convert gives 255 or 0)


def test_a_16_bit_png_file_reads_as_its_8_bit_ramp(tmp_path):
    Image.fromarray(np.tile((RAMP * 65535).round().astype(np.uint16), (4, 1))).save(tmp_path / "ramp.png")
    with Image.open(tmp_path / "ramp.png") as image:
        np.testing.assert_array_equal(np.asarray(to_rgb(image))[0, :, 0], EXPECTED)


def test_empty_images_are_refused(processor):
    with pytest.raises(ValueError, match=r"The image is empty \(0x0 pixels\)"):
        processor(images=Image.new("RGB", (0, 0)), text="What is this?")
    with pytest.raises(ValueError, match=r"is empty \(32x0 pixels\)"):
        processor.image_processor.resize_for_vae(Image.new("RGB", (32, 0)))


def test_truncated_image_files_are_named(processor, tmp_path):
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with Image.open(tmp_path / "cut.png") as image:
        with pytest.raises(
            ValueError, match=r"The image '.*cut.png' cannot be decoded \(truncated or damaged file\?\)"
        ):
            processor(images=image, text="What is this?")


def test_non_finite_float_pixels_are_refused():
    values = np.full((4, 4), np.nan, dtype=np.float32)
    with pytest.raises(ValueError, match="NaN or infinite pixel values"):
        to_rgb(Image.fromarray(values))
