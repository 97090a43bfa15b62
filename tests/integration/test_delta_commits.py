"""Delta commits that the object store arbitrates (``spark.delta_commits: conditional``, ``infra/logstore``).

Spark's log store creates each ``_delta_log`` entry with ``If-None-Match: *`` on RGW, as delta-rs does, so two
writers of one table (a second driver, or delta-rs maintenance beside a running ingestion) never both own a version.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from deltalake import DeltaTable
from py4j.protocol import Py4JJavaError  # type: ignore[import-untyped]

from pipelines.lake import maintenance
from tests.lake_tables import small_table
from tierlake.config import Settings
from tiers.s3 import delta_storage_options, s3_client

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.integration

ROUNDS = 8  # appends per writer


def _write_entry(spark: SparkSession, uri: str, lines: list[str]) -> None:
    """One log entry through the JVM's ConditionalPutLogStore, as Delta's commit does (``overwrite=False``)."""
    jvm: Any = spark._jvm
    conf: Any = spark._jsc.hadoopConfiguration()
    actions = jvm.java.util.ArrayList()
    for line in lines:
        actions.add(line)
    store = jvm.io.tierlake.delta.ConditionalPutLogStore(conf)
    store.write(jvm.org.apache.hadoop.fs.Path(uri), actions.iterator(), False, conf)


def test_an_existing_log_entry_is_refused_by_the_object_store_and_kept(spark: SparkSession, settings: Settings) -> None:
    """The store never probes before its PUT: the refusal of the second create comes from RGW (412)."""
    key = f"scratch/logstore_{uuid.uuid4().hex[:8]}/_delta_log/00000000000000000000.json"
    uri = f"s3a://{settings.s3.lake_bucket}/{key}"
    _write_entry(spark, uri, ['{"commitInfo":{"writer":"first"}}'])
    with pytest.raises(Py4JJavaError) as refused:
        _write_entry(spark, uri, ['{"commitInfo":{"writer":"second"}}'])
    assert refused.value.java_exception.getClass().getName() == "java.nio.file.FileAlreadyExistsException"
    body = s3_client(settings.s3).get_object(Bucket=settings.s3.lake_bucket, Key=key)["Body"].read()
    assert body == b'{"commitInfo":{"writer":"first"}}\n'


def test_a_fenced_table_refuses_commits_once_its_deadline_passes(spark: SparkSession, settings: Settings) -> None:
    """The writer lease's deadline, as the driver passes it on: commits under the prefix pass before it, and are
    refused with a clear reason after it (a driver resumed from a pause past its lease)."""
    jvm: Any = spark._jvm
    store = jvm.io.tierlake.delta.ConditionalPutLogStore
    prefix = f"s3a://{settings.s3.lake_bucket}/scratch/fenced_{uuid.uuid4().hex[:8]}/"
    store.fence(prefix, 60_000)
    try:
        _write_entry(spark, f"{prefix}_delta_log/00000000000000000000.json", ['{"commitInfo":{}}'])
        store.fence(prefix, 0)
        with pytest.raises(Py4JJavaError, match=r"refused: this driver's writer lease .* is unconfirmed"):
            _write_entry(spark, f"{prefix}_delta_log/00000000000000000001.json", ['{"commitInfo":{}}'])
        other = f"s3a://{settings.s3.lake_bucket}/scratch/unfenced_{uuid.uuid4().hex[:8]}/_delta_log/0.json"
        _write_entry(spark, other, ['{"commitInfo":{}}'])  # other tables are not this lease's
    finally:
        store.unfence(prefix)
    keys = s3_client(settings.s3).list_objects_v2(Bucket=settings.s3.lake_bucket, Prefix=prefix.split("/", 3)[3])
    assert [o["Key"].rsplit("/", 1)[1] for o in keys.get("Contents", [])] == ["00000000000000000000.json"]


RUST_WRITER = textwrap.dedent(
    """
    import json, sys
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake
    uri, options, rounds = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    for i in range(rounds):
        batch = pa.table({"station_id": [f"rs-{i}"], "power_kw": [float(i)]})
        write_deltalake(uri, batch, mode="append", storage_options=options)
        if i % 4 == 3:  # maintenance beside the appends: OPTIMIZE commits dataChange=false
            DeltaTable(uri, storage_options=options).optimize.compact()
    """
)


def test_spark_and_delta_rs_commit_to_one_table_at_once_and_lose_nothing(
    spark: SparkSession, settings: Settings
) -> None:
    """Spark appends while delta-rs appends and compacts the same table: every append lands exactly once."""
    table = small_table(settings, "race", appends=1, rows=5)
    rust_uri, spark_uri = maintenance.rust_uri(settings, table), maintenance.spark_uri(settings, table)
    options = json.dumps(delta_storage_options(settings.s3))
    rust = subprocess.Popen([sys.executable, "-c", RUST_WRITER, rust_uri, options, str(ROUNDS)])
    try:
        for i in range(ROUNDS):
            frame = spark.createDataFrame([(f"spark-{i}", float(i))], "station_id string, power_kw double")
            frame.write.format("delta").mode("append").save(spark_uri)
    finally:
        assert rust.wait(timeout=600) == 0
    data = DeltaTable(rust_uri, storage_options=delta_storage_options(settings.s3))
    seen = Counter(data.to_pyarrow_table().column("station_id").to_pylist())
    expected = Counter({f"{w}-{i}": 1 for w in ("spark", "rs") for i in range(ROUNDS)}) + Counter({"st-0": 5})
    assert seen == expected
    operations = Counter(entry["operation"] for entry in data.history())
    assert operations["WRITE"] == 2 * ROUNDS + 1  # delta-rs and Spark both name an append WRITE
    assert data.version() == sum(operations.values()) - 1  # one version per commit, none overwritten
