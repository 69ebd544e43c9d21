"""The benchmark's own arithmetic (the saga order mix, where a saga run ends, how targets are
judged) and its chart: no broker, no timing."""

from __future__ import annotations

from collections import Counter
from xml.etree import ElementTree

from bench.chart import render
from bench.cli import Results, check_targets
from bench.saga import Stats, orders


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


def test_saga_run_ends_with_the_delivery_that_ended_the_last_saga() -> None:
    """The end is the first delivery done at or after the last terminal transition; a stale
    timer handled a second later is neither timed nor counted."""
    stats = Stats()
    stats.done = [(10.0, "orders"), (10.5, "payment"), (11.02, "orders"), (12.1, "orders")]
    end = stats.end_after(11.0)  # the last saga's final transition, committed at 11.0
    assert end == 11.02
    assert stats.handled_by(end) == {"orders": 2, "payment": 1}
    assert stats.end_after(12.5) is None


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


def _row(section: str, label: str, metric: str, values: list[float]) -> dict[str, object]:
    median = sorted(values)[len(values) // 2]
    return {
        "section": section,
        "label": label,
        "metric": metric,
        "unit": "msgs/s",
        "median": median,
        "min": min(values),
        "max": max(values),
        "baseline": None,
        "ratio": None,
    }


def test_chart_draws_a_bar_and_a_min_max_line_per_contender() -> None:
    """The chart has one bar per contender of each figure, a whisker where the rounds differ,
    and leaves out what it does not plot (breaker rows, an absent query section)."""
    report = {
        "command": "python -m bench --quick",
        "results": [
            _row("pipeline", "leveret", "throughput", [4000, 4200, 4400]),
            _row("pipeline", "aio-pika", "throughput", [2400]),
            _row("saga", "sqlite", "throughput", [150, 160, 170]),
            _row("breaker", "with breaker", "pipeline throughput", [4000]),
        ],
    }
    svg = ElementTree.fromstring(render(report))
    ns = "{http://www.w3.org/2000/svg}"
    texts = [t.text or "" for t in svg.iter(f"{ns}text")]
    bars = [r for r in svg.iter(f"{ns}rect") if r.find(f"{ns}title") is not None]
    assert len(bars) == 3
    assert len(list(svg.iter(f"{ns}path"))) == 2  # aio-pika ran once: no min-max line
    assert {"leveret", "aio-pika", "sqlite"} <= set(texts)
    assert not any("with breaker" in t or "Query" in t for t in texts)
    assert any("4,200" in t and "4,000" in t and "4,400" in t for t in texts)


def test_chart_of_a_run_without_figures_says_so() -> None:
    """A run of sections the chart does not plot still gets a chart, saying it is empty."""
    svg = ElementTree.fromstring(render({"results": []}))
    assert any(
        "no pipeline" in (t.text or "") for t in svg.iter("{http://www.w3.org/2000/svg}text")
    )
