"""The chart of a run: pipeline, query and saga figures per contender, as an SVG.

``python -m bench`` writes it next to its JSON (``bench/results/latest.svg``);
``python -m bench.chart [JSON [SVG]]`` draws it again from a saved run. Each panel is one
metric: a bar per contender at its median, a line from its min to its max over the rounds, and
the figures in words. Hand-written SVG: no plotting library to install.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

__all__ = ["PANELS", "render", "write"]

# (section, metric, title): the figures drawn, in this order; a panel without rows is left out.
PANELS = (
    ("pipeline", "throughput", "Pipeline: consume, decode, confirmed follow-up, ack"),
    ("query", "round trips, 50 callers", "Query: request/reply round trips, 50 callers"),
    ("query", "round trips, 1 caller", "Query: request/reply round trips, 1 caller"),
    ("saga", "throughput", "Saga: the shop's order saga on RabbitMQ, per store"),
)
WIDTH = 860
LABEL_W = 210  # contender names, right-aligned before the bars
BAR_W = 340
ROW_H = 24
BAR_H = 14
HIGHLIGHT = "leveret"  # drawn in colour; every other contender in grey


def _fmt(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _text(x: float, y: float, body: str, **attrs: str) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in attrs.items())
    return f'<text x="{x:.1f}" y="{y:.1f}"{extra}>{escape(body)}</text>'


def _panel(title: str, rows: list[dict[str, Any]], top: float) -> tuple[list[str], float]:
    """The SVG elements of one panel starting at ``top``, and the panel's height."""
    unit = rows[0]["unit"]
    out = [_text(12, top + 16, f"{title} ({unit}, higher is better)", font_weight="bold")]
    scale = max(max(r["max"], r["median"]) for r in rows) or 1.0
    x0 = 12 + LABEL_W
    y = top + 28
    for row in rows:
        median, low, high = row["median"], row["min"], row["max"]
        # Every saga row is leveret's (one per store).
        ours = row["label"] == HIGHLIGHT or row["section"] == "saga"
        colour = "#2b6cb0" if ours else "#a0aec0"
        width = BAR_W * median / scale
        mid = y + BAR_H / 2
        out.append(_text(x0 - 8, mid + 4, row["label"], text_anchor="end"))
        out.append(
            f'<rect x="{x0}" y="{y:.1f}" width="{width:.1f}" height="{BAR_H}" fill="{colour}">'
            f"<title>{escape(row['label'])}: median {_fmt(median)} {escape(unit)}</title></rect>"
        )
        xl, xh = x0 + BAR_W * low / scale, x0 + BAR_W * high / scale
        if high > low:
            out.append(
                f'<path d="M{xl:.1f},{mid:.1f}H{xh:.1f}M{xl:.1f},{y + 2:.1f}V{y + BAR_H - 2:.1f}'
                f'M{xh:.1f},{y + 2:.1f}V{y + BAR_H - 2:.1f}" stroke="#1a202c" fill="none"/>'
            )
        words = [_fmt(median)]
        if high > low:
            words.append(f"{_fmt(low)}\u2013{_fmt(high)}")
        if row.get("ratio") is not None and row.get("baseline"):
            words.append(f"{row['ratio']:.2f}x {row['baseline']}")
        out.append(_text(max(xh, x0 + width) + 8, mid + 4, " \u00b7 ".join(words)))
        y += ROW_H
    return out, y - top + 8


def _rows(results: Iterable[dict[str, Any]], section: str, metric: str) -> list[dict[str, Any]]:
    return [r for r in results if r["section"] == section and r["metric"] == metric]


def render(report: dict[str, Any]) -> str:
    """The SVG of a run's report (the JSON ``python -m bench`` writes)."""
    results = report.get("results", [])
    machine = report.get("machine", {})
    load = machine.get("load_average_at_start"), machine.get("load_average_at_end")
    when = []
    if report.get("finished_at"):
        when.append(f"finished {report['finished_at']}")
    if all(load):
        when.append(f"load average {load[0][0]:.1f} at the start, {load[1][0]:.1f} at the end")
    body = [
        _text(
            12,
            22,
            "leveret benchmark: median, and min\u2013max over the rounds",
            font_size="16",
            font_weight="bold",
        ),
        _text(12, 40, str(report.get("command", "python -m bench")), fill="#4a5568"),
        _text(12, 56, " \u00b7 ".join(when), fill="#4a5568"),
    ]
    top = 68.0
    for section, metric, title in PANELS:
        rows = _rows(results, section, metric)
        if rows:
            elements, height = _panel(title, rows, top)
            body += elements
            top += height
    if top == 68.0:
        body.append(_text(12, 88, "no pipeline, query or saga figures in this run"))
        top = 100.0
    height = int(top + 12)
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
            f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
            *body,
            "</svg>",
            "",
        ]
    )


def write(report: dict[str, Any], path: Path) -> Path:
    """Write the chart of ``report`` to ``path``; returns ``path``."""
    path.write_text(render(report), encoding="utf-8")
    return path


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parent
    source = Path(argv[0]) if argv else root / "results" / "latest.json"
    target = Path(argv[1]) if len(argv) > 1 else source.with_suffix(".svg")
    write(json.loads(source.read_text()), target)
    print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
