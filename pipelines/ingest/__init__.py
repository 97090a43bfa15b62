"""The streaming path, Kafka -> bronze -> silver/quarantine/dropped -> gold, exactly once across driver kills.

Entry points: :func:`run_until_caught_up` and :func:`run_continuous` (``tierlake ingest run|serve``), which hold
each entity's writer lease; :func:`judge_record` reads one record strictly (the rules of silver).
"""

from pipelines.ingest.driver import IngestQueries, run_continuous, run_until_caught_up
from pipelines.ingest.records import RULES as RECORD_RULES
from pipelines.ingest.records import Verdict, judge_record
from pipelines.ingest.rules import RULES

__all__ = [
    "RECORD_RULES",
    "RULES",
    "IngestQueries",
    "Verdict",
    "judge_record",
    "run_continuous",
    "run_until_caught_up",
]
