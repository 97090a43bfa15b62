"""The report as one self-contained HTML page: inline CSS, charts as inline SVG drawn by matplotlib, no script and
no reference to anything outside the file, so it opens offline, from a mail attachment or an air-gapped host.

The verdicts come first, worst first, each with the value that decided it and the fix; then one section per part.
A chart is drawn only when there is something to draw; otherwise its place says why it is empty.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from pipelines.observe.dag_runs import MaintenanceRuns
from pipelines.observe.gather import LakeReport
from pipelines.observe.ingestion import EntityIngest
from pipelines.observe.tables import OPERATION_SCAN, TableRow
from pipelines.observe.verdicts import Level, Verdict

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left}
th{background:#f4f4f4}.level{font-weight:bold;color:#fff;border-radius:3px;padding:0 .4em}
.OK{background:#2e7d32}.WARN{background:#b26a00}.ERR{background:#c62828}
figure{display:inline-block;margin:.5em 1em .5em 0}figcaption{font-size:.9em;color:#555}
.empty{color:#666;font-style:italic}code{background:#f4f4f4;padding:0 .2em}
"""
DATA_ID_PREFIX = "data-"
"""SVG ids of a chart's data drawings start with this (then the chart's name): its axes and legend carry none."""


def _when(epoch_s: float | None) -> str:
    if not epoch_s:
        return "never"
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(epoch_s: float | None, now_s: float) -> str:
    if not epoch_s:
        return "never"
    seconds = max(0.0, now_s - epoch_s)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _figure(width: float = 6.0, height: float = 2.6) -> Any:
    from matplotlib.figure import Figure  # noqa: PLC0415 - matplotlib only when a report is drawn

    figure = Figure(figsize=(width, height), dpi=96, layout="constrained")
    return figure, figure.add_subplot()


def tag_data(figure: Any, name: str) -> int:
    """Give every data drawing of ``figure`` (its lines, bars and other patches, collections) an SVG id starting
    with :data:`DATA_ID_PREFIX` and the chart's name, so a check can count what a chart drew apart from its axes,
    ticks, grid and legend (an empty chart has none). The number tagged."""
    tagged = 0
    for axes in figure.axes:
        for artist in [*axes.lines, *axes.patches, *axes.collections]:
            artist.set_gid(f"{DATA_ID_PREFIX}{name}-{tagged}")
            tagged += 1
    return tagged


def _svg(figure: Any, name: str, caption: str) -> str:
    """The figure as inline SVG (text kept as text; ids salted by the chart's name so charts never share one), its
    data drawings tagged (:func:`tag_data`)."""
    import matplotlib as mpl  # noqa: PLC0415

    tag_data(figure, name)
    out = io.StringIO()
    with mpl.rc_context({"svg.fonttype": "none", "svg.hashsalt": name}):
        figure.savefig(out, format="svg", metadata={"Date": None})
    text = out.getvalue()
    svg = text[text.index("<svg") :]
    return f'<figure class="chart" data-chart="{escape(name)}">{svg}<figcaption>{escape(caption)}</figcaption></figure>'


def _empty(why: str) -> str:
    return f'<p class="empty">{escape(why)}</p>'


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _times(values: Iterable[float]) -> list[datetime]:
    return [datetime.fromtimestamp(t, UTC) for t in values]


def _time_axis(axes: Any, stamps: Sequence[float]) -> None:
    """Clock times on the x axis (with seconds when the span is under 10 minutes, so ticks do not repeat one minute);
    a lone point gets a minute either side instead of matplotlib's years."""
    from matplotlib.dates import DateFormatter  # noqa: PLC0415

    span = max(stamps) - min(stamps) if stamps else 0.0
    clock = "%H:%M:%S" if span < 600 else "%H:%M"
    axes.xaxis.set_major_formatter(DateFormatter(clock, tz=UTC))  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_locator(_few_ticks())
    axes.set_xlabel("UTC")
    if stamps and span < 60:
        axes.set_xlim(*_times([min(stamps) - 60, max(stamps) + 60]))


def _few_ticks() -> Any:
    """At most five time ticks: long labels (with seconds) overlap beyond that in a chart this wide."""
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    return MaxNLocator(nbins=5)


