"""Spark jobs of the lake, grouped by concern (layers: ``tierlake`` core and ``tiers`` below, the CLI and DAGs above).

- :mod:`pipelines.ingest`: Kafka -> bronze -> silver/quarantine/dropped -> gold, exactly once (the streaming path);
- :mod:`pipelines.lake`: operations on the lake's tables: maintenance (OPTIMIZE, VACUUM, checkpoints), the
  second-site mirror, the writer lease;
- :mod:`pipelines.checks`: reconciliation against Kafka, replay of quarantine, freshness to the commit;
- :mod:`pipelines.observe`: the operator's report and Prometheus metrics of the whole lake, read without Spark;
- :mod:`pipelines.synthetic`: synthetic EV and corpus streams, the producer, the demo's report;
- :mod:`pipelines.session`: the one SparkSession factory every job uses.

Nothing here starts services: the local stack is ``infra/``, reached only from the CLI and the tests.
"""
