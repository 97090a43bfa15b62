"""The operator's view of the lake: ``tierlake report`` (one offline HTML page with charts and verdicts) and
``tierlake metrics serve`` (one Prometheus endpoint).

- :mod:`pipelines.observe.gather`: reads every part (ingestion, Kafka lag, tables, edge cache, cold tier, training
  checkpoints) into a :class:`~pipelines.observe.gather.LakeReport`;
- :mod:`pipelines.observe.verdicts`: OK/WARN/ERR judgements, each naming its value and its fix (Burrow-style lag);
- :mod:`pipelines.observe.render`: the HTML page, charts as inline SVG;
- :mod:`pipelines.observe.metrics`: the same figures as Prometheus metric families.

It reads through delta-rs, boto3, DuckDB and Kafka's client, never Spark, so a report takes seconds.
"""

from pipelines.observe.gather import LakeReport, build_report
from pipelines.observe.render import render_html
from pipelines.observe.verdicts import Level, Verdict

__all__ = ["LakeReport", "Level", "Verdict", "build_report", "render_html"]
