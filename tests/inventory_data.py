"""Test data for the inventory tests: a Kaggle-style styles.csv and a ZIP of small photos."""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

HEADER = [
    "id",
    "gender",
    "masterCategory",
    "subCategory",
    "articleType",
    "baseColour",
    "season",
    "year",
    "usage",
    "productDisplayName",
]
RGB = {
    "Red": (200, 30, 30),
    "Blue": (30, 30, 200),
    "Green": (30, 160, 40),
    "Black": (15, 15, 15),
    "Yellow": (230, 210, 30),
}


def photo_bytes(colour: str, seed: int, quality: int = 90) -> bytes:
    """A 60x80 product-like JPEG: a coloured block at a seeded place, a little noise."""
    rng = np.random.default_rng(seed)
    arr = np.full((80, 60, 3), 250.0)
    top, left = int(rng.integers(3, 25)), int(rng.integers(3, 20))
    height, width = int(rng.integers(30, 50)), int(rng.integers(20, 35))
    # A shaded garment: the colour darkens towards the bottom, like a photo's lighting.
    shade = np.linspace(1.0, 0.6, height)[:, None, None]
    arr[top : top + height, left : left + width] = np.asarray(RGB[colour]) * shade
    arr[top + height // 3, left : left + width] *= 0.5  # a seam
    arr = np.clip(arr + rng.normal(0, 2, arr.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def reencoded(data: bytes, quality: int = 90) -> bytes:
    """The same picture saved again at another JPEG quality (different bytes)."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@dataclass
class Upload:
    """A generated bulk import and what a correct import of it must give."""

    csv_bytes: bytes
    zip_bytes: bytes
    good: list[int] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # id as written -> reason fragment
    ignored: dict[str, str] = field(default_factory=dict)  # ZIP member -> reason fragment
    exact: dict[int, int] = field(default_factory=dict)  # new id -> catalogue id
    perceptual: dict[int, int] = field(default_factory=dict)


def build_upload(
    count: int, *, first_id: int = 20000, copies_of: dict[int, bytes] | None = None
) -> Upload:
    """``count`` good rows plus a few of every kind of bad row and stray file.

    ``copies_of`` maps catalogue ids to their photo bytes: the first becomes a byte-identical
    re-upload under a new id, the second a re-encoded one.
    """
    up = Upload(b"", b"")
    rows: list[list[object]] = []
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w", zipfile.ZIP_DEFLATED) as zf:
        colours = list(RGB)
        for i in range(count):
            pid = first_id + i
            colour = colours[i % len(colours)]
            rows.append(
                [
                    pid,
                    "Men",
                    "Apparel",
                    "Topwear",
                    "Shirts",
                    colour,
                    "Summer",
                    2012,
                    "Casual",
                    f"Shirt {pid}, {colour.lower()}",
                ]
            )
            zf.writestr(f"images/{pid}.jpg", photo_bytes(colour, pid))
            up.good.append(pid)
        pid = first_id + count
        for catalogue_id, data in list((copies_of or {}).items())[:2]:
            rows.append(
                [
                    pid,
                    "Men",
                    "Apparel",
                    "Topwear",
                    "Shirts",
                    "Red",
                    "Summer",
                    2012,
                    "Casual",
                    f"Copy of {catalogue_id}",
                ]
            )
            if not up.exact:
                zf.writestr(f"images/{pid}.jpg", data)
                up.exact[pid] = catalogue_id
            else:
                zf.writestr(f"images/{pid}.jpg", reencoded(data))
                up.perceptual[pid] = catalogue_id
            up.good.append(pid)
            pid += 1
        # Bad rows: no photo, a bad year, a repeated id, a photo that is not an image.
        rows.append(
            [
                pid,
                "Men",
                "Apparel",
                "Topwear",
                "Shirts",
                "Red",
                "Summer",
                2012,
                "Casual",
                "No photo",
            ]
        )
        up.skipped[str(pid)] = "image missing"
        pid += 1
        rows.append(
            [
                pid,
                "Men",
                "Apparel",
                "Topwear",
                "Shirts",
                "Red",
                "Summer",
                "twelve",
                "Casual",
                "Bad year",
            ]
        )
        zf.writestr(f"images/{pid}.jpg", photo_bytes("Red", pid))
        up.skipped[str(pid)] = "invalid year"
        pid += 1
        rows.append(
            [
                first_id,
                "Men",
                "Apparel",
                "Topwear",
                "Shirts",
                "Red",
                "Summer",
                2012,
                "Casual",
                "Repeated id",
            ]
        )
        up.skipped[str(first_id)] = "duplicate id"
        rows.append(
            [
                pid,
                "Men",
                "Apparel",
                "Topwear",
                "Shirts",
                "Red",
                "Summer",
                2012,
                "Casual",
                "Text photo",
            ]
        )
        zf.writestr(f"images/{pid}.jpg", b"this is not a photo")
        up.skipped[str(pid)] = "image unreadable"
        pid += 1
        # Stray files: a note, a PNG name, a photo whose id has no row.
        zf.writestr("notes.txt", "hello")
        up.ignored["notes.txt"] = "not a product photo"
        zf.writestr("images/extra.png", b"x")
        up.ignored["images/extra.png"] = "only JPEG photos"
        zf.writestr(f"images/{pid + 50}.jpg", photo_bytes("Blue", pid + 50))
        up.ignored[f"images/{pid + 50}.jpg"] = "no row in styles.csv"
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(HEADER)
    writer.writerows(rows)
    # As downloaded from Kaggle: a byte-order mark, CRLF, names with unquoted commas.
    up.csv_bytes = ("\ufeff" + text.getvalue().replace('"', "")).encode()
    up.zip_bytes = zbuf.getvalue()
    return up
