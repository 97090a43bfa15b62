"""The direct page reader (``loaders.pages``) against pyarrow's own reader, on files of every shape it takes and on
the shapes it must leave to pyarrow."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import WriterProperties, write_deltalake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loaders import pages
from loaders.batches import ArrayPool
from loaders.dataset import OrderOptions, delta_dataset
from loaders.loader import DeltaLoader

_TYPES = {"int32": pa.int32(), "int64": pa.int64(), "float32": pa.float32(), "float64": pa.float64()}


@contextmanager
def opened(path: Path) -> Iterator[tuple[int, pq.ParquetFile]]:
    with io.FileIO(path) as handle:
        yield handle.fileno(), pq.ParquetFile(path)


def read_both(path: Path, columns: list[str]) -> list[tuple[pa.Table | None, pa.Table]]:
    """(direct, pyarrow) for every row group of ``path``; the direct read once through a descriptor and once through
    a pyarrow file's ``read_at`` (as an S3 object is read), which must agree."""
    with opened(path) as (fd, parquet), pa.OSFile(str(path)) as native:
        results = []
        for rg in range(parquet.num_row_groups):
            direct = pages.read_row_group(fd, parquet, rg, columns)
            through_read_at = pages.read_row_group(native, parquet, rg, columns)
            assert (direct is None) == (through_read_at is None)
            assert direct is None or through_read_at is None or direct.equals(through_read_at)
            results.append((direct, parquet.read_row_group(rg, columns=columns)))
        return results


def assert_same(direct: pa.Table | None, expected: pa.Table) -> None:
    assert direct is not None, "the direct reader refused a shape it takes"
    assert direct.schema.equals(expected.schema, check_metadata=True), (direct.schema, expected.schema)
    assert direct.equals(expected)


def columns_of(rows: int, width: int, kind: str, values: int, seed: int) -> dict[str, pa.Array]:
    rng = np.random.default_rng(seed)
    dtype = _TYPES[kind].to_pandas_dtype()
    flat = rng.integers(0, values, size=rows * width).astype(dtype)
    offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
    return {
        "id": pa.array(np.arange(rows, dtype=np.int64)),
        "tokens": pa.ListArray.from_arrays(offsets, pa.array(flat)),
        "score": pa.array(rng.integers(0, values, size=rows).astype(dtype)),
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.integers(1, 600),
    width=st.integers(1, 300),
    kind=st.sampled_from(sorted(_TYPES)),
    values=st.sampled_from([1, 2, 200, 5_000, 70_000, 2**31 - 1]),
    dictionary=st.booleans(),
    compression=st.sampled_from(["NONE", "SNAPPY", "ZSTD", "GZIP"]),
    page_version=st.sampled_from(["1.0", "2.0"]),
    page_size=st.sampled_from([64, 1024, 1 << 20]),
    row_group=st.integers(1, 700),
)
def test_pyarrow_written_files_read_as_pyarrow_reads_them(  # noqa: PLR0917 - one writer setting each
    tmp_path: Path,
    rows: int,
    width: int,
    kind: str,
    values: int,
    dictionary: bool,
    compression: str,
    page_version: str,
    page_size: int,
    row_group: int,
) -> None:
    path = tmp_path / f"{rows}-{width}-{kind}-{values}-{dictionary}-{compression}-{page_version}-{page_size}.parquet"
    pq.write_table(
        pa.table(columns_of(rows, width, kind, values, seed=rows)),
        path,
        row_group_size=row_group,
        use_dictionary=dictionary,
        compression=compression,
        data_page_version=page_version,
        data_page_size=page_size,
    )
    results = read_both(path, ["id", "tokens", "score"])
    for direct, expected in results:
        if direct is None:
            # Refused: only dictionary indices in many runs of repeated values (pyarrow decodes those faster).
            assert dictionary
            assert values <= 2
            continue
        assert_same(direct, expected)
    assert any(direct is not None for direct, _ in results) or dictionary


@pytest.mark.parametrize("vocabulary", [200, 50_257, 70_000])
def test_delta_rs_token_tables_take_the_direct_path(tmp_path: Path, vocabulary: int) -> None:
    """The bench's layout (delta-rs, dictionary pages, uncompressed and zstd) with dictionary indices of 8, 16 and
    17 bits (the last unpacked from 64-bit words)."""
    for compression in ("UNCOMPRESSED", "ZSTD"):
        table = tmp_path / f"t-{compression}"
        props = WriterProperties(compression=compression, max_row_group_size=1000, write_batch_size=256)
        write_deltalake(
            str(table), pa.table(columns_of(2500, 64, "int32", vocabulary, seed=1)), writer_properties=props
        )
        for file in sorted(table.glob("*.parquet")):
            for direct, expected in read_both(file, ["id", "tokens"]):
                assert_same(direct, expected)


