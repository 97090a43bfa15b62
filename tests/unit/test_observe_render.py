"""The report page's charts: what a chart drew is told apart from its axes (the browser test counts only that), and
the sections show what the report gathered."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from pipelines.observe import render
from pipelines.observe.gather import LakeReport
from tests.unit.test_observe_metrics import full_report

SVG = "{http://www.w3.org/2000/svg}"
SHAPES = {f"{SVG}{tag}" for tag in ("path", "rect", "line", "polyline", "polygon", "use")}


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # noqa: S314 - matplotlib's own output, made by the test


def data_shapes(svg: str) -> int:
    """What tests/integration/browser.py counts: shapes inside an element whose id starts with ``data-``, outside
    ``<defs>``."""

    def count(node: ET.Element, inside: bool) -> int:
        if node.tag == f"{SVG}defs":
            return 0
        inside = inside or node.get("id", "").startswith(render.DATA_ID_PREFIX)
        own = 1 if inside and node.tag in SHAPES else 0
        return own + sum(count(child, inside) for child in node)

    return count(parse(svg), False)


def chart_svg(figure: Any, name: str = "chart") -> str:
    html = render._svg(figure, name, "caption")
    return html[html.index("<svg") : html.index("</svg>") + len("</svg>")]


def test_an_empty_chart_has_axes_but_no_data_drawn() -> None:
    figure, axes = render._figure()
    axes.plot([], [], marker=".")
    axes.set_ylabel("records/s")
    svg = chart_svg(figure)
    every_shape = sum(1 for node in parse(svg).iter() if node.tag in SHAPES)
    assert every_shape > 10  # axes, ticks and spines: what counting every shape took for a drawn chart
    assert data_shapes(svg) == 0


def test_a_chart_with_points_or_bars_has_data_drawn() -> None:
    figure, axes = render._figure()
    axes.plot([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], marker=".", label="p50")
    axes.legend()
    assert data_shapes(chart_svg(figure)) >= 4  # the line and its three markers; the legend's copy is not data
    figure, axes = render._figure()
    axes.bar(["hits", "misses"], [3, 1])
    assert data_shapes(chart_svg(figure, "bars")) == 2


def test_data_ids_are_unique_per_chart() -> None:
    page = render.render_html(LakeReport(generated_s=100.0, since_s=0.0))
    first, second = render._figure(), render._figure()
    first[1].bar(["a"], [1])
    second[1].bar(["a"], [1])
    both = render._svg(first[0], "one", "") + render._svg(second[0], "two", "")
    assert 'id="data-one-0"' in both
    assert 'id="data-two-0"' in both
    assert render.DATA_ID_PREFIX not in page  # nothing to draw: no chart, so no data id


def test_every_chart_of_a_full_report_draws_data() -> None:
    report = full_report()
    report.cache = {
        "counters": {"hits": 3, "misses": 1, "evictions": 0},
        "entries": 1,
        "used_bytes": 10,
        "capacity_bytes": 100,
        "hit_ratio": 0.75,
        "byte_hit_ratio": 0.5,
    }
    page = render.render_html(report)
    charts = re.findall(r'<figure class="chart" data-chart="([a-z_]+)">(<svg.*?</svg>)', page, re.S)
    assert {name for name, _ in charts} == {
        "freshness", "records_per_second", "quarantine_by_rule", "kafka_lag", "table_files", "cache_counters",
        "tape_sites",
    }  # fmt: skip
    assert all(data_shapes(svg) > 0 for _, svg in charts), [(name, data_shapes(svg)) for name, svg in charts]
