"""The tuning's progress by stage and its estimated time left: recorded by the worker, shown
on the admin index panel and by ``flask catalog index-status``."""

from __future__ import annotations

import json
import time

import pytest

from webapp import exclusive
from webapp.inventory import stage_clock
from webapp.inventory.stage_clock import StageClock, describe, duration, time_left
from worker import tasks
from worker.jobs import tuning

PLAN = list(tuning.STAGES)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def state(stage: str, done: int, total: int, **extra) -> dict:
    """A PROGRESS state as ``StageClock`` records it: stage started at t=0, updated at t=10."""
    meta = {
        "job": "tuning",
        "plan": PLAN,
        "started": -100.0,
        "finished": {},
        "history": {},
        "rows": 1000,
        "stage": stage,
        "stage_started": 0.0,
        "stage_done0": 0,
        "done": done,
        "total": total,
        "updated": 10.0,
    }
    meta.update(extra)
    return meta


# -- the estimate -------------------------------------------------------------------------------


def test_the_stage_in_progress_is_estimated_from_its_own_rate():
    left = time_left(state("neighbours", 100, 1000), now=10.0)
    assert left.stage == pytest.approx(90.0) and left.total == pytest.approx(90.0)
    assert left.unmeasured == [] and not left.stage_from_history
    # time passing since the last report counts down, never below zero
    assert time_left(state("neighbours", 100, 1000), now=40.0).stage == pytest.approx(60.0)
    assert time_left(state("neighbours", 100, 1000), now=500.0).stage == 0.0


def test_rows_already_stored_when_the_stage_started_do_not_inflate_its_rate():
    # 900 maps were stored already; 50 computed in 10 s: 50 more take 10 s, not 0.5 s
    left = time_left(state("neighbours", 950, 1000, stage_done0=900), now=10.0)
    assert left.stage == pytest.approx(10.0)


def test_stages_not_started_use_the_rate_of_their_last_run_scaled_to_the_catalogue():
    history = {
        "embedding": {"seconds": 20.0, "units": 500, "rows": 500},  # 0.04 s a product
        "thresholds": {"seconds": 5.0, "units": 2, "rows": 500},  # steps: not scaled
        "neighbours": {"seconds": 30.0, "units": 500, "rows": 500},
    }
    # training: 2 of 8 epochs took 100 s -> 300 s left; then 40 + 5 + 60 s
    meta = state("training", 2, 8, history=history, updated=100.0)
    left = time_left(meta, now=100.0)
    assert left.stage == pytest.approx(300.0)
    assert left.total == pytest.approx(300.0 + 40.0 + 5.0 + 60.0)
    assert left.unmeasured == []


def test_epochs_of_the_last_run_scale_with_the_catalogue():
    history = {"training": {"seconds": 80.0, "units": 8, "rows": 500}}
    # not started in this run: 8 epochs on twice the products take twice as long
    left = time_left(state("colours", 10, 1000, history=history), now=10.0)
    assert left.total == pytest.approx(left.stage + 160.0)


def test_a_stage_never_measured_gives_no_figure_only_a_lower_bound():
    left = time_left(state("maps", 500, 1000), now=10.0)
    assert left.stage == pytest.approx(10.0)
    assert left.unmeasured == [
        "colours",
        "shoppers",
        "training",
        "embedding",
        "thresholds",
        "neighbours",
    ]
    told = describe(state("maps", 500, 1000), now=10.0)
    assert told["stage_left"] == "about 10 s left"
    assert told["total_left"].startswith(
        "at least 10 s left (colour descriptors, shopper-like views, training,"
    )
    assert "not measured yet" in told["total_left"]


def test_nothing_counted_yet_and_no_last_run_says_estimating():
    meta = state("training", 0, 8, updated=0.0)
    left = time_left(meta, now=30.0)
    assert left.stage is None and left.total is None
    told = describe(meta, now=30.0)
    assert told["stage_left"] == "estimating... (nothing counted yet after 30 s)"
    assert told["total_left"].startswith("estimating... (training, embeddings,")


def test_nothing_counted_yet_uses_the_last_run_until_it_runs_out():
    history = {"training": {"seconds": 400.0, "units": 8, "rows": 1000}}
    meta = state("training", 0, 8, updated=0.0, history=history)
    left = time_left(meta, now=100.0)
    assert left.stage == pytest.approx(300.0) and left.stage_from_history
    assert "at the rate of its last run" in describe(meta, now=100.0)["stage_left"]
    assert time_left(meta, now=450.0).stage is None  # slower than last time: no guess


def test_a_finished_count_is_finishing_and_states_without_timings_get_nothing():
    told = describe(state("embedding", 1000, 1000), now=10.0)
    assert told["stage_left"] == "finishing"
    assert (
        told["doing"] == "tuning the backbone, stage 5 of 7: embeddings 1000/1000 products (100%)"
    )
    assert describe({"stage": "maps", "done": 1, "total": 2}) is None
    assert describe({}) is None


def test_uneven_steps_are_estimated_from_a_whole_run_only():
    meta = state("thresholds", 1, 2)  # the quick step took 10 s; the long one is to come
    assert time_left(meta, now=10.0).stage is None
    meta["history"] = {"thresholds": {"seconds": 40.0, "units": 2, "rows": 1000}}
    assert time_left(meta, now=15.0).stage == pytest.approx(25.0)  # 40 s in all, 15 s gone


def test_durations_read_well():
    assert [duration(s) for s in (0, 42, 89, 90, 600, 3599, 3600, 3900)] == [
        "0 s",
        "42 s",
        "89 s",
        "2 min",
        "10 min",
        "1 h 00 min",
        "1 h 00 min",
        "1 h 05 min",
    ]


