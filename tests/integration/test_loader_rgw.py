"""The loader over a Delta table on Ceph RGW (s3://): pinned versions, every row once, the file-source seam, and
a missing file of the pinned version listed in the error."""

from __future__ import annotations

import uuid
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
from deltalake import DeltaTable, write_deltalake

from loaders import pages
from loaders.dataset import OrderOptions, delta_dataset
from loaders.loader import DeltaLoader
from loaders.table import ArrowFileSource, EdgeCacheSource
from tests.unit.loader_tables import token_rows
from tierlake.config import Settings
from tierlake.errors import NotFound
from tiers.s3 import delta_storage_options, s3_client


class DownloadingSource:
    """A read-through stand-in for the edge cache: fetches each file once with boto3, then serves the local copy."""

    def __init__(self, settings: Settings, root: Path) -> None:
        self.client = s3_client(settings.s3)
        self.root = root
        self.fetched: list[str] = []

    def open(self, uri: str) -> Any:
        parsed = urlparse(uri)
        local = self.root / parsed.netloc / parsed.path.lstrip("/")
        if not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(parsed.netloc, parsed.path.lstrip("/"), str(local))
            self.fetched.append(uri)
        return str(local)


@pytest.fixture(scope="module")
def table_uri(settings: Settings) -> str:
    uri = f"s3://{settings.s3.lake_bucket}/tests/loader/{uuid.uuid4()}"
    options = delta_storage_options(settings.s3)
    write_deltalake(uri, token_rows(0, 300), storage_options=options)
    write_deltalake(uri, token_rows(300, 200), mode="append", storage_options=options)
    return uri


def test_rgw_table_is_served_once_per_epoch_at_its_pinned_version(
    settings: Settings, table_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = delta_storage_options(settings.s3)
    dataset = delta_dataset(table_uri, version=0, storage_options=options, order=OrderOptions(seed=5))
    assert dataset.sources[0].plan.snapshot.files[0].uri.startswith("s3://")
    taken: list[bool] = []
    direct = pages.read_row_group

    def counting(*args: Any, **kwargs: Any) -> Any:
        table = direct(*args, **kwargs)
        taken.append(table is not None)
        return table

    monkeypatch.setattr(pages, "read_row_group", counting)
    batches = list(DeltaLoader(dataset, batch_size=7, tail="pad"))
    ids = np.concatenate([b["id"].numpy() for b in batches])
    assert set(ids.tolist()) == set(range(300))
    assert all((b["tokens"].numpy() == b["id"].numpy()[:, None]).all() for b in batches)
    assert taken
    assert all(taken), "the direct page reader read the S3 row groups with ranged reads"
    assert len(delta_dataset(table_uri, storage_options=options)) == 500


def test_rgw_reads_go_through_a_pluggable_file_source(settings: Settings, table_uri: str, tmp_path: Path) -> None:
    options = delta_storage_options(settings.s3)
    source = DownloadingSource(settings, tmp_path)
    dataset = delta_dataset(table_uri, storage_options=options, file_source=source)
    first = [b["id"].tolist() for b in DeltaLoader(dataset, batch_size=50)]
    direct = delta_dataset(table_uri, storage_options=options, file_source=ArrowFileSource(options))
    assert first == [b["id"].tolist() for b in DeltaLoader(direct, batch_size=50)]
    assert len(source.fetched) == len(dataset.sources[0].plan.snapshot.files)  # each file fetched once


def test_rgw_table_through_the_edge_cache(settings: Settings, table_uri: str) -> None:
    from tiers.cache import cache_from_settings  # noqa: PLC0415 - the cache tier only for this test

    options = delta_storage_options(settings.s3)
    cached = delta_dataset(
        table_uri,
        storage_options=options,
        file_source=EdgeCacheSource(partial(cache_from_settings, settings.cache.options, settings.s3)),
    )
    direct = delta_dataset(table_uri, storage_options=options, file_source=ArrowFileSource(options))
    through_cache = [b["id"].tolist() for b in DeltaLoader(cached, batch_size=64)]
    assert through_cache == [b["id"].tolist() for b in DeltaLoader(direct, batch_size=64)]
    cache = cache_from_settings(settings.cache.options, settings.s3)
    for file in cached.sources[0].plan.snapshot.files:
        parsed = urlparse(file.uri)
        assert cache.get_path(parsed.netloc, parsed.path.lstrip("/")).is_relative_to(settings.cache.directory)


def test_a_purged_file_of_the_pinned_version_is_named(settings: Settings) -> None:
    options = delta_storage_options(settings.s3)
    uri = f"s3://{settings.s3.lake_bucket}/tests/loader/{uuid.uuid4()}"
    write_deltalake(uri, token_rows(0, 10), storage_options=options)
    write_deltalake(uri, token_rows(10, 10), mode="append", storage_options=options)
    victim = sorted(DeltaTable(uri, storage_options=options).file_uris())[1]
    parsed = urlparse(victim)
    s3_client(settings.s3).delete_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
    with pytest.raises(NotFound, match="1 of 2 data files") as caught:
        delta_dataset(uri, storage_options=options, plan_cache_dir=None, order=OrderOptions(seed=1))
    assert victim in str(caught.value)
