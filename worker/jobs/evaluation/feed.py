"""The offline measure of the "For you" feed (``flask model evaluate-feed``).

Simulated shoppers (``ml.feed_simulation``) like a few products of a hidden target; their
feeds are built by ``webapp.feed.feed_for``, the code pages and the API call, over the
served neighbour lists in Redis, and compared with two baselines: the products other
shoppers viewed most, and the products most similar to the last liked one alone
(``webapp.similar.services``, as a product page lists them). Then each shopper marks 3
products of the colour most frequent in their feed "not interested", and that colour's
share of the feed is measured again. The result is stored beside the served model's
embeddings, where the Quality page reads it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import select

from ml import feed_simulation as sim
from ml.provenance import git_commit, machine
from webapp import registry
from webapp.eligibility import ACTIVE
from webapp.extensions import db
from webapp.feed import feed_for
from webapp.models import Product
from webapp.preferences import Preferences
from webapp.quality.services import FEED_KIND, RESULT_VERSION
from webapp.similar.services import similar_products
from webapp.taste import Taste
from worker.jobs.evaluation.options import EvaluationError, Say

# The targets the issue sets: the feed finds at least 3 times the hits of the most-viewed
# baseline, and marking 3 products of a colour at least halves its share of the feed.
TARGET_RATIO = 3.0
TARGET_SHARE_CUT = 0.5


@dataclass
class FeedOptions:
    """One run: how many simulated shoppers, the seed of their draw, the feed's length."""

    shoppers: int = 500
    seed: int = 0
    k: int = 12

    def command(self) -> str:
        """The command that reproduces the run."""
        return (
            f"flask --app wsgi model evaluate-feed --shoppers {self.shoppers} "
            f"--seed {self.seed} --k {self.k}"
        )


def load_catalogue(model_id: str) -> sim.Catalogue:
    """The shop's active products that have a neighbour list of ``model_id``, with their
    labels: shoppers like only products the feed can start from, and a hit is one of them."""
    listed = set(registry.neighbour_cache().read_index(model_id)[0].tolist())
    rows = [
        r
        for r in db.session.execute(
            select(Product.id, Product.gender, Product.article_type, Product.base_colour)
            .where(*ACTIVE.clauses())
            .order_by(Product.id)
        )
        if r.id in listed
    ]
    return sim.Catalogue(
        ids=np.asarray([r.id for r in rows], np.int64),
        genders=[r.gender for r in rows],
        types=[r.article_type for r in rows],
        colours=[r.base_colour for r in rows],
    )


def shopper_taste(likes: tuple[int, ...], marks: list[int], now: float) -> Taste:
    """A simulated shopper's taste: the likes a minute apart (the last one newest), marks
    made after them; no views, so nothing is held back as viewed in the last hour."""
    liked = [(pid, now - 60.0 * (len(likes) - i)) for i, pid in enumerate(likes)][::-1]
    return Taste(likes=liked, views=[], not_interested=[(pid, now) for pid in marks])


