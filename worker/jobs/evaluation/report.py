"""What is stored with every evaluation (the command that reproduces it, the code's commit,
the machine) and storing it where the Quality page reads it."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ml import evaluation as ev
from webapp.quality.services import RESULT_VERSION, evaluations_folder
from worker.jobs.evaluation.catalogue import Catalogue
from worker.jobs.evaluation.options import Options, colour_first

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def machine() -> dict[str, Any]:
    """What the evaluation ran on (timings mean little without it)."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average": load,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def commit() -> str:
    """The code's git commit (``+dirty`` when files differ from it), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+dirty" if dirty else "")) if head else "unknown"


def command_line(opts: Options) -> str:
    """The command that reproduces a run."""
    words = ["flask --app wsgi model evaluate", f"--model {opts.network or opts.model_id}"]
    words += [f"--head {h}" for h in opts.heads]
    if opts.queries:
        words.append(f"--queries {opts.queries}")
    elif opts.split:
        words.append(f"--split {opts.split:g} --seed {opts.seed}")
    elif opts.min_type_count != ev.REFERENCE_MIN_TYPE_COUNT:
        words.append(f"--min-type-count {opts.min_type_count}")
    if opts.k != 10:
        words.append(f"--k {opts.k}")
    if "colour" in opts.heads and opts.colour_weight != 0.3:
        words.append(f"--colour-weight {opts.colour_weight:g}")
    if opts.classifier != "heads":
        words.append(f"--classifier {opts.classifier}")
    if opts.split or opts.queries:  # leave-one-out ranks product pages: no photo-search rules
        words.append("--colour-first" if colour_first(opts) else "--no-colour-first")
    return " ".join(words)


def header(opts: Options, cat: Catalogue) -> dict[str, Any]:
    """Run metadata stored with every result."""
    return {
        "command": command_line(opts),
        "version": RESULT_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": machine(),
        "base_model": cat.model_id,
        "catalogue_products": int(len(cat.ids)),
        "options": {
            "k": opts.k,
            "heads": list(opts.heads),
            "min_type_count": opts.min_type_count if not (opts.split or opts.queries) else None,
            "split": opts.split,
            "seed": opts.seed,
            "queries": opts.queries,
            "colour_weight": opts.colour_weight,
            "classifier": opts.classifier,
            "colour_first": colour_first(opts),
            "network": opts.network,
        },
        "reference": {"name": ev.REFERENCE_NAME, "table": ev.REFERENCE_TABLE},
    }


def save_result(result: dict[str, Any], extra_path: str | None = None, store: bool = True) -> Path:
    """Store a result as the latest of its kind (unless ``store`` is false) and, when given,
    at ``extra_path``; returns where it went."""
    text = json.dumps(_json_safe(result), indent=2)
    targets: list[Path] = []
    if store:
        folder = evaluations_folder(result["base_model"])
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        targets += [
            folder / f"{result['kind']}-{stamp}.json",
            folder / f"latest-{result['kind']}.json",
        ]
    if extra_path:
        targets.append(Path(extra_path))
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, target)
    return targets[0]


def _json_safe(value: Any) -> Any:
    """Plain JSON values: NumPy numbers as Python's, floats rounded, NaN as null."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        f = float(value)
        return None if f != f else round(f, 6)
    return value
