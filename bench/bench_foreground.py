"""The foreground step of photo search: its time per photo and how well it finds the product.

Makes wild photos (``ml.wild``, seed 0) of catalogue products, reads each at the size photo
search reads an upload (JPEG draft, then the longer side shrunk to ``--size``: the backbone's
input), and times ``ml.foreground.estimate`` and the whole ``prepare_query`` one photo at a
time. Accuracy is the IoU of the estimated box with the box the product was pasted at,
against the trivial answer (the whole photo), overall and per kind of background.

    python bench/bench_foreground.py --n 200
    python bench/bench_foreground.py --wild /tmp/wild   # a folder from make_wild_queries.py
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ml.foreground import box_iou, estimate, prepare_query  # noqa: E402
from ml.preprocess import load_image  # noqa: E402
from ml.provenance import git_commit, machine  # noqa: E402
from ml.wild import make_wild  # noqa: E402

DEFAULT_CATALOG = REPO_ROOT.parent / "shared" / "data" / "fashion-small"
WHOLE = (0.0, 0.0, 1.0, 1.0)


def made_photos(catalog: Path, n: int) -> list[tuple[bytes, tuple, str]]:
    """n wild photos of catalogue products spread over styles.csv: (JPEG, box, background)."""
    with (catalog / "styles.csv").open(newline="", encoding="utf-8", errors="replace") as fh:
        ids = [row["id"] for row in csv.DictReader(fh)]
    ids = [i for i in ids if (catalog / "images" / f"{i}.jpg").is_file()]
    step = max(1, len(ids) // n)
    out = []
    for pid in ids[::step][:n]:
        wild = make_wild(catalog / "images" / f"{pid}.jpg", (0, int(pid)))
        out.append((wild.jpeg, wild.box, wild.recipe["background"]))
    return out


def folder_photos(folder: Path, n: int) -> list[tuple[bytes, tuple, str]]:
    """The first n photos of a make_wild_queries.py folder with their boxes."""
    out = []
    with (folder / "boxes.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            box = tuple(float(row[k]) for k in ("x", "y", "w", "h"))
            recipe = json.loads(row["recipe"])
            kind = recipe.get("background") or recipe.get("scene", "?")  # ml.wild or other
            out.append(((folder / "images" / f"{row['id']}.jpg").read_bytes(), box, kind))
            if len(out) == n:
                break
    return out


def as_read(data: bytes, size: int) -> Image.Image:
    """A photo decoded as photo search reads an upload: JPEG draft, longer side <= size."""
    with Image.open(io.BytesIO(data)) as im:
        if im.format == "JPEG" and max(im.size) > size:
            im.draft("RGB", (size, size))
        image = load_image(im)
    if max(image.size) > size:
        image.thumbnail((size, size), Image.Resampling.BICUBIC)
    return image


def ms(seconds: list[float]) -> str:
    """p50 / p95 in milliseconds."""
    a = 1000 * np.asarray(seconds)
    return f"p50 {np.percentile(a, 50):.2f} ms, p95 {np.percentile(a, 95):.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="photos")
    parser.add_argument("--size", type=int, default=160, help="longer side photos are read at")
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    parser.add_argument("--wild", type=Path, help="a make_wild_queries.py folder instead")
    args = parser.parse_args()
    m = machine()
    print(
        f"machine: {m['host']} | {m['cpu']} | {m['cores']} cores | load {m['load_average']} | "
        f"python {m['python']} | commit {git_commit()}"
    )
    photos = folder_photos(args.wild, args.n) if args.wild else made_photos(args.catalog, args.n)
    images = [as_read(data, args.size) for data, _, _ in photos]
    estimate(images[0])  # first call: OpenCV's lazy set-up
    step, whole, found, ours, trivial, kinds = [], [], 0, [], [], {}
    for image, (_, box, kind) in zip(images, photos, strict=True):
        t0 = time.perf_counter()
        result = estimate(image)
        t1 = time.perf_counter()
        prepare_query(image)
        t2 = time.perf_counter()
        step.append(t1 - t0)
        whole.append(t2 - t1)
        found += result.found
        ours.append(box_iou(result.box, box))
        trivial.append(box_iou(WHOLE, box))
        kinds.setdefault(kind, []).append(ours[-1])
    ours_a, trivial_a = np.asarray(ours), np.asarray(trivial)
    print(
        f"{len(images)} wild photos read at {args.size} px; load after {machine()['load_average']}"
    )
    print(f"  estimate():      {ms(step)}")
    print(f"  prepare_query(): {ms(whole)}")
    print(f"  product found in {100 * found / len(images):.1f} % of photos")
    print(
        f"  box IoU vs the pasted box: ours mean {ours_a.mean():.3f}, median "
        f"{np.median(ours_a):.3f}, > 0.7 in {100 * (ours_a > 0.7).mean():.1f} %; whole photo "
        f"mean {trivial_a.mean():.3f}, > 0.7 in {100 * (trivial_a > 0.7).mean():.1f} %"
    )
    per_kind = ", ".join(f"{k} {np.mean(v):.2f} ({len(v)})" for k, v in sorted(kinds.items()))
    print(f"  mean IoU per background: {per_kind}")


if __name__ == "__main__":
    main()
