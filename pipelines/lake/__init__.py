"""Operations on the lake's Delta tables: maintenance (OPTIMIZE, VACUUM, checkpoints, stats), the consistent
mirror to a second site, and the writer lease that keeps one writer per table on S3 without DynamoDB."""

from pipelines.lake.lease import TableLease

__all__ = ["TableLease"]