def test_fixed_size_lists_keep_their_type(tmp_path: Path) -> None:
    path = tmp_path / "fixed.parquet"
    flat = pa.array(np.arange(40 * 6, dtype=np.int32))
    pq.write_table(pa.table({"tokens": pa.FixedSizeListArray.from_arrays(flat, 6)}), path, row_group_size=17)
    for direct, expected in read_both(path, ["tokens"]):
        assert_same(direct, expected)
        assert direct is not None
        assert pa.types.is_fixed_size_list(direct.schema.field("tokens").type)


@pytest.mark.parametrize(
    ("name", "column"),
    [
        ("null token", pa.array([[1, 2], [3, None], [5, 6]], pa.list_(pa.int32()))),
        ("null row", pa.array([[1, 2], None, [5, 6]], pa.list_(pa.int32()))),
        ("uneven rows", pa.array([[1, 2], [3], [5, 6]], pa.list_(pa.int32()))),
        ("empty row", pa.array([[1, 2], [], [5, 6]], pa.list_(pa.int32()))),
        ("null number", pa.array([1, None, 3], pa.int64())),
        ("strings", pa.array(["a", "b", "c"])),
        ("timestamps", pa.array([1, 2, 3], pa.timestamp("us", tz="UTC"))),
        ("small ints", pa.array([1, 2, 3], pa.int16())),
        ("unsigned", pa.array([1, 2, 3], pa.uint32())),
        ("nested lists", pa.array([[[1]], [[2]], [[3]]], pa.list_(pa.list_(pa.int32())))),
        ("structs", pa.array([{"a": 1}, {"a": 2}, {"a": 3}])),
        ("booleans", pa.array([True, False, True])),
    ],
)
@pytest.mark.parametrize("page_version", ["1.0", "2.0"])
def test_shapes_it_does_not_take_are_left_to_pyarrow(
    tmp_path: Path, name: str, column: pa.Array, page_version: str
) -> None:
    path = tmp_path / "refused.parquet"
    pq.write_table(pa.table({"c": column}), path, data_page_version=page_version)
    with opened(path) as (fd, parquet):
        assert pages.read_row_group(fd, parquet, 0, ["c"]) is None, name


def v1_levels(repetition_bits: int, count: int = 8) -> memoryview:
    """A list page's levels in v1 layout: one bit-packed group of 8 repetition levels, then ``count`` definition
    levels of 3 (every value present) as one run."""
    rep = bytes([0x03, repetition_bits])  # header: one bit-packed group; the 8 levels, lowest bit first
    definition = bytes([count << 1, 0x03])  # header: a run of ``count``; the value 3
    return memoryview(len(rep).to_bytes(4, "little") + rep + len(definition).to_bytes(4, "little") + definition)


@pytest.mark.parametrize(
    ("bits", "shape"),
    [
        (0b10101010, (4, 2)),  # levels 0,1,0,1,...: four rows of two values
        (0b11011011, None),  # 1,1,0,1,1,0,1,1: the page begins inside a row (some writers cut pages by size alone)
        (0b10110110, None),  # 0,1,1,0,1,1,0,1: rows of 3, 3 and 2 values
    ],
)
def test_list_levels_give_rows_of_one_width_that_begin_the_page_or_nothing(
    bits: int, shape: tuple[int, int] | None
) -> None:
    """pyarrow's writer cuts pages only at rows, so a page that begins mid-row is built here by hand."""
    levels = v1_levels(bits)
    assert pages._decode_levels(levels, 8, 1, 3) == shape
    if shape is None:
        with pytest.raises(pages._Refused):
            pages._levels_shape(levels, 8, 1, 3)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_damaged_chunk_is_refused_or_read_as_pyarrow_reads_it(tmp_path: Path, data: st.DataObject) -> None:
    """Flipped bytes anywhere in the column chunks: the direct reader returns None (pyarrow then reports the damage
    in its own words) or exactly what pyarrow reads; it never raises, and never returns rows pyarrow does not."""
    source = tmp_path / "clean.parquet"
    if not source.exists():
        write_table = columns_of(300, 16, "int32", 50_257, seed=5)
        pq.write_table(pa.table(write_table), source, row_group_size=300, data_page_size=2048, use_dictionary=True)
    raw = bytearray(source.read_bytes())
    meta = pq.ParquetFile(source).metadata.row_group(0)
    start = min(meta.column(i).dictionary_page_offset or meta.column(i).data_page_offset for i in range(3))
    end = max(meta.column(i).file_offset or 0 for i in range(3))
    end = max(end, start + sum(meta.column(i).total_compressed_size for i in range(3)))
    flips = data.draw(st.integers(1, 4))
    for _ in range(flips):
        at = data.draw(st.integers(start, end - 1))
        raw[at] ^= data.draw(st.integers(1, 255))
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(bytes(raw))
    with opened(damaged) as (fd, parquet):
        direct = pages.read_row_group(fd, parquet, 0, ["id", "tokens", "score"])
        if direct is None:
            return
        try:
            expected = parquet.read_row_group(0, columns=["id", "tokens", "score"])
        except (OSError, pa.ArrowException):
            if flips > 1:
                return  # pyarrow stopped at one flip; another may sit in values, which neither reader checks
            # One flip that pyarrow rejects and this reader does not (a field it does not need, such as a page's
            # statistics): the values read must still be the file's, as pyarrow reads the undamaged file.
            expected = pq.ParquetFile(source).read_row_group(0, columns=["id", "tokens", "score"])
        assert_same(direct, expected)


