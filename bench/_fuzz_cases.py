"""The hostile inputs of ``bench_fuzz.py``: image files, ZIPs, CSVs, and the requests that
carry them to each upload endpoint (``(endpoint, input kind, path, requests kwargs)``)."""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from collections.abc import Iterator

import numpy as np

# MAX_CONTENT_LENGTH and IMPORT_MAX_UPLOAD for the run: oversized bodies stay cheap.
MAX_BODY = 1024 * 1024
MAX_IMPORT = 2 * 1024 * 1024

CSV_HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
CSV_HEADER += "productDisplayName\n"
COLOURS = [
    (200, 30, 30),
    (30, 30, 200),
    (30, 160, 40),
    (15, 15, 15),
    (235, 235, 235),
    (230, 210, 30),
]


# -- payloads ---------------------------------------------------------------------------


def encode(img, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def photo(seed: int, size=(60, 80)) -> bytes:
    """A product-like JPEG: a coloured block placed by ``seed``, with noise, on white."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = np.full((size[1], size[0], 3), 255, np.uint8)
    top, left = rng.integers(5, 20), rng.integers(5, 15)
    arr[top : top + 50, left : left + 35] = COLOURS[seed % len(COLOURS)]
    arr = np.clip(arr.astype(int) + rng.integers(-10, 10, arr.shape), 0, 255).astype(np.uint8)
    return encode(Image.fromarray(arr), "JPEG", quality=90)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def grey_png(width: int, height: int) -> bytes:
    """A complete all-black grey PNG, compressed as far as zlib goes (a pixel bomb)."""
    raw = (b"\x00" + bytes(width)) * height
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(raw, 9))
        + png_chunk(b"IEND", b"")
    )


def noise_png() -> bytes:
    """A 120 x 120 PNG of noise: its pixel data does not compress, so a cut loses pixels."""
    from PIL import Image

    rng = np.random.default_rng(0)
    return encode(Image.fromarray(rng.integers(0, 255, (120, 120, 3), np.uint8)), "PNG")


def encrypted_zip(member: bytes) -> bytes:
    """A ZIP whose member claims to be encrypted (general-purpose flag bit 0)."""
    data = bytearray(zip_of([("9001.jpg", member)]))
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature) + flags_at
        data[at] |= 0x1
    return bytes(data)


def png_declaring(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height``."""
    from PIL import Image

    data = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims ``width`` x ``height``."""
    data = bytearray(photo(1))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def animated_gif() -> bytes:
    from PIL import Image

    frames = [Image.new("RGB", (40, 40), c) for c in COLOURS[:3]]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


def zip_of(members: list[tuple[str, bytes]], **info) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            entry = zipfile.ZipInfo(name)
            entry.compress_type = zipfile.ZIP_DEFLATED
            for key, value in info.items():
                setattr(entry, key, value)
            archive.writestr(entry, data)
    return buf.getvalue()


def overlapping_zip() -> bytes:
    """Two directory entries pointing at the same member data (a non-recursive bomb)."""
    data = zip_of([("1.jpg", bytes(200_000))])
    end = data.rfind(b"PK\x05\x06")
    central = data.find(b"PK\x01\x02")
    entry = data[central:end].replace(b"1.jpg", b"2.jpg")
    count = struct.pack("<HH", 2, 2)
    eocd = bytearray(data[end:])
    eocd[8:12] = count
    eocd[12:16] = struct.pack("<I", 2 * (end - central))
    return data[:end] + entry + bytes(eocd)


def build_payloads() -> dict[str, tuple[bytes, str, str]]:
    """Hostile image files: name -> (bytes, file name, content type)."""
    good = photo(7)
    return {
        "truncated-jpeg": (good[: len(good) // 2], "cut.jpg", "image/jpeg"),
        "truncated-png": (noise_png()[:-3000], "cut.png", "image/png"),
        "wrong-magic-text": (b"this is plain text, not a photo" * 10, "photo.jpg", "image/jpeg"),
        "png-magic-jpeg-body": (b"\x89PNG\r\n\x1a\n" + good[2:], "x.png", "image/png"),
        "html-as-image": (b"<html><script>alert(1)</script></html>", "x.jpg", "image/jpeg"),
        "zip-as-image": (zip_of([("1.jpg", good)]), "photo.jpg", "image/jpeg"),
        "exe-content-type": (good, "photo.exe", "application/x-msdownload"),
        "declared-30000x30000": (png_declaring(30_000, 30_000), "bomb.png", "image/png"),
        "strip-1x40M": (grey_png(40_000_000, 1), "strip.png", "image/png"),
        "strip-20000x1": (grey_png(20_000, 1), "strip.png", "image/png"),
        "bomb-8000x8000": (grey_png(8000, 8000), "bomb.png", "image/png"),
        "jpeg-65535x65535": (jpeg_declaring(65_535, 65_535), "big.jpg", "image/jpeg"),
        "animated-gif": (animated_gif(), "moving.gif", "image/gif"),
        "empty": (b"", "empty.jpg", "image/jpeg"),
        "nul-filename": (good, "pho\x00to.jpg", "image/jpeg"),
        "valid": (good, "photo.jpg", "image/jpeg"),
    }


def build_zips() -> dict[str, bytes]:
    """Hostile bulk-import archives."""
    good = photo(3)
    return {
        "zip-traversal": zip_of([("../../etc/9001.jpg", good)]),
        "zip-absolute": zip_of([("/tmp/9001.jpg", good)]),
        "zip-symlink": zip_of([("9001.jpg", b"/etc/passwd")], external_attr=0o120777 << 16),
        "zip-bomb": zip_of([("9001.jpg", bytes(60 * 1024 * 1024))]),
        "zip-overlap": overlapping_zip(),
        "zip-nul-name": zip_of([("9001\x00.jpg", good)]),
        "zip-truncated": zip_of([("9001.jpg", good)])[:-30],
        "zip-not-a-zip": b"PK\x03\x04 but nothing after it",
        "zip-encrypted": encrypted_zip(good),
    }


CSVS = {
    "csv-ok": CSV_HEADER + "9001,Men,Apparel,Topwear,Shirts,Red,Summer,2012,Casual,Fuzz\n",
    "csv-nul": CSV_HEADER + "9001,Men,Apparel,Topwear,Shirts,Red,Summer,2012,Casual,Fu\x00zz\n",
    "csv-wide": ",".join(f"c{i}" for i in range(5000)) + "\n1\n",
    "csv-long-line": CSV_HEADER + "9001," + "x" * 70_000 + "\n",
}


# -- requests ---------------------------------------------------------------------------

IMAGE_ENDPOINTS = {
    # name: (path, file fields, needs a CSRF token)
    "search page": ("/search/", ["image"], True),
    "search API": ("/api/search", ["image"], False),
    "compare page": ("/search/compare", ["image_1", "image_2"], True),
    "compare API": ("/api/compare", ["image_1", "image_2"], False),
    "admin create": ("/admin/products/new", ["image"], True),
}
IMPORT = "bulk import"
IMPORT_PATH = "/admin/inventory/imports/new"


def chunked(data: bytes) -> Iterator[bytes]:
    """A body sent without Content-Length (chunked transfer encoding)."""
    for start in range(0, len(data), 64 * 1024):
        yield data[start : start + 64 * 1024]


def image_cases(payloads, token: str) -> Iterator[tuple[str, str, str, dict]]:
    """(endpoint, case, path, requests kwargs) for every image endpoint x hostile input."""
    big = os.urandom(MAX_BODY + 200 * 1024)
    for endpoint, (path, fields, needs_token) in IMAGE_ENDPOINTS.items():
        base = {"csrf_token": token} if needs_token else {}
        if endpoint == "admin create":
            base["name"] = "Fuzz product"
        for case, (data, filename, ctype) in payloads.items():
            files = {f: (filename, data, ctype) for f in fields}
            if case == "valid" and endpoint == "admin create":
                continue  # valid admin creates are real products: not the point here
            yield endpoint, case, path, {"files": files, "data": base}
        one = {f: ("photo.jpg", payloads["valid"][0], "image/jpeg") for f in fields}
        many = {f"field{i}": "x" for i in range(10_000)}
        yield endpoint, "10000-form-parts", path, {"files": one, "data": {**base, **many}}
        yield endpoint, "oversized-body", path, {"files": {fields[0]: ("b.jpg", big)}, "data": base}
        yield (
            endpoint,
            "oversized-chunked",
            path,
            {
                "data": chunked(big),
                "headers": {"Content-Type": "multipart/form-data; boundary=xyz"},
            },
        )
        yield endpoint, "urlencoded-body", path, {"data": {**base, fields[0]: "not a file"}}
        yield endpoint, "json-body", path, {"json": {fields[0]: "aGVsbG8="}}
        yield endpoint, "no-content-type", path, {"data": b"\x00\x01\x02garbage"}
        yield (
            endpoint,
            "boundary-lies",
            path,
            {
                "data": b'--other\r\nContent-Disposition: form-data; name="image"\r\n\r\nx',
                "headers": {"Content-Type": "multipart/form-data; boundary=xyz"},
            },
        )
        yield endpoint, "missing-file", path, {"data": base}
        yield (
            endpoint,
            "nul-text-field",
            path,
            {
                "files": one,
                "data": {**base, "name": "Fu\x00zz", "gender": "M\x00en", "model": "a\x00b"},
            },
        )
        if needs_token:
            yield endpoint, "csrf-missing", path, {"files": one, "data": {"name": "x"}}
            yield (
                endpoint,
                "csrf-wrong",
                path,
                {
                    "files": one,
                    "data": {**base, "csrf_token": "forged" + token[6:]},
                },
            )


def model_cases(payloads) -> Iterator[tuple[str, str, str, dict]]:
    """Compares naming models the shop does not serve (the worker must build none)."""
    good = payloads["valid"][0]
    files = {f: ("p.jpg", good, "image/jpeg") for f in ("image_1", "image_2")}
    for model in ("efficientnet_lite0-57934424-1024-avg", "tiny-seed0-8-max", "../x", "x" * 4000):
        yield (
            "compare API",
            "unserved-model",
            "/api/compare",
            {
                "files": files,
                "data": {"model": model},
            },
        )


def import_cases(zips, token: str) -> Iterator[tuple[str, str, str, dict]]:
    """(endpoint, case, path, kwargs) for the bulk import form."""
    good_zip = zip_of([("9001.jpg", photo(3))])
    form = {"csrf_token": token}

    def files(csv: str, archive: bytes, csv_name="styles.csv", zip_name="photos.zip"):
        return {"styles": (csv_name, csv.encode()), "photos": (zip_name, archive)}

    for case, archive in zips.items():
        yield IMPORT, case, IMPORT_PATH, {"files": files(CSVS["csv-ok"], archive), "data": form}
    for case, csv in CSVS.items():
        if case != "csv-ok":
            yield IMPORT, case, IMPORT_PATH, {"files": files(csv, good_zip), "data": form}
    big = os.urandom(MAX_IMPORT + 100 * 1024)
    yield (
        IMPORT,
        "oversized-body",
        IMPORT_PATH,
        {
            "files": files(CSVS["csv-ok"], big),
            "data": form,
        },
    )
    many = {f"field{i}": "x" for i in range(10_000)}
    yield (
        IMPORT,
        "10000-form-parts",
        IMPORT_PATH,
        {
            "files": files(CSVS["csv-ok"], good_zip),
            "data": {**form, **many},
        },
    )
    yield IMPORT, "csrf-missing", IMPORT_PATH, {"files": files(CSVS["csv-ok"], good_zip)}
    yield (
        IMPORT,
        "csrf-wrong",
        IMPORT_PATH,
        {
            "files": files(CSVS["csv-ok"], good_zip),
            "data": {"csrf_token": "forged"},
        },
    )
    yield (
        IMPORT,
        "image-as-zip",
        IMPORT_PATH,
        {
            "files": files(CSVS["csv-ok"], photo(2)),
            "data": form,
        },
    )
    yield (
        IMPORT,
        "nul-file-names",
        IMPORT_PATH,
        {
            "files": files(CSVS["csv-ok"], good_zip, "sty\x00les.csv", "ph\x00otos.zip"),
            "data": form,
        },
    )