def verdicts_html(verdicts: list[Verdict]) -> str:
    ordered = sorted(verdicts, key=lambda x: (-x.level, x.section, x.subject))
    counts = {level: sum(1 for x in verdicts if x.level is level) for level in Level}
    summary = ", ".join(f"{n} {level.name}" for level, n in counts.items())
    rows = "".join(
        f'<tr class="verdict" data-level="{x.level.name}"><td><span class="level {x.level.name}">{x.level.name}'
        f"</span></td><td>{escape(x.section)}</td><td>{escape(x.subject)}</td><td>{escape(x.value)}</td>"
        f"<td>{escape(x.fix)}</td></tr>"
        for x in ordered
    )
    return (
        f"<h2>Verdicts</h2><p>{escape(summary)}</p><table><tr><th>level</th><th>part</th><th>what</th><th>value</th>"
        f"<th>fix</th></tr>{rows}</table>"
    )


def ingestion_html(report: LakeReport) -> str:
    parts = ["<h2>Ingestion</h2>"]
    fresh = [i for i in report.ingestion if i.freshness]
    if fresh:
        figure, axes = _figure()
        for ingest in fresh:
            at = _times(f[0] for f in ingest.freshness)
            axes.plot(at, [f[1] for f in ingest.freshness], marker=".", label=f"{ingest.entity} p50")
            axes.plot(at, [f[2] for f in ingest.freshness], marker=".", linestyle="--", label=f"{ingest.entity} p99")
        _time_axis(axes, [f[0] for i in fresh for f in i.freshness])
        axes.set_ylabel("seconds")
        axes.legend(fontsize="small")
        caption = "freshness: Kafka timestamp to the silver commit, per commit"
        parts.append(_svg(figure, "freshness", f"{caption}; {_sampled(fresh, bronze=False)}"))
    else:
        parts.append(_empty("freshness: no silver commit in the window"))
    rated = [i for i in report.ingestion if i.rates]
    if rated:
        figure, axes = _figure()
        for ingest in rated:
            per_s = [records / max(seconds, 1e-3) for _, records, seconds in ingest.rates]
            axes.plot(_times(r[0] for r in ingest.rates), per_s, marker=".", label=ingest.topic)
        _time_axis(axes, [r[0] for i in rated for r in i.rates])
        axes.set_ylabel("records/s")
        axes.legend(fontsize="small")
        caption = "records per second into bronze at each commit (its records over the time since the one before)"
        parts.append(_svg(figure, "records_per_second", f"{caption}; {_sampled(rated, bronze=True)}"))
    else:
        parts.append(_empty("records per second: no bronze commit in the window"))
    rules = {(i.entity, r): n for i in report.ingestion for r, n in i.quarantine_by_rule.items()}
    if rules:
        figure, axes = _figure(height=0.4 * len(rules) + 1)
        labels = [f"{e}: {r}" for e, r in rules]
        axes.barh(labels, list(rules.values()), color="#b26a00")
        axes.set_xlabel("records quarantined in the window")
        parts.append(_svg(figure, "quarantine_by_rule", "quarantine by rule (not yet replayed)"))
    else:
        parts.append(_empty("quarantine: no record quarantined in the window"))
    rows = [
        (i.entity, i.topic, *(i.window_counts.get(k, 0) for k in ("silver", "quarantine", "dropped")))
        for i in report.ingestion
    ]
    parts.append(_table(["entity", "topic", "silver", "quarantine", "dropped"], rows))
    parts.append("<p>records Kafka stamped in the window, by outcome; the reconciliation verdicts cover all time.</p>")
    return "".join(parts)


def _sampled(ingests: Sequence[EntityIngest], *, bronze: bool) -> str:
    """Which commits a series shows: all of the window's, or a sample spread across it."""
    counts = [(i.entity, *(i.bronze_commits if bronze else i.silver_commits)) for i in ingests]
    if all(read == total for _, read, total in counts):
        return "every commit in the window"
    spread = ", ".join(f"{entity} {read} of {total}" for entity, read, total in counts)
    return f"commits sampled evenly across the window ({spread})"


