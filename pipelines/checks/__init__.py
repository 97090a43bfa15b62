"""Checks over what ingestion wrote: reconciliation (Kafka = bronze = silver + quarantine + dropped), replay of
quarantined records after a fix, and freshness measured to the Delta commit."""

from pipelines.checks.freshness import anomaly_freshness, freshness
from pipelines.checks.reconcile import reconcile

__all__ = ["anomaly_freshness", "freshness", "reconcile"]
