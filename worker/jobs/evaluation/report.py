"""What is stored with every evaluation (the command that reproduces it, the code's commit,
the machine) and storing it where the Quality page reads it."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ml import evaluation as ev
from ml.provenance import git_commit, machine
from webapp.quality.services import RESULT_VERSION, evaluations_folder
from worker.jobs.evaluation.catalogue import Catalogue
from worker.jobs.evaluation.options import WILD_GENERATED, Options, colour_first


def command_line(opts: Options) -> str:
    """The command that reproduces a run."""
    words = ["flask --app wsgi model evaluate", f"--model {opts.network or opts.model_id}"]
    words += [f"--head {h}" for h in opts.heads]
    if opts.queries:
        words.append(f"--queries {opts.queries}")
    elif opts.protocol:
        words.append(f"--protocol {opts.protocol}")
    elif opts.split:
        words.append(f"--split {opts.split:g} --seed {opts.seed}")
        if opts.wild:
            words.append("--wild" if opts.wild == WILD_GENERATED else f"--wild {opts.wild}")
    elif opts.min_type_count != ev.REFERENCE_MIN_TYPE_COUNT:
        words.append(f"--min-type-count {opts.min_type_count}")
    if opts.k != 10:
        words.append(f"--k {opts.k}")
    if "colour" in opts.heads and opts.colour_weight != 0.3:
        words.append(f"--colour-weight {opts.colour_weight:g}")
    if opts.classifier != "heads":
        words.append(f"--classifier {opts.classifier}")
    if opts.searches_photos:  # leave-one-out ranks product pages: no photo-search rules
        words.append("--colour-first" if colour_first(opts) else "--no-colour-first")
    return " ".join(words)


def header(opts: Options, cat: Catalogue) -> dict[str, Any]:
    """Run metadata stored with every result."""
    return {
        "command": command_line(opts),
        "version": RESULT_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine(),
        "base_model": cat.model_id,
        "catalogue_products": int(len(cat.ids)),
        "options": {
            "k": opts.k,
            "heads": list(opts.heads),
            "min_type_count": None if opts.searches_photos else opts.min_type_count,
            "split": opts.split,
            "seed": opts.seed,
            "queries": opts.queries,
            "colour_weight": opts.colour_weight,
            "classifier": opts.classifier,
            "colour_first": colour_first(opts),
            "network": opts.network,
            "wild": opts.wild,
            "protocol": opts.protocol,
            "foreground": opts.foreground if opts.wild else None,
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