def lag_html(report: LakeReport) -> str:
    parts = ["<h2>Kafka lag of the ingest queries</h2>"]
    if not report.lag:
        return "".join([*parts, _empty("no topic could be read")])
    figure, axes = _figure()
    for p in report.lag:
        axes.plot(
            _times(s.at_s for s in p.window), [s.lag for s in p.window], marker="o", label=f"{p.topic}/{p.partition}"
        )
    _time_axis(axes, [s.at_s for p in report.lag for s in p.window])
    axes.set_ylabel("records behind")
    axes.legend(fontsize="x-small", ncol=2)
    parts.append(_svg(figure, "kafka_lag", "lag per partition over the window (committed batches, then now)"))
    driver = report.driver
    running = {True: "runs", False: "does not run", None: "unknown"}[driver.get("running")]
    parts.append(
        f"<p>ingest driver: {running}; last status {escape(_ago(driver.get('updated_s'), report.generated_s))}</p>"
    )
    rows = [
        (p.topic, p.partition, p.state.value, p.window[-1].lag, p.window[-1].committed, p.window[-1].end)
        for p in report.lag
    ]
    return "".join([*parts, _table(["topic", "partition", "state", "lag", "committed", "end"], rows)])


def tables_html(report: LakeReport) -> str:
    parts = ["<h2>Tables</h2>"]
    existing = [t for t in report.tables if t.exists]
    if existing:
        figure, axes = _figure(height=0.3 * len(existing) + 1)
        names = [t.table for t in existing]
        axes.barh(names, [t.files for t in existing], color="#90a4ae", label="files")
        axes.barh(names, [t.small_files for t in existing], color="#b26a00", label="small files")
        axes.set_xlabel("data files")
        axes.legend(fontsize="small")
        parts.append(_svg(figure, "table_files", "data files and small files per table"))
    else:
        parts.append(_empty("no table exists yet"))
    now = report.generated_s
    parts.append(
        _table(
            [
                "table",
                "version",
                "files",
                "small",
                "most files in a day",
                "bytes",
                "rows",
                "last commit",
                "last OPTIMIZE",
                "last VACUUM",
                "last checkpoint",
            ],
            [_table_cells(t, now) for t in report.tables],
        )
    )
    parts.append(
        f"<p>last OPTIMIZE: the commits' operations read newest first, at most {OPERATION_SCAN:,} per table; last "
        "VACUUM: the lineage records <code>tierlake table vacuum --execute</code> writes under "
        "<code>_lineage/vacuum/</code> (Spark's VACUUM leaves no commit here); last checkpoint: "
        "<code>_delta_log/_last_checkpoint</code> and when it was written.</p>"
    )
    if report.maintenance is not None:
        parts.append(_dag_runs(report.maintenance, now))
    return "".join(parts)


def _dag_runs(found: MaintenanceRuns, now_s: float) -> str:
    head = f"<h3>Maintenance DAG {escape(found.dag_id)}: last runs</h3>"
    if not found.runs:
        return head + _empty(found.note)
    rows = [
        (
            r.run_id,
            r.state,
            _ago(r.start_s, now_s),
            f"{r.end_s - r.start_s:.0f} s" if r.start_s and r.end_s else "running or queued",
        )
        for r in found.runs
    ]
    return head + _table(["run", "state", "started", "took"], rows) + f"<p>read from {escape(found.where)}</p>"


def _table_cells(row: TableRow, now_s: float) -> tuple[object, ...]:
    if not row.exists:
        return (row.table, "not written yet", "", "", "", "", "", "", "", "", "")
    checkpoint = (
        "none"
        if row.last_checkpoint is None
        else f"version {row.last_checkpoint}, {_ago(row.last_checkpoint_s, now_s)}"
    )
    return (
        row.table,
        row.version,
        row.files,
        row.small_files,
        _files_per_day(row),
        row.bytes,
        row.rows,
        _ago(row.last_commit_s, now_s),
        _optimized(row, now_s),
        "none recorded" if row.last_vacuum_s is None else _ago(row.last_vacuum_s, now_s),
        checkpoint,
    )


def _optimized(row: TableRow, now_s: float) -> str:
    """The last OPTIMIZE, or where the search for it stopped (the scan is bounded; beyond it is not "never")."""
    if row.last_optimize_s is not None:
        return _ago(row.last_optimize_s, now_s)
    if row.scanned_all:
        return "never (in the log kept)"
    return f"none in the last {row.scanned_commits} commits"