def test_pooled_arrays_are_reused_once_released(tmp_path: Path) -> None:
    path = tmp_path / "pooled.parquet"
    pq.write_table(pa.table(columns_of(400, 64, "int32", 50_257, seed=7)), path, row_group_size=200)
    pool = ArrayPool(8, min_bytes=0)
    with opened(path) as (fd, parquet):
        first = pages.read_row_group(fd, parquet, 0, ["tokens"], pool.empty)
        assert first is not None
        held = first.column("tokens").chunk(0).values.to_numpy()
        second = pages.read_row_group(fd, parquet, 1, ["tokens"], pool.empty)
        assert np.array_equal(held, parquet.read_row_group(0, columns=["tokens"]).column("tokens").chunk(0).values)
        del first, held
        third = pages.read_row_group(fd, parquet, 0, ["tokens"], pool.empty)
        assert_same(second, parquet.read_row_group(1, columns=["tokens"]))
        assert_same(third, parquet.read_row_group(0, columns=["tokens"]))


def row_tokens(ids: np.ndarray[Any, Any], width: int = 32) -> np.ndarray[Any, Any]:
    """Tokens that differ along a row (as real text does: no runs of one value) and follow from the row's id."""
    return ((ids[:, None] * 31 + np.arange(width) * 7) % 50_257).astype(np.int32)


def _epoch_ids(table: Path, **options: Any) -> list[int]:
    dataset = delta_dataset(table, columns=["id", "tokens"], order=OrderOptions(seed=3, shuffle=True))
    loader = DeltaLoader(dataset, batch_size=16, num_workers=2, **options)
    ids: list[int] = []
    for batch in loader:
        assert (batch["tokens"].numpy() == row_tokens(batch["id"].numpy())).all()
        ids.extend(batch["id"].tolist())
    return ids


def test_the_loader_serves_every_row_once_through_the_direct_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = 3000
    ids = np.arange(rows, dtype=np.int64)
    tokens = pa.ListArray.from_arrays(
        pa.array(np.arange(0, rows * 32 + 1, 32, dtype=np.int32)), pa.array(row_tokens(ids).reshape(-1))
    )
    props = WriterProperties(compression="UNCOMPRESSED", max_row_group_size=500, write_batch_size=100)
    write_deltalake(str(tmp_path / "t"), pa.table({"id": ids, "tokens": tokens}), writer_properties=props)
    taken = []
    real = pages.read_row_group

    def counting(*args: Any, **kwargs: Any) -> pa.Table | None:
        table = real(*args, **kwargs)
        taken.append(table is not None)
        return table

    monkeypatch.setattr(pages, "read_row_group", counting)
    served = _epoch_ids(tmp_path / "t", tail="pad")
    assert sorted(set(served)) == list(range(rows))
    assert taken
    assert all(taken), "every row group of this layout goes through the direct reader"


@pytest.mark.parametrize(
    "header",
    [
        bytes([0x1C] * 3000 + [0] * 3000),  # structs inside structs, deeper than any page header
        bytes([0x19, 0xF1, 0xFF, 0xFF, 0x3F, 0]),  # a list claiming millions of booleans in six bytes
        bytes([0x15]),  # cut off inside a field
    ],
)
def test_a_page_header_that_cannot_be_one_is_refused(header: bytes) -> None:
    with pytest.raises((pages._Refused, IndexError)):  # read_row_group turns both into None
        pages._struct(memoryview(header), 0)