def run_feed(opts: FeedOptions, say: Say | None = None) -> dict[str, Any]:
    """Run the offline measure on the served lists and return the result."""
    started = time.perf_counter()
    model_id = registry.neighbour_cache().active_model()
    if model_id is None:
        raise EvaluationError(
            "No neighbour lists are served: import and embed a catalogue first "
            "(flask --app wsgi catalog embed --now)."
        )
    cat = load_catalogue(model_id)
    shoppers = sim.draw_shoppers(cat, opts.shoppers, opts.seed)
    if not shoppers:
        raise EvaluationError("The catalogue has no gender + article type with enough products.")
    if say:
        say(f"{len(shoppers)} simulated shoppers over {len(cat.ids)} products of {model_id}...")
    targets = sim.Targets(cat)
    now = time.time()
    popular = sim.most_viewed(cat, shoppers)
    feeds, last_liked, viewed, build_ms = [], [], [], []
    for i, shopper in enumerate(shoppers):
        t0 = time.perf_counter()
        feed = feed_for(shopper_taste(shopper.likes, [], now), Preferences(), opts.k, now=now)
        build_ms.append(1000 * (time.perf_counter() - t0))
        feeds.append([item.product.id for item in feed.items])
        last_liked.append(similar_to_last_liked(shopper, opts.k))
        viewed.append(popular(i, opts.k))
        db.session.rollback()  # nothing is written; keep the session from growing
    marks = not_interested_step(targets, shoppers, feeds, opts, now)
    result = {
        "kind": FEED_KIND,
        "version": RESULT_VERSION,
        "command": opts.command(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine(),
        "base_model": model_id,
        "catalogue_products": int(len(cat.ids)),
        "options": {"shoppers": opts.shoppers, "seed": opts.seed, "k": opts.k},
        "shoppers": len(shoppers),
        "shoppers_with_colour": sum(s.colour is not None for s in shoppers),
        "likes_per_shopper": sim.LIKES,
        "recommenders": {
            "feed": sim.hit_rates(targets, shoppers, feeds, opts.k),
            "last_liked": sim.hit_rates(targets, shoppers, last_liked, opts.k),
            "most_viewed": sim.hit_rates(targets, shoppers, viewed, opts.k),
        },
        "not_interested": marks,
        "feed_ms": {
            "p50": round(float(np.percentile(build_ms, 50)), 2),
            "p95": round(float(np.percentile(build_ms, 95)), 2),
            "what": "feed_for in process, lists read from Redis",
        },
    }
    result["targets"] = targets_met(result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def similar_to_last_liked(shopper: sim.Shopper, k: int) -> list[int]:
    """The baseline "similar to the last liked product": its similar products, as a product
    page lists them, without the other liked ones."""
    product = db.session.get(Product, shopper.likes[-1])
    if product is None:
        return []
    result = similar_products(product, Preferences(), k, exclude=set(shopper.likes))
    return [item.product.id for item in result.items]


def not_interested_step(
    targets: sim.Targets,
    shoppers: list[sim.Shopper],
    feeds: list[list[int]],
    opts: FeedOptions,
    now: float,
) -> dict[str, Any]:
    """Each shopper marks 3 products of their feed's most frequent colour (not their target's
    colour) "not interested"; that colour's share of the feed before and after."""
    before, after, halved = [], [], 0
    for i, (shopper, feed) in enumerate(zip(shoppers, feeds, strict=True)):
        colour = sim.colour_to_mark(targets, shopper, feed)
        if colour is None:
            continue
        marks = sim.products_to_mark(targets, shopper, feed, colour, opts.seed + i)
        taste = shopper_taste(shopper.likes, marks, now)
        new = [item.product.id for item in feed_for(taste, Preferences(), opts.k, now=now).items]
        db.session.rollback()
        before.append(sim.colour_share(targets, feed, colour))
        after.append(sim.colour_share(targets, new, colour))
        halved += after[-1] <= before[-1] / 2
    return {
        "shoppers": len(before),
        "marked": sim.MARKS,
        "share_before": float(np.mean(before)) if before else None,
        "share_after": float(np.mean(after)) if after else None,
        "shoppers_halved": halved / len(before) if before else None,
    }


def targets_met(result: dict[str, Any]) -> dict[str, Any]:
    """The two targets: feed hit rate >= 3x most viewed; the marked colour's share halved."""
    rec = result["recommenders"]
    base = rec["most_viewed"]["hit_rate"]
    feed = rec["feed"]["hit_rate"]
    ratio = feed / base if base else None
    marks = result["not_interested"]
    cut = marks["share_after"] / marks["share_before"] if marks["share_before"] else None
    return {
        "hit_rate_vs_most_viewed": ratio,
        "hit_rate_target": TARGET_RATIO,
        "hit_rate_met": (feed > 0) if ratio is None else ratio >= TARGET_RATIO,
        "share_after_vs_before": cut,
        "share_target": TARGET_SHARE_CUT,
        "share_met": cut is not None and cut <= TARGET_SHARE_CUT,
    }


def format_feed_result(result: dict[str, Any]) -> list[str]:
    """Lines for the terminal."""
    rec, marks, met = result["recommenders"], result["not_interested"], result["targets"]
    k = result["options"]["k"]
    lines = [
        f"{result['shoppers']} simulated shoppers ({result['shoppers_with_colour']} with a "
        f"colour), {result['likes_per_shopper']} likes each, over "
        f"{result['catalogue_products']} products of {result['base_model']}:",
        f"{'recommender':<28} hit rate@{k}   shoppers with a hit",
    ]
    names = {
        "feed": "For you feed",
        "last_liked": "similar to the last liked",
        "most_viewed": "most viewed",
    }
    for key, label in names.items():
        lines.append(
            f"{label:<28} {100 * rec[key]['hit_rate']:>8.2f} %   {100 * rec[key]['any_hit']:>8.2f} %"
        )
    ratio = met["hit_rate_vs_most_viewed"]
    lines.append(
        f"feed / most viewed: {'n/a' if ratio is None else f'{ratio:.1f}x'} "
        f"(target {TARGET_RATIO:g}x: {'met' if met['hit_rate_met'] else 'MISSED'})"
    )
    if marks["share_before"] is not None:
        lines.append(
            f"marked colour's share of the feed ({marks['shoppers']} shoppers marked "
            f"{marks['marked']} products): {100 * marks['share_before']:.1f} % before, "
            f"{100 * marks['share_after']:.1f} % after (target: at most half: "
            f"{'met' if met['share_met'] else 'MISSED'})"
        )
    lines.append(
        f"feed built in p50 {result['feed_ms']['p50']} ms, p95 {result['feed_ms']['p95']} ms "
        f"(in process); {result['seconds']} s in all"
    )
    return lines
