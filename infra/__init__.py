"""The local stack of real services, started natively on loopback: Kafka (KRaft), Ceph with RGW, Spark's jars.

``infra.stack`` drives them as one; each service module owns start, health and stop of its own processes,
with all state under the run directory of the settings.
"""
