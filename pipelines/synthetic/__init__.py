"""Synthetic data: EV telemetry and text-corpus streams (pure functions of a seed, bad records included with the
outcome they must get), the idempotent producer, and the demo's report."""

from pipelines.synthetic.datasets import Record, ev_stream, good_records
from pipelines.synthetic.produce import produce_events

__all__ = ["Record", "ev_stream", "good_records", "produce_events"]
