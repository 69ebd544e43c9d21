"""The benchmark's own arithmetic: the saga order mix and how targets are judged (no timing)."""

from __future__ import annotations

from collections import Counter

from bench.cli import Results, check_targets
from bench.saga import orders


def test_saga_orders_have_the_shops_mix_of_failures() -> None:
    batch = orders("t", 100)
    kinds = Counter(
        "stock-out"
        if any(i.sku == "discontinued" for i in o.items)
        else "over limit"
        if sum(i.qty * i.unit_price_cents for i in o.items) > 100_000
        else "undeliverable"
        if o.address == "Atlantis"
        else "ok"
        for o in batch
    )
    assert kinds == {"ok": 70, "stock-out": 10, "over limit": 10, "undeliverable": 10}
    assert len({o.order_id for o in batch}) == 100


def test_tax_and_breaker_targets_are_judged_from_the_rows() -> None:
    results = Results()
    results.add("saga", "sqlite", "persistence tax", "%", 25.0, higher_is_better=False)
    results.add("saga", "postgres", "persistence tax", "%", 70.0, higher_is_better=False)
    results.add("breaker", "closed breaker", "check per publish", "us", 0.5)
    for rate, label in ((1000.0, "without breaker"), (960.0, "with breaker")):
        results.add(
            "breaker", label, "pipeline throughput", "msgs/s", rate, baseline="without breaker"
        )
    verdicts = {t["target"]: t["met"] for t in check_targets(results)}
    assert verdicts == {
        "saga: persistence tax <= 30% with SQLite": True,
        "saga: persistence tax <= 30% with PostgreSQL": False,
        "breaker: check < 2 us per publish": True,
        "breaker: pipeline with a breaker >= 0.97x without": False,
    }
