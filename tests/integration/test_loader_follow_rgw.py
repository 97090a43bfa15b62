"""The loader following a live table on Ceph RGW (s3://): appends by delta-rs in another thread while it iterates,
an OPTIMIZE in between, resume from a state taken mid-stream, and a schema change that stops it."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from loaders import DeltaLoader, OrderOptions, delta_dataset
from loaders.follow import FollowOptions
from tests.unit.loader_tables import token_rows
from tierlake.config import Settings
from tierlake.errors import SchemaMismatch
from tiers.s3 import delta_storage_options


def new_table(settings: Settings) -> str:
    """A table of 2 versions (ids 0..99) in the lake bucket, at a path of its own."""
    uri = f"s3://{settings.s3.lake_bucket}/tests/loader-follow/{uuid.uuid4()}"
    options = delta_storage_options(settings.s3)
    write_deltalake(uri, token_rows(0, 60), storage_options=options)
    write_deltalake(uri, token_rows(60, 40), mode="append", storage_options=options)
    return uri


def test_appends_and_an_optimize_on_rgw_while_the_loader_follows(settings: Settings) -> None:
    uri, options = new_table(settings), delta_storage_options(settings.s3)
    dataset = delta_dataset(uri, version=1, columns=["id"], storage_options=options, order=OrderOptions(seed=2))
    loader = DeltaLoader(dataset, batch_size=10, follow=FollowOptions(idle_timeout_s=6, poll_interval_s=0.2))
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for index in range(3):  # v2..v4
                time.sleep(0.3)
                write_deltalake(uri, token_rows(100 + 30 * index, 30), mode="append", storage_options=options)
            DeltaTable(uri, storage_options=options).optimize.compact()  # v5: every file so far, dataChange false
            write_deltalake(uri, token_rows(190, 30), mode="append", storage_options=options)  # v6
        except BaseException as exc:  # surfaced by the assertion below, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    served = [i for batch in loader for i in batch["id"].tolist()]
    thread.join()
    assert errors == []
    assert sorted(served) == list(range(220))  # every row once, none again after the compaction
    history = {e["version"]: e["operation"] for e in DeltaTable(uri, storage_options=options).history()}
    assert history[5] == "OPTIMIZE"
    assert loader.state_dict()["follow"]["version"] == 7


def test_resume_on_rgw_serves_the_identical_sequence_then_a_schema_change_stops_it(settings: Settings) -> None:
    uri, options = new_table(settings), delta_storage_options(settings.s3)
    for index in range(4):  # v2..v5
        write_deltalake(uri, token_rows(100 + 25 * index, 25), mode="append", storage_options=options)
    follow = FollowOptions(max_versions=4, idle_timeout_s=10, poll_interval_s=0.2)

    def loader() -> DeltaLoader:
        dataset = delta_dataset(uri, version=1, columns=["id"], storage_options=options, order=OrderOptions(seed=6))
        return DeltaLoader(dataset, batch_size=16, follow=follow)

    whole = [batch["id"].tolist() for batch in loader()]
    first = loader()
    head = []
    for batch in first:
        head.append(batch["id"].tolist())
        if len(head) == 9:  # in the new data: the snapshot gives 6 batches
            break
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    assert head + [batch["id"].tolist() for batch in resumed] == whole
    assert len(whole) == 6 + 6  # 96 rows of the snapshot, then 96 of the 100 new ones (4 wait for more)

    wider = token_rows(200, 10).append_column("extra", pa.array(np.zeros(10), pa.float64()))
    write_deltalake(uri, wider, mode="append", schema_mode="merge", storage_options=options)  # v6
    with pytest.raises(SchemaMismatch, match=r"version 6 of .* changes its schema"):
        list(resumed)
