"""The shared preprocessing path: decoding, orientation, colour modes, resize and white pad."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ml.preprocess import batch_to_square, iter_square_batches, load_image, to_square

RED = (255, 0, 0)
BLUE = (0, 0, 255)
REPO_ROOT = Path(__file__).resolve().parents[1]


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_importing_the_package_does_not_import_tensorflow():
    code = (
        "import sys, ml.preprocess, ml.backbones, ml.imagenet, "
        "ml.torch_checkpoint, ml.efficientnet_lite; "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_portrait_image_is_resized_and_padded_white_left_and_right():
    square = to_square(Image.new("RGB", (60, 80), RED), 224)
    assert square.shape == (224, 224, 3) and square.dtype == np.uint8
    # 60x80 scales to 168x224, leaving (224 - 168) / 2 = 28 white columns each side.
    assert (square[:, :28] == 255).all()
    assert (square[:, 196:] == 255).all()
    assert (square[:, 28:196] == RED).all()


def test_landscape_image_is_padded_top_and_bottom():
    square = to_square(Image.new("RGB", (100, 50), BLUE), 64)
    assert (square[:16] == 255).all() and (square[48:] == 255).all()
    assert (square[16:48] == BLUE).all()


def test_square_input_of_the_right_size_is_unchanged():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    assert np.array_equal(to_square(Image.fromarray(pixels), 32), pixels)


def test_exif_orientation_is_applied():
    # Stored 40 wide x 20 high, red on the left, blue on the right; orientation 6 means
    # "rotate 90 degrees clockwise to display", so the upright image is red on top.
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", exif=exif.tobytes(), quality=95)

    upright = load_image(data)
    assert upright.size == (20, 40)
    pixels = np.asarray(upright).astype(int)
    assert pixels[5, 10, 0] > 200 and pixels[5, 10, 2] < 60  # top is red
    assert pixels[35, 10, 2] > 200 and pixels[35, 10, 0] < 60  # bottom is blue


def test_greyscale_becomes_rgb():
    img = load_image(encode(Image.new("L", (8, 8), 77), "PNG"))
    assert img.mode == "RGB"
    assert (np.asarray(img) == 77).all()


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    arr = np.array([[0, 32896, 65535]], dtype=np.uint16)
    img = load_image(encode(Image.fromarray(arr), "PNG"))
    assert img.mode == "RGB"
    assert np.asarray(img)[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_jpeg_becomes_rgb():
    img = load_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95))
    r, g, b = np.asarray(img).reshape(-1, 3).mean(axis=0)
    assert img.mode == "RGB"
    assert r > 220 and g < 40 and b < 40


def test_transparent_areas_become_white():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 5, 10))
    pixels = np.asarray(load_image(encode(rgba, "PNG")))
    assert (pixels[:, :5] == BLUE).all()
    assert (pixels[:, 5:] == 255).all()


def test_half_transparent_pixels_blend_with_white():
    pixels = np.asarray(load_image(Image.new("RGBA", (4, 4), (0, 0, 0, 128)))).astype(int)
    assert np.all(np.abs(pixels - 127) <= 1)


def test_greyscale_with_alpha_becomes_rgb_on_white():
    la = Image.new("LA", (4, 4), (0, 0))
    assert (np.asarray(load_image(la)) == 255).all()


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_image_with_transparent_index(fmt):
    pal = Image.new("P", (6, 6), 0)
    pal.putpalette([0, 0, 0] + [255, 0, 0] + [0, 0, 0] * 254)
    pal.paste(1, (0, 0, 3, 6))
    data = encode(pal, fmt, transparency=0)
    pixels = np.asarray(load_image(data))
    assert (pixels[:, :3] == RED).all()
    assert (pixels[:, 3:] == 255).all()


def test_palette_image_without_transparency():
    pal = Image.new("RGB", (6, 6), BLUE).convert("P")
    assert (np.asarray(load_image(pal)) == BLUE).all()


def test_path_str_pathlike_bytes_and_pil_inputs_agree(tmp_path):
    original = Image.new("RGB", (30, 20), (10, 200, 30))
    path = tmp_path / "photo.png"
    original.save(path)
    data = path.read_bytes()
    results = [
        to_square(str(path), 40),
        to_square(path, 40),
        to_square(data, 40),
        to_square(bytearray(data), 40),
        to_square(memoryview(data), 40),
        to_square(original, 40),
    ]
    for r in results[1:]:
        assert np.array_equal(r, results[0])


def test_load_image_returns_an_independent_rgb_copy():
    original = Image.new("RGB", (5, 5), RED)
    loaded = load_image(original)
    loaded.putpixel((0, 0), BLUE)
    assert original.getpixel((0, 0)) == RED


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_image(tmp_path / "nope.jpg")


@pytest.mark.parametrize(
    "data", [b"", b"definitely not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 20]
)
def test_undecodable_bytes_raise_value_error(data):
    with pytest.raises(ValueError, match="cannot decode"):
        load_image(data)


def test_truncated_jpeg_raises_value_error():
    data = encode(Image.new("RGB", (64, 64), RED), "JPEG")
    with pytest.raises(ValueError, match="cannot decode"):
        load_image(data[: len(data) // 2])


def test_undecodable_file_names_the_file(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="broken.jpg"):
        load_image(path)


@pytest.mark.parametrize("bad", [42, None, 3.5, ["a.jpg"]])
def test_unsupported_source_types_raise_type_error(bad):
    with pytest.raises(TypeError, match="expected a path, bytes, a PIL image or a uint8 array"):
        load_image(bad)


def test_uint8_arrays_are_images_too():
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)
    rgba[:, :3] = (255, 0, 0, 255)
    pixels = np.asarray(load_image(rgba))
    assert (pixels[:, :3] == RED).all() and (pixels[:, 3:] == 255).all()
    assert np.asarray(load_image(np.full((3, 3), 9, np.uint8))).tolist() == [[[9] * 3] * 3] * 3


@pytest.mark.parametrize(
    "arr",
    [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 2), np.uint8), np.zeros((0, 4, 3), np.uint8)],
)
def test_bad_arrays_raise_value_error(arr):
    with pytest.raises(ValueError, match="array"):
        load_image(arr)


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_to_square_rejects_bad_sizes(size):
    with pytest.raises(ValueError, match="size"):
        to_square(Image.new("RGB", (4, 4)), size)


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    size=st.integers(1, 96),
)
def test_any_image_gives_exact_shape_with_content_centred(width, height, size):
    square = to_square(Image.new("RGB", (width, height), (0, 0, 0)), size)
    assert square.shape == (size, size, 3) and square.dtype == np.uint8
    dark = square[:, :, 0] < 128
    rows = np.flatnonzero(dark.any(axis=1))
    cols = np.flatnonzero(dark.any(axis=0))
    assert rows.size and cols.size
    # The longer side fills the square, the shorter side is centred within a pixel.
    assert max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) == size
    assert abs(rows[0] - (size - 1 - rows[-1])) <= 1
    assert abs(cols[0] - (size - 1 - cols[-1])) <= 1
    # Everything outside the content box is white padding.
    outside = np.ones((size, size), dtype=bool)
    outside[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = False
    assert (square[outside] == 255).all()


def test_batch_to_square_stacks_mixed_sources(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (10, 20), RED).save(path)
    batch = batch_to_square([path, encode(Image.new("L", (20, 10), 0), "PNG")], 16)
    assert batch.shape == (2, 16, 16, 3) and batch.dtype == np.uint8
    assert (batch[0, :, 8] == RED).all()
    assert (batch[1, 8, :] == 0).all()
    assert batch_to_square([], 16).shape == (0, 16, 16, 3)


def test_batch_to_square_rejects_a_single_image():
    with pytest.raises(TypeError, match="wrap a single image in a list"):
        batch_to_square(Image.new("RGB", (4, 4)), 8)


def test_iter_square_batches_splits_and_resizes_arrays():
    arrays = np.zeros((7, 20, 10, 3), dtype=np.uint8)
    batches = list(iter_square_batches(arrays, 8, batch_size=3))
    assert [b.shape for b in batches] == [(3, 8, 8, 3), (3, 8, 8, 3), (1, 8, 8, 3)]
    assert (batches[0][:, :, :2] == 255).all() and (batches[0][:, :, 2:6] == 0).all()


@pytest.mark.parametrize(
    ("images", "batch_size", "message"),
    [
        ([], 4, "empty"),
        (np.zeros((0, 8, 8, 3), np.uint8), 4, "empty"),
        (np.zeros((2, 8, 8, 3), np.float32), 4, "uint8"),
        (np.zeros((2, 8, 8), np.uint8), 4, r"\[n, height, width, 3\]"),
        (np.zeros((2, 8, 8, 4), np.uint8), 4, r"\[n, height, width, 3\]"),
        ("photo.jpg", 4, "wrap a single image"),
        ([b"x"], 0, "batch_size"),
        ([b"x"], 2.0, "batch_size"),
    ],
)
def test_iter_square_batches_rejects_bad_input(images, batch_size, message):
    with pytest.raises(ValueError, match=message):
        list(iter_square_batches(images, 8, batch_size))
