"""Upload validation and storage (webapp.uploads), without an app."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib

import pytest
from PIL import Image
from werkzeug.datastructures import FileStorage

from tests.conftest import make_image_bytes
from webapp import uploads
from webapp.uploads import (
    InvalidImage,
    remove_stored_image,
    store_image,
    validate_image,
)

MAX = 1_000_000


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""
    data = bytearray(make_image_bytes("PNG", size=(1, 1)))
    # IHDR: length (4) at 8, type (4) at 12, width/height at 16..24, CRC over type+data at 29.
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def animated(fmt: str) -> bytes:
    """A two-frame animated image."""
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=100)
    return buf.getvalue()


def noisy_jpeg(size=(200, 200)) -> bytes:
    """A JPEG with enough entropy that cutting it in half loses real image data."""
    img = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize(("fmt", "ext"), [("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp")])
def test_accepts_still_images_and_reports_what_it_found(fmt, ext):
    data = make_image_bytes(fmt, size=(60, 80))
    image = validate_image(data, max_pixels=MAX)
    assert image.format == fmt
    assert (image.width, image.height) == (60, 80)
    assert image.extension == ext
    assert image.mimetype == f"image/{ext[1:].replace('jpg', 'jpeg')}"
    assert image.sha256 == hashlib.sha256(data).hexdigest()
    assert image.data == data


def test_reads_file_storage_and_keeps_the_name_as_metadata_only():
    data = make_image_bytes("PNG")
    upload = FileStorage(io.BytesIO(data), filename="../../etc/holiday photo.jpg")
    image = validate_image(upload, max_pixels=MAX)
    assert image.original_filename == "../../etc/holiday photo.jpg"
    # The content decides the type, not the name.
    assert image.format == "PNG"
    assert image.extension == ".png"


def test_reads_binary_file_objects():
    image = validate_image(io.BytesIO(make_image_bytes("JPEG")), max_pixels=MAX)
    assert image.format == "JPEG"


def test_rejects_an_empty_file():
    with pytest.raises(InvalidImage, match="empty"):
        validate_image(FileStorage(io.BytesIO(b""), filename="x.jpg"), max_pixels=MAX)


@pytest.mark.parametrize(
    "data",
    [
        b"hello, this is plain text pretending to be a photo",
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
        make_image_bytes("GIF"),
        make_image_bytes("BMP"),
        make_image_bytes("TIFF"),
    ],
    ids=["text", "pdf", "gif", "bmp", "tiff"],
)
def test_rejects_content_that_is_not_jpeg_png_or_webp(data):
    with pytest.raises(InvalidImage) as info:
        validate_image(FileStorage(io.BytesIO(data), filename="photo.jpg"), max_pixels=MAX)
    assert info.value.message == uploads.NOT_AN_IMAGE


def test_rejects_a_truncated_jpeg():
    data = noisy_jpeg()
    with pytest.raises(InvalidImage, match="incomplete|truncated"):
        validate_image(data[: len(data) // 2], max_pixels=MAX)


def test_rejects_a_truncated_png():
    img = Image.frombytes("RGB", (100, 100), os.urandom(100 * 100 * 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = buf.getvalue()
    with pytest.raises(InvalidImage):
        validate_image(data[: len(data) // 2], max_pixels=MAX)


def test_rejects_a_png_with_a_damaged_chunk():
    data = bytearray(make_image_bytes("PNG", size=(30, 30)))
    idat = data.index(b"IDAT")
    data[idat + 6] ^= 0xFF  # flip bits inside the compressed pixels: the CRC no longer matches
    with pytest.raises(InvalidImage):
        validate_image(bytes(data), max_pixels=MAX)


def test_refuses_images_above_the_pixel_limit_before_decoding():
    data = make_image_bytes("PNG", size=(200, 100))
    with pytest.raises(InvalidImage, match=r"too large \(200 x 100 pixels\).*10,000 pixels"):
        validate_image(data, max_pixels=10_000)
    # Exactly at the limit is fine.
    assert validate_image(data, max_pixels=20_000).width == 200


@pytest.mark.parametrize("max_pixels", [40_000_000, 500_000_000])
def test_refuses_a_decompression_bomb_with_a_clear_message(max_pixels):
    # 30000 x 30000 = 900 megapixels in a file of ~70 bytes. With a limit above Pillow's own
    # guard, Pillow's DecompressionBombError is what fires; either way the message is clear.
    bomb = png_declaring(30_000, 30_000)
    assert len(bomb) < 200
    with pytest.raises(InvalidImage, match="too large"):
        validate_image(bomb, max_pixels=max_pixels)


@pytest.mark.parametrize("fmt", ["WEBP", "PNG"])
def test_refuses_animated_images(fmt):
    data = animated(fmt)
    with Image.open(io.BytesIO(data)) as img:  # the fixture really is animated
        assert img.n_frames == 2
    with pytest.raises(InvalidImage, match="Animated"):
        validate_image(data, max_pixels=MAX)


def test_accepts_multi_picture_jpegs_from_cameras_as_jpeg():
    first, second = Image.new("RGB", (40, 30), "red"), Image.new("RGB", (40, 30), "blue")
    buf = io.BytesIO()
    first.save(buf, format="MPO", save_all=True, append_images=[second])
    image = validate_image(buf.getvalue(), max_pixels=MAX)
    assert image.format == "JPEG"
    assert image.extension == ".jpg"


def test_bad_arguments_are_programming_errors():
    with pytest.raises(ValueError, match="max_pixels"):
        validate_image(make_image_bytes(), max_pixels=0)
    with pytest.raises(TypeError):
        validate_image("not bytes", max_pixels=MAX)  # type: ignore[arg-type]


def test_store_image_writes_atomically_under_a_generated_name(tmp_path):
    data = make_image_bytes("WEBP")
    image = validate_image(FileStorage(io.BytesIO(data), filename="evil name.php"), max_pixels=MAX)
    first = store_image(image, str(tmp_path), "products")
    second = store_image(image, str(tmp_path), "products")
    assert first != second
    for relative in (first, second):
        folder, name = relative.split("/")
        assert folder == "products"
        stem, ext = os.path.splitext(name)
        assert ext == ".webp"
        assert len(stem) == 32 and int(stem, 16) >= 0  # uuid4 hex, nothing from the upload
        assert (tmp_path / relative).read_bytes() == data
    # No temporary files are left beside the stored ones.
    assert sorted(os.listdir(tmp_path / "products")) == sorted(
        [first.split("/")[1], second.split("/")[1]]
    )


def test_store_image_leaves_nothing_behind_when_the_write_fails(tmp_path, monkeypatch):
    image = validate_image(make_image_bytes(), max_pixels=MAX)

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(uploads.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        store_image(image, str(tmp_path), "products")
    assert os.listdir(tmp_path / "products") == []


@pytest.mark.parametrize("subdir", ["", "/abs", "../outside", "a/../../b"])
def test_store_image_refuses_subfolders_outside_media(tmp_path, subdir):
    image = validate_image(make_image_bytes(), max_pixels=MAX)
    with pytest.raises(ValueError, match="subfolder"):
        store_image(image, str(tmp_path / "media"), subdir)
    assert not (tmp_path / "outside").exists()


def test_remove_stored_image_only_touches_files_inside_media(tmp_path):
    media = tmp_path / "media"
    (media / "products").mkdir(parents=True)
    stored = media / "products" / "a.jpg"
    stored.write_bytes(b"x")
    catalogue = tmp_path / "catalogue" / "images" / "1163.jpg"
    catalogue.parent.mkdir(parents=True)
    catalogue.write_bytes(b"catalogue photo")

    assert remove_stored_image(str(catalogue), str(media)) is False  # absolute: read in place
    assert remove_stored_image("../catalogue/images/1163.jpg", str(media)) is False
    assert remove_stored_image("", str(media)) is False
    assert catalogue.read_bytes() == b"catalogue photo"

    assert remove_stored_image("products/a.jpg", str(media)) is True
    assert not stored.exists()
    assert remove_stored_image("products/a.jpg", str(media)) is False  # already gone