def _files_per_day(row: TableRow) -> str:
    """The most data files of one day partition, and over how many days (``table stats`` lists them per day)."""
    if not row.partitions:
        return "not partitioned"
    return f"{row.max_files_per_partition} ({row.partitions} days)"


def cache_html(report: LakeReport) -> str:
    cache = report.cache
    if cache is None:
        return "<h2>Edge cache</h2>" + _empty("no edge cache on this node (cache.dir holds no index)")
    counters = cache["counters"]
    figure, axes = _figure()
    labels = ["hits", "misses", "evictions"]
    axes.bar(labels, [counters.get(k, 0) for k in labels], color=["#2e7d32", "#c62828", "#90a4ae"])
    axes.set_ylabel("count")
    chart = _svg(figure, "cache_counters", "edge cache reads and evictions since it was created")
    rows = [
        ("hit ratio (requests)", f"{cache['hit_ratio']:.3f}"),
        ("hit ratio (bytes)", f"{cache['byte_hit_ratio']:.3f}"),
        ("fills (misses)", counters.get("misses", 0)),
        ("bytes filled", counters.get("bytes_filled", 0)),
        ("evictions", counters.get("evictions", 0)),
        ("used / budget (bytes)", f"{cache['used_bytes']} / {cache['capacity_bytes']}"),
        ("entries", cache["entries"]),
    ]
    return "<h2>Edge cache</h2>" + chart + _table(["figure", "value"], rows)


def archive_html(report: LakeReport) -> str:
    archive = report.archive
    parts = ["<h2>Cold tier</h2>"]
    if archive is None:
        return "".join([*parts, _empty("nothing archived yet and no tape library")])
    sites = archive["sites"]
    if sites:
        figure, axes = _figure()
        names = [s["site"] for s in sites]
        used = [s["used_bytes"] / 1e6 for s in sites]
        free = [(s["capacity_bytes"] - s["used_bytes"]) / 1e6 for s in sites]
        axes.bar(names, used, color="#1565c0", label="used")
        axes.bar(names, free, bottom=used, color="#cfd8dc", label="free")
        axes.set_ylabel("MB")
        axes.legend(fontsize="small")
        parts.append(_svg(figure, "tape_sites", "tape occupancy per site"))
    parts.append(_table(["state", "files"], sorted(archive["states"].items())))
    parts.append(f"<p>files under legal hold: {archive['holds']}</p>")
    verifies = archive["verifies"]
    rows = [
        (
            c,
            r["site"],
            r["files"],
            r["bytes"],
            verifies.get(c, {}).get("at", "never"),
            verifies.get(c, {}).get("bad", "-"),
        )
        for c, r in archive["cartridges"].items()
    ]
    parts.append(_table(["cartridge", "site", "files", "bytes", "last verify", "bad"], rows))
    return "".join(parts)


def training_html(report: LakeReport) -> str:
    head = "<h2>Training checkpoints</h2>"
    rows = report.checkpoints
    if rows is None:
        return head + _empty("checkpoints were not listed (see the verdicts, or `tierlake checkpoint list`)")
    if not rows:
        return head + _empty("no checkpoint tier is configured")
    cells = [
        (
            r.tier,
            "could not be listed" if r.error else r.runs,
            "" if r.error else r.checkpoints,
            "" if r.error else r.unfinished,
            "" if r.error else _newest(r.newest_step, r.newest_run),
        )
        for r in rows
    ]
    return head + _table(["tier", "runs", "committed checkpoints", "unfinished", "newest committed step"], cells)


def _newest(step: int | None, run: str | None) -> str:
    return "none" if step is None else f"{step} (run {run})"


def render_html(report: LakeReport) -> str:
    """The whole page."""
    level = report.level
    title = f"tierlake lake report: {level.name}"
    header = (
        f"<h1>{escape(title)}</h1><p>built {escape(_when(report.generated_s))}; window since "
        f"{escape(_when(report.since_s))}. All time, not the window: the reconciliation (every offset bronze holds) "
        "and the edge cache's counters (since the cache was created).</p>"
    )
    body = "".join(
        [
            header,
            verdicts_html(report.verdicts),
            ingestion_html(report),
            lag_html(report),
            tables_html(report),
            cache_html(report),
            archive_html(report),
            training_html(report),
        ]
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>"
    )
