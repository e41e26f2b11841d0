"""The stages of a catalogue-wide build, how far each has got, and the time left.

The worker records, in the task's PROGRESS state, the job's plan of stages, the stage in
progress with its start time and the count it started from, and the seconds each finished
stage took (``StageClock``). Readers (the index status panel, ``flask catalog index-status``)
estimate the time left from that state alone (``time_left``):

- the stage in progress: from the rate observed so far in it;
- a stage not started yet, one that has not counted anything yet, or one counted in uneven
  steps: from the rate its last complete run observed (kept in Redis per kind of job and stage, copied into the state when
  the job starts), scaled to this catalogue's size;
- a stage never measured on this install: no figure; the total then says "at least" and
  names the stages it leaves out.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from webapp.extensions import get_redis

logger = logging.getLogger(__name__)

# Redis hash of the last complete run of each stage: field -> JSON {seconds, units, rows}.
HISTORY_KEY = "stage-history"
# Stages that do the same work whatever job runs them share one history entry: the lists
# built after the plain index predict the lists built after tuning.
SHARED_WORK = {"neighbours"}
# What a stage counts when it is not products; epochs take longer on a larger catalogue,
# steps do not (and differ too much from each other to extrapolate from the first).
UNITS = {"training": "epochs", "thresholds": "steps"}
STAGE_LABELS = {
    "maps": "feature maps",
    "colours": "colour descriptors",
    "shoppers": "shopper-like views",
    "training": "training",
    "embedding": "embeddings",
    "thresholds": "thresholds",
    "neighbours": "neighbour lists",
    "hashing": "perceptual hashes",
}
JOB_LABELS = {
    "index": "embedding and lists",
    "tuning": "tuning the backbone",
    "neighbours": "neighbour lists",
    "hashing": "hashing photos",
}
LOG_EVERY_PCT = 5


def history_field(job: str, stage: str) -> str:
    """The history entry a stage of a job reads and writes."""
    return stage if stage in SHARED_WORK else f"{job}:{stage}"


def load_history(job: str, plan: Sequence[str]) -> dict[str, dict[str, float]]:
    """The last complete run of each stage of ``plan`` that was ever measured, by stage."""
    fields = [history_field(job, stage) for stage in plan]
    raw = get_redis().hmget(HISTORY_KEY, fields)
    found = {}
    for stage, value in zip(plan, raw, strict=True):
        if value:
            try:
                found[stage] = json.loads(value)
            except ValueError:
                logger.warning("unreadable stage history for %s: %r", stage, value)
    return found


def save_history(job: str, stage: str, entry: dict[str, float]) -> None:
    """Remember a complete run of a stage for the estimates of later jobs."""
    get_redis().hset(HISTORY_KEY, history_field(job, stage), json.dumps(entry))


class StageClock:
    """``progress_for(stage)`` callbacks of one job run that record a PROGRESS state with
    the timings readers need (at most every ``every`` seconds, and at every stage change)."""

    def __init__(
        self,
        job: str,
        plan: Sequence[str],
        record: Callable[[dict[str, Any]], None],
        *,
        history: dict[str, dict[str, float]] | None = None,
        remember: Callable[[str, dict[str, float]], None] | None = None,
        clock: Callable[[], float] = time.time,
        every: float = 1.0,
    ) -> None:
        self.record = record
        self.remember = remember
        self.clock = clock
        self.every = every
        self.meta: dict[str, Any] = {
            "job": job,
            "plan": list(plan),
            "started": clock(),
            "finished": {},
            "history": dict(history or {}),
            "rows": None,
        }
        self.last_record = float("-inf")
        self.last_pct = -LOG_EVERY_PCT

    def progress_for(self, stage: str) -> Callable[[int, int], None]:
        """The progress callback of one stage: ``report(done, total)``."""

        def report(done: int, total: int) -> None:
            self.update(stage, done, total)

        return report

    def update(self, stage: str, done: int, total: int) -> None:
        """Record that ``stage`` has ``done`` of ``total``; a new stage closes the previous."""
        now = self.clock()
        meta = self.meta
        # A new stage, or the same one started over (its count went back), closes the last.
        if meta.get("stage") != stage or done < meta["done"]:
            self._close(now)
            meta.update(stage=stage, stage_started=now, stage_done0=done)
            if meta["rows"] is None and UNITS.get(stage, "products") == "products":
                meta["rows"] = total
            self.last_record, self.last_pct = float("-inf"), -LOG_EVERY_PCT
        meta.update(done=done, total=total, updated=now)
        pct = int(100 * done / total) if total else 100
        if now - self.last_record >= self.every or done >= total:
            self.record({**meta, "finished": dict(meta["finished"])})
            self.last_record = now
        if pct >= self.last_pct + LOG_EVERY_PCT or done >= total:
            left = time_left(meta, now)
            tail = _log_tail(left) if done < total else ""
            logger.info("%s: %d/%d (%d%%)%s", stage, done, total, pct, tail)
            self.last_pct = pct

    def finish(self) -> dict[str, float]:
        """Close the last stage (call when the job returns); the seconds of every stage."""
        self._close(self.clock())
        return dict(self.meta["finished"])

    def _close(self, now: float) -> None:
        """The stage in progress has ended: keep its duration, and its rate for later runs."""
        meta = self.meta
        stage = meta.pop("stage", None)
        if stage is None:
            return
        seconds = now - meta["stage_started"]
        units = meta["done"] - meta["stage_done0"]
        meta["finished"][stage] = round(seconds, 1)
        logger.info(
            "%s: stage done in %.1f s (%d of %d %s counted)",
            stage,
            seconds,
            units,
            meta["total"],
            UNITS.get(stage, "products"),
        )
        if units > 0 and self.remember:
            entry = {"seconds": round(seconds, 3), "units": units, "rows": meta["rows"]}
            try:
                self.remember(stage, entry)
            except Exception as exc:  # an estimate for later runs is not worth failing a job
                logger.warning("stage history of %s not saved: %s", stage, exc)


@dataclass
class TimeLeft:
    """Seconds left in the stage in progress and in the whole job (None: not known yet);
    ``unmeasured``: stages (the current one included) the total leaves out."""

    stage: float | None
    total: float | None
    unmeasured: list[str] = field(default_factory=list)
    stage_from_history: bool = False


def _from_history(meta: dict[str, Any], stage: str, units_left: float | None) -> float | None:
    """Seconds a stage takes at the rate of its last run (None when it never ran)."""
    past = meta.get("history", {}).get(stage)
    if not past or not past.get("units"):
        return None
    per_unit = past["seconds"] / past["units"]
    kind = UNITS.get(stage, "products")
    rows, past_rows = meta.get("rows"), past.get("rows")
    if units_left is None:
        units_left = rows if kind == "products" and rows else past["units"]
    if kind == "epochs" and rows and past_rows:
        per_unit *= rows / past_rows
    return per_unit * units_left


def _current_stage_left(meta: dict[str, Any], now: float) -> tuple[float | None, bool]:
    """(seconds left in the stage in progress, True when they come from its last run's rate):
    from the rate observed so far in it, else from its last run's while that has not run
    out; None when neither gives a figure."""
    done, total = meta["done"], meta["total"]
    if done >= total:
        return 0.0, False
    counted = done - meta["stage_done0"]
    measured = meta["updated"] - meta["stage_started"]
    # Steps are uneven (a quick one, then a long one): only a whole run of the stage counts.
    if counted > 0 and measured > 0 and UNITS.get(meta["stage"]) != "steps":
        return max(measured / counted * (total - done) - (now - meta["updated"]), 0.0), False
    whole = _from_history(meta, meta["stage"], total - meta["stage_done0"])
    if whole is None or whole <= now - meta["stage_started"]:
        return None, False
    return whole - (now - meta["stage_started"]), True


def time_left(meta: dict[str, Any], now: float | None = None) -> TimeLeft | None:
    """The estimate for a recorded PROGRESS state (None for a state without stage timings)."""
    if not meta or "plan" not in meta or "stage" not in meta or "stage_started" not in meta:
        return None
    now = time.time() if now is None else now
    plan: list[str] = meta["plan"]
    stage = meta["stage"]
    current, from_history = _current_stage_left(meta, now)
    unmeasured = [] if current is not None else [stage]
    total = current or 0.0
    ahead = plan[plan.index(stage) + 1 :] if stage in plan else []
    for later in ahead:
        if later in meta.get("finished", {}):
            continue
        seconds = _from_history(meta, later, None)
        if seconds is None:
            unmeasured.append(later)
        else:
            total += seconds
    known = current is not None or total > 0
    return TimeLeft(current, total if known else None, unmeasured, from_history)


def duration(seconds: float) -> str:
    """A rounded human duration: "40 s", "12 min", "1 h 05 min"."""
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _names(stages: Iterable[str]) -> str:
    return ", ".join(STAGE_LABELS.get(s, s) for s in stages)


def describe(meta: dict[str, Any], now: float | None = None) -> dict[str, str] | None:
    """What the panel and the CLI print for a PROGRESS state: ``doing`` (job, stage, count),
    ``stage_left`` and ``total_left``; None for a state without stage timings."""
    left = time_left(meta, now)
    if left is None:
        return None
    now = time.time() if now is None else now
    plan, stage = meta["plan"], meta["stage"]
    done, total = meta["done"], meta["total"]
    pct = f" ({100 * done / total:.0f}%)" if total else ""
    position = f"stage {plan.index(stage) + 1} of {len(plan)}: " if stage in plan else ""
    doing = (
        f"{JOB_LABELS.get(meta['job'], meta['job'])}, {position}"
        f"{STAGE_LABELS.get(stage, stage)} {done}/{total} {UNITS.get(stage, 'products')}{pct}"
    )
    running = duration(now - meta["stage_started"])
    if left.stage is None:
        stage_left = f"estimating... (nothing counted yet after {running})"
    elif done >= total:
        stage_left = "finishing"
    else:
        source = " (at the rate of its last run)" if left.stage_from_history else ""
        stage_left = f"about {duration(left.stage)} left{source}"
    if left.total is None or (left.unmeasured and left.total < 1):
        total_left = f"estimating... ({_names(left.unmeasured)} not measured yet)"
    elif left.unmeasured:
        total_left = (
            f"at least {duration(left.total)} left ({_names(left.unmeasured)} not measured yet)"
        )
    else:
        total_left = f"about {duration(left.total)} left"
    return {
        "doing": doing,
        "stage_left": stage_left,
        "total_left": total_left,
        "elapsed": duration(now - meta["started"]),
    }


def _log_tail(left: TimeLeft | None) -> str:
    if left is None or left.stage is None:
        return ""
    return f", about {duration(left.stage)} left in this stage"
