"""The named validation rules of silver, run over Arrow batches of bronze rows in the streaming plan.

A record is read by :func:`pipelines.ingest.records.judge_record` (strict RFC 8259 JSON, exact types; the rules and
their order are listed there and in the README's "Ingestion rules") and quarantined under the first rule it breaks, with
an error that names the field and the value. Spark runs that reader in its Python workers as a scalar Arrow UDF:
a batch of records crosses to Python once as Arrow, not row by row. Two more outcomes need history and live in
``pipelines.ingest.silver``: ``late_event`` (quarantined) and ``duplicate_event_id`` (dropped, counted, never silent).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from pipelines.ingest.records import RULES as RECORD_RULES
from pipelines.ingest.records import Verdict, judge_record
from tierlake.entities import EntitySpec

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame

RULES = (*RECORD_RULES, "late_event")
"""Every quarantine rule, in the order a record is judged (``late_event`` last: it needs history)."""

_SPARK_TYPES = {
    "string": "string",
    "int": "int",
    "long": "bigint",
    "double": "double",
    "boolean": "boolean",
    "timestamp": "timestamp",
}


def record_ddl(entity: EntitySpec) -> str:
    """The typed record (``_rec``) of ``entity`` as a Spark DDL struct."""
    return "struct<" + ", ".join(f"`{f.name}`: {_SPARK_TYPES[f.type]}" for f in entity.fields) + ">"


def judgement_ddl(entity: EntitySpec) -> str:
    """The judgement of a record: ``rule``, ``error``, ``extra_fields`` and the typed record ``_rec``."""
    return f"rule: string, error: string, extra_fields: map<string,string>, _rec: {record_ddl(entity)}"


def _arrow_type(kind: str) -> pa.DataType:
    import pyarrow as pa  # noqa: PLC0415

    types = {
        "string": pa.string(),
        "int": pa.int32(),
        "long": pa.int64(),
        "double": pa.float64(),
        "boolean": pa.bool_(),
        "timestamp": pa.timestamp("us", tz="UTC"),
    }
    return types[kind]


def judgement_columns(verdicts: list[Verdict], entity: EntitySpec) -> dict[str, pa.Array]:
    """The verdicts of a batch as the Arrow columns ``rule``, ``error``, ``extra_fields`` and ``_rec``."""
    import pyarrow as pa  # noqa: PLC0415

    fields = [
        pa.array([v.record[f.name] if v.record else None for v in verdicts], type=_arrow_type(f.type))
        for f in entity.fields
    ]
    record = pa.StructArray.from_arrays(
        fields,
        fields=[pa.field(f.name, _arrow_type(f.type)) for f in entity.fields],
        mask=pa.array([v.record is None for v in verdicts], type=pa.bool_()),
    )
    extra = [list(v.extra.items()) if v.extra is not None else None for v in verdicts]
    return {
        "rule": pa.array([v.rule for v in verdicts], type=pa.string()),
        "error": pa.array([v.error for v in verdicts], type=pa.string()),
        "extra_fields": pa.array(extra, type=pa.map_(pa.string(), pa.string())),
        "_rec": record,
    }


def judge_arrays(values: pa.Array, keys: pa.Array, ingest_times: pa.Array, *, entity: EntitySpec) -> pa.Array:
    """The scalar Arrow UDF of the rules: the judgement of each record as one struct array (``JUDGEMENT``)."""
    import pyarrow as pa  # noqa: PLC0415

    verdicts = [
        judge_record(value, key, entity, ingest_time=at)
        for value, key, at in zip(values.to_pylist(), keys.to_pylist(), ingest_times.to_pylist(), strict=True)
    ]
    columns = judgement_columns(verdicts, entity)
    return pa.StructArray.from_arrays(list(columns.values()), names=list(columns.keys()))


def classify(bronze: DataFrame, entity: EntitySpec) -> DataFrame:
    """Bronze rows with ``rule`` and ``error`` (both null for a valid record), ``_rec`` (the typed record, null for
    a quarantined one) and ``extra_fields`` (undeclared keys, their values as JSON text).

    The reader runs as a scalar Arrow UDF (``arrow_udf``, Spark 4.1+): Arrow in and out, no pandas, a batch of
    records per call.
    """
    from pyspark.sql import functions as F  # noqa: PLC0415
    from pyspark.sql.pandas.functions import ArrowUDFType, arrow_udf  # noqa: PLC0415

    function: Any = partial(judge_arrays, entity=entity)
    judge = arrow_udf(function, f"struct<{judgement_ddl(entity)}>", ArrowUDFType.SCALAR)
    judged = judge(F.col("value"), F.col("key"), F.col("ingest_time")).alias("_judgement")
    return bronze.select("*", judged).select(
        *bronze.columns,
        *(F.col(f"_judgement.{name}").alias(name) for name in ("rule", "error", "extra_fields", "_rec")),
    )