# -- the worker's record --------------------------------------------------------------------------


def test_the_clock_records_stage_timings_and_remembers_complete_stages():
    clock, recorded, remembered = FakeClock(0.0), [], {}
    job = StageClock(
        "tuning",
        PLAN,
        recorded.append,
        history={"neighbours": {"seconds": 1.0, "units": 10, "rows": 10}},
        remember=remembered.__setitem__,
        clock=clock,
    )
    maps = job.progress_for("maps")
    maps(600, 1000)  # 600 stored already
    clock.now = 0.5
    maps(700, 1000)  # within a second of the last record: not recorded
    clock.now = 4.0
    maps(1000, 1000)  # the end of a count is always recorded
    assert [m["done"] for m in recorded] == [600, 1000]
    assert recorded[-1]["stage_done0"] == 600 and recorded[-1]["rows"] == 1000
    assert recorded[-1]["history"]["neighbours"]["units"] == 10
    clock.now = 5.0
    colours = job.progress_for("colours")
    colours(1000, 1000)  # everything stored: nothing counted, nothing remembered
    clock.now = 6.0
    job.progress_for("training")(0, 8)
    assert recorded[-1]["finished"] == {"maps": 5.0, "colours": 1.0}
    clock.now = 46.0
    job.progress_for("training")(8, 8)
    clock.now = 50.0
    assert job.finish() == {"maps": 5.0, "colours": 1.0, "training": 44.0}
    assert remembered == {
        "maps": {"seconds": 5.0, "units": 400, "rows": 1000},
        "training": {"seconds": 44.0, "units": 8, "rows": 1000},
    }


def test_a_stage_started_over_is_timed_afresh():
    clock, recorded = FakeClock(0.0), []
    job = StageClock("index", ("embedding", "neighbours"), recorded.append, clock=clock)
    job.progress_for("neighbours")(1000, 1000)
    clock.now = 3.0
    job.progress_for("neighbours")(0, 1000)
    assert recorded[-1]["stage_started"] == 3.0 and recorded[-1]["finished"] == {"neighbours": 3.0}


def test_history_is_kept_per_job_and_stage_with_the_lists_shared(app, redis_db):
    with app.app_context():
        stage_clock.save_history("index", "neighbours", {"seconds": 3.0, "units": 30, "rows": 30})
        stage_clock.save_history("index", "embedding", {"seconds": 9.0, "units": 30, "rows": 30})
        found = stage_clock.load_history("tuning", PLAN)
    # the tuned lists are predicted by the plain ones; the tuned embeddings (from stored
    # maps) are not predicted by the plain embedding of photos
    assert found == {"neighbours": {"seconds": 3.0, "units": 30, "rows": 30}}


# -- the panel and the CLI ------------------------------------------------------------------------


@pytest.fixture
def tuning_in_flight(app, redis_db):
    """A tuning job in its training stage, as the worker records it: 2 of 8 epochs done."""
    task_id = "tune-123"
    redis_db.set(exclusive.KEY.format(name=exclusive.INDEX), task_id)
    meta = state(
        "training",
        2,
        8,
        started=0.0,
        stage_started=0.0,
        updated=0.0,
        history={"neighbours": {"seconds": 30.0, "units": 1000, "rows": 1000}},
    )
    with app.app_context():
        now = time.time()
        meta.update(started=now - 900, stage_started=now - 120, updated=now - 20)
        app.extensions["celery"].backend.store_result(task_id, meta, "PROGRESS")
    return task_id


@pytest.fixture
def admin(client, auth):
    auth.login(role="admin")
    return client


def test_the_panel_shows_the_stage_and_the_time_left(admin, tuning_in_flight):
    page = admin.get("/admin/inventory/index").get_data(as_text=True)
    assert "tuning the backbone, stage 4 of 7: training 2/8 epochs (25%)" in page
    # 2 epochs took 100 s: 6 more take 300 s, 20 of which have passed
    assert "This stage: about 5 min left." in page
    assert "Whole job: at least 5 min left (embeddings, thresholds not measured yet)" in page
    assert "not measured yet); running for 15 min." in page


def test_index_status_prints_the_time_left(app, tuning_in_flight):
    result = app.test_cli_runner().invoke(args=["catalog", "index-status"])
    assert result.exit_code == 0, result.output
    assert f"Job {tuning_in_flight}: PROGRESS tuning the backbone, stage 4 of 7" in result.output
    assert "  this stage: about 5 min left" in result.output
    assert "  whole job: at least 5 min left (embeddings, thresholds not measured yet)" in (
        result.output
    )


# -- a real tuning run ----------------------------------------------------------------------------


def test_a_tuning_run_reports_every_stage_of_its_plan_in_order(labelled, redis_db):
    app, _ = labelled
    with app.app_context():
        summary = tasks.ml_tune_catalog.apply(kwargs={"epochs": 2}).get()
        # no shopper-like views asked for: no such stage in the plan or the timings
        assert list(summary["stage_seconds"]) == [s for s in PLAN if s != "shoppers"]
        assert tuning.planned_stages() == tuple(summary["stage_seconds"])
        app.config.update(TUNE_SHOPPER_VIEWS=1)
        assert tuning.planned_stages() == tuning.STAGES
        saved = {k.decode(): json.loads(v) for k, v in redis_db.hgetall("stage-history").items()}
    assert {"tuning:maps", "tuning:colours", "tuning:training", "neighbours"} <= set(saved)
    assert saved["tuning:training"]["units"] == 2 and saved["neighbours"]["rows"] == 48
