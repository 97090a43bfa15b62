"""A direct reader for the row groups a training table usually holds: numbers and equal-length lists of numbers
with no nulls, plain or dictionary encoded, uncompressed or compressed with a codec Arrow has.

pyarrow's reader is general: for every value of a list column it decodes a repetition and a definition level and
builds the list offsets from them. In a token column of 2,048 tokens a row those levels say the same thing for every
row, and a page's level bytes repeat whenever its rows do. This reader decodes each distinct level stream once (a
small memo keyed by its bytes), checks that every row has the same length and nothing is null, and takes the values
out of the page with numpy: plain values are copied, and a dictionary page's indices, bit-packed runs of one size
back to back, become one view (8, 16 or 32 bits) or one vectorised unpack (other widths) and a ``numpy.take``.

Anything else (nulls, lists of unequal length, nested or logical types, other encodings, a page that does not begin
at a row) makes :func:`read_row_group` return None and the caller reads the row group with pyarrow. Either way the
table is the same; ``tests/unit/test_loader_pages.py`` compares the two on files of every shape this reader takes
and on the shapes it must refuse.

The file format (Apache Parquet's ``parquet.thrift``): a column chunk is a run of pages, each a Thrift
compact-protocol ``PageHeader`` followed by its payload. Field numbers used here: PageHeader 1 type, 2 uncompressed
size, 3 compressed size, 5 data page header, 7 dictionary page header, 8 data page v2 header.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.lib.stride_tricks import as_strided

_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 2, 3
_TRUE, _FALSE, _I32, _STRUCT = 1, 2, 5, 12  # Thrift compact types
_PLAIN, _PLAIN_DICTIONARY, _RLE, _RLE_DICTIONARY = 0, 2, 3, 8
_CODECS = {"UNCOMPRESSED": None, "SNAPPY": "snappy", "ZSTD": "zstd", "GZIP": "gzip", "BROTLI": "brotli"}
_NUMPY: dict[str, tuple[pa.DataType, np.dtype[Any]]] = {
    "INT32": (pa.int32(), np.dtype("<i4")),
    "INT64": (pa.int64(), np.dtype("<i8")),
    "FLOAT": (pa.float32(), np.dtype("<f4")),
    "DOUBLE": (pa.float64(), np.dtype("<f8")),
}
_MEMO_SIZE = 512
_DEPTH = 8  # structs within structs in a page header, at most
_TAKE_CHUNK = 1 << 15  # dictionary indices looked up per numpy.take call
# Runs decoded one by one (a Python loop) in a stream that is not uniform: a page's levels (decoded once per distinct
# stream), and dictionary indices (in every page; beyond this, pyarrow is faster).
_LEVEL_RUNS, _INDEX_RUNS = 1 << 15, 1 << 8
_levels_memo: dict[tuple[bytes, int, int, int], tuple[int, int] | None] = {}
Empty = Callable[[tuple[int, ...], np.dtype[Any]], npt.NDArray[Any]]  # numpy.empty, or a pool's
Source: TypeAlias = "int | pa.NativeFile"  # a local file's descriptor (read into ``Empty``), or a file with read_at


class _Refused(Exception):
    """The chunk holds something this reader does not take; the caller reads the row group with pyarrow."""


# ---------------------------------------------------------------------------------------------------------------
# Thrift compact protocol: just enough to read a page header


def _varint(b: memoryview, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = b[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def _struct(b: memoryview, i: int, depth: int = 0) -> tuple[dict[int, tuple[int, Any]], int]:
    """A struct's fields: number -> (compact type, value). A page header nests three deep at most, so a deeper one
    is damage."""
    if depth > _DEPTH:
        raise _Refused("header nested too deep")
    fields: dict[int, tuple[int, Any]] = {}
    last = 0
    while True:
        head = b[i]
        i += 1
        if head == 0:
            return fields, i
        kind, delta = head & 0x0F, head >> 4
        if delta:
            last += delta
        else:
            raw, i = _varint(b, i)
            last = (raw >> 1) ^ -(raw & 1)
        value, i = _value(b, i, kind, depth)
        fields[last] = (kind, value)


def _value(b: memoryview, i: int, kind: int, depth: int) -> tuple[Any, int]:  # noqa: PLR0911 - one per type
    if kind in (_TRUE, _FALSE):  # a field's booleans carry their value in the type
        return kind == _TRUE, i
    if kind == 3:
        return b[i], i + 1
    if kind in (4, 5, 6):
        raw, i = _varint(b, i)
        return (raw >> 1) ^ -(raw & 1), i
    if kind == 7:
        return None, i + 8
    if kind == 8:
        size, i = _varint(b, i)
        return None, i + size  # binary (statistics' min and max): not needed
    if kind in (9, 10):
        head = b[i]
        i += 1
        count, element = head >> 4, head & 0x0F
        if count == 15:
            count, i = _varint(b, i)
        if count > len(b) - i:
            raise _Refused("list longer than the header")
        for _ in range(count):
            if element in (_TRUE, _FALSE):  # a list's booleans take a byte each
                i += 1
            else:
                _, i = _value(b, i, element, depth + 1)
        return None, i
    if kind == _STRUCT:
        return _struct(b, i, depth + 1)
    raise _Refused(f"thrift type {kind}")


# ---------------------------------------------------------------------------------------------------------------
# The RLE / bit-packed hybrid encoding of levels and dictionary indices


def _unpack(data: npt.NDArray[np.uint8], width: int, count: int) -> npt.NDArray[Any]:
    """``count`` little-endian bit-packed values of ``width`` bits (groups of 8 values in ``width`` bytes)."""
    if width == 0:
        return np.zeros(count, np.uint32)
    if width in (8, 16, 32):
        return data[: count * width // 8].view(f"<u{width // 8}")
    groups = (count + 7) // 8
    packed = np.zeros(groups * width + 8, np.uint8)  # 8 bytes of slack: every value is read as a 64-bit word
    size = min(len(data), groups * width)
    packed[:size] = data[:size]
    out = np.empty((groups, 8), np.uint32)
    mask = np.uint64((1 << width) - 1)
    for j in range(8):  # value j of every group: the same byte offset and shift in each
        bit = j * width
        words = as_strided(packed[bit >> 3 :], shape=(groups, 8), strides=(width, 1)).view("<u8")[:, 0]
        out[:, j] = (words >> np.uint64(bit & 7)) & mask
    return out.reshape(-1)[:count]


def _hybrid(b: memoryview, start: int, end: int, width: int, count: int) -> npt.NDArray[Any]:
    """``count`` values of the hybrid encoding in ``b[start:end]``, as one array."""
    pieces = _hybrid_pieces(b, start, end, width, count)
    out = np.concatenate([piece.reshape(-1) for piece in pieces]) if len(pieces) != 1 else pieces[0].reshape(-1)
    return out[:count]


def _hybrid_pieces(  # noqa: PLR0917 - a slice of a buffer and what it holds
    b: memoryview, start: int, end: int, width: int, count: int, max_runs: int = _LEVEL_RUNS
) -> list[npt.NDArray[Any]]:
    """The values of the hybrid encoding in ``b[start:end]`` as consecutive arrays (views where the runs allow), at
    least ``count`` values in all. Refused when the runs are not uniform and more than ``max_runs``."""
    raw = np.frombuffer(b, np.uint8, count=end - start, offset=start)
    if 0 < width <= 32 and start < end:
        fast = _uniform_runs(b, raw, start, end, width, count)
        if fast is not None:
            return fast
    return _runs_one_by_one(b, raw, (start, end), width, count, max_runs)


def _runs_one_by_one(  # noqa: PLR0917 - a slice of a buffer and what it holds
    b: memoryview, raw: npt.NDArray[np.uint8], span: tuple[int, int], width: int, count: int, max_runs: int
) -> list[npt.NDArray[Any]]:
    """The runs of a stream that is not uniform, in a loop: a stretch of repeated-value runs becomes one
    ``numpy.repeat``, each bit-packed run an unpacked array. Refused beyond ``max_runs`` bit-packed runs, or more
    repeated-value runs than one per 64 values (plus 512): pyarrow decodes such pages faster."""
    start, end = span
    pieces: list[npt.NDArray[Any]] = []
    values: list[int] = []
    lengths: list[int] = []
    packed, repeated, most_repeated = 0, 0, count // 64 + 512
    got, i, value_bytes = 0, start, (width + 7) // 8
    while got < count:
        if i >= end:
            raise _Refused("hybrid run past its end")
        head, i = _varint(b, i)
        if (head >> 1) * (8 if head & 1 else 1) > count - got + 7 or head < 2:
            raise _Refused("hybrid run longer than the values left")
        if i + ((head >> 1) * width if head & 1 else value_bytes) > end:
            raise _Refused("hybrid run past its end")
        if head & 1:
            packed += 1
            if packed > max_runs:
                raise _Refused("too many mixed runs")
            if lengths:
                pieces.append(np.repeat(np.array(values, np.uint32), lengths))
                values, lengths = [], []
            groups = head >> 1
            pieces.append(_unpack(raw[i - start : i - start + groups * width], width, groups * 8))
            i += groups * width
            got += groups * 8
        else:
            repeated += 1
            if repeated > most_repeated:
                raise _Refused("too many short runs")
            values.append(int.from_bytes(b[i : i + value_bytes], "little"))
            lengths.append(head >> 1)
            i += value_bytes
            got += head >> 1
    if lengths:
        pieces.append(np.repeat(np.array(values, np.uint32), lengths))
    return pieces


def _uniform_runs(  # noqa: PLR0917 - a slice of a buffer and what it holds
    b: memoryview, raw: npt.NDArray[np.uint8], start: int, end: int, width: int, count: int
) -> list[npt.NDArray[Any]] | None:
    """The common case of dictionary indices, vectorised: bit-packed runs of one size back to back, the last maybe
    shorter. A 2-D view of the full runs (one row a run, its header bytes cut off) and the tail; None when the
    stream is not laid out that way."""
    head, data = _varint(b, start)
    if not head & 1 or head < 2:
        return None
    header = data - start
    per_run = (head >> 1) * 8
    stride = header + per_run * width // 8
    full = min(count // per_run, (end - start) // stride)
    runs = raw[: full * stride].reshape(full, stride)
    if full and not (runs[:, :header] == raw[:header]).all():
        return None
    pieces = []
    if full and width in (8, 16, 32):
        pieces.append(runs[:, header:].view(f"<u{width // 8}"))
    elif full:  # whole groups back to back once the headers are cut out: one bit-packed stream
        pieces.append(_unpack(np.ascontiguousarray(runs[:, header:]).reshape(-1), width, full * per_run))
    rest = count - full * per_run
    if rest:
        tail_head, data = _varint(b, start + full * stride)
        tail_bytes = (rest * width + 7) // 8
        if not tail_head & 1 or (tail_head >> 1) * 8 < rest or data + (tail_head >> 1) * width > end:
            return None  # a run is whole groups: one that claims more bytes than the stream holds is damage
        pieces.append(_unpack(raw[data - start : data - start + tail_bytes], width, rest))
    return pieces


def _levels_shape(b: memoryview, count: int, max_rep: int, max_def: int) -> tuple[int, int]:
    """(rows, values per row) of a page's levels; refused unless every value is present and, for a list, every row
    has the same length and the page begins at a row."""
    key = (bytes(b), count, max_rep, max_def)
    if key in _levels_memo:
        shape = _levels_memo[key]
    else:
        shape = _decode_levels(b, count, max_rep, max_def)
        if len(_levels_memo) >= _MEMO_SIZE:
            _levels_memo.clear()
        _levels_memo[key] = shape
    if shape is None:
        raise _Refused("levels: nulls, or lists of unequal length")
    return shape


def _decode_levels(b: memoryview, count: int, max_rep: int, max_def: int) -> tuple[int, int] | None:
    start = rep_end = 0
    if max_rep:
        rep_end = start + 4 + int.from_bytes(b[start : start + 4], "little")
        rep = _hybrid(b, start + 4, rep_end, max_rep.bit_length(), count)
    if max_def:
        def_len = int.from_bytes(b[rep_end : rep_end + 4], "little")
        defs = _hybrid(b, rep_end + 4, rep_end + 4 + def_len, max_def.bit_length(), count)
        if not (defs == max_def).all():
            return None
    if not max_rep:
        return count, 1
    starts = np.flatnonzero(rep == 0)
    if not len(starts) or starts[0] != 0:
        return None
    width = int(starts[1]) if len(starts) > 1 else count
    if width == 0 or count % width or len(starts) != count // width or (starts != np.arange(0, count, width)).any():
        return None
    return count // width, width


# ---------------------------------------------------------------------------------------------------------------
# Column chunks and row groups


def _column_plan(parquet: pq.ParquetFile, name: str) -> tuple[int, pa.Field, np.dtype[Any], int, int]:
    """(leaf index, Arrow field, numpy dtype, max repetition, max definition) of top-level column ``name``."""
    field = parquet.schema_arrow.field(name)
    schema = parquet.schema
    leaves = [i for i in range(len(schema)) if schema.column(i).path.split(".")[0] == name]
    if len(leaves) != 1:
        raise _Refused(f"{name}: {len(leaves)} leaves")
    leaf = schema.column(leaves[0])
    if leaf.physical_type not in _NUMPY:
        raise _Refused(f"{name}: physical type {leaf.physical_type}")
    arrow_type, dtype = _NUMPY[leaf.physical_type]
    kind = field.type
    if pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind):
        if kind.value_type != arrow_type or leaf.max_repetition_level != 1:
            raise _Refused(f"{name}: {kind}")
    elif kind != arrow_type or leaf.max_repetition_level != 0:
        raise _Refused(f"{name}: {kind}")
    return leaves[0], field, dtype, leaf.max_repetition_level, leaf.max_definition_level


def _read_chunk(  # noqa: PLR0917 - one column chunk's description
    source: Source,
    chunk: pq.ColumnChunkMetaData,
    rows: int,
    dtype: np.dtype[Any],
    levels_max: tuple[int, int],
    empty: Empty,
) -> tuple[npt.NDArray[Any], int]:
    """The values of one column chunk and the values per row. The raw chunk is read into a temporary of ``empty``
    and the values are copied out of it into an array of ``empty``."""
    codec_name = _CODECS.get(chunk.compression, "refused")
    if codec_name == "refused":
        raise _Refused(f"codec {chunk.compression}")
    codec = pa.Codec(codec_name) if codec_name else None
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    size = chunk.total_compressed_size
    b = _raw_chunk(source, start, size, empty)
    out = empty((chunk.num_values,), dtype)
    dictionary: npt.NDArray[Any] | None = None
    at, filled, width = 0, 0, 0
    while at < size:
        header, body = _struct(b, at)
        page_type, compressed = _int(header, 1), _int(header, 3)
        uncompressed = _int(header, 2)
        if body + compressed > size or uncompressed > chunk.total_uncompressed_size:
            raise _Refused("page sizes beyond the chunk's")
        at = body + compressed
        if page_type == _DICTIONARY_PAGE:
            fields = _sub(header, 7)
            if _int(fields, 2, _PLAIN) not in (_PLAIN, _PLAIN_DICTIONARY):
                raise _Refused("dictionary page not plain")
            page = _payload(b, body, compressed, uncompressed, codec)
            entries = _int(fields, 1)
            if len(page) < entries * dtype.itemsize:
                raise _Refused("dictionary page too short")
            dictionary = np.frombuffer(page, dtype, count=entries).copy()
            continue
        if page_type not in (_DATA_PAGE, _DATA_PAGE_V2):
            continue  # index pages
        count, encoding, levels, values = _data_page(b, body, (compressed, uncompressed), header, codec, levels_max)
        if not count:
            continue  # an empty page (some writers leave one when a page fills exactly)
        row_width = _levels_shape(levels, count, *levels_max)[1]
        if width and row_width != width:
            raise _Refused("rows of different lengths across pages")
        width = row_width
        if filled + count > len(out):
            raise _Refused("more values than the chunk says")
        _values(values, encoding, dictionary, out[filled : filled + count])
        filled += count
    if filled != len(out) or (width and filled != rows * width) or (not width and rows):
        raise _Refused("value count differs from the row group's")
    return out, max(width, 1)


def _raw_chunk(source: Source, start: int, size: int, empty: Empty) -> memoryview:
    """The bytes of a column chunk: read into a buffer of ``empty`` from a descriptor, or one ranged read."""
    if isinstance(source, int):
        scratch = empty((size,), np.dtype(np.uint8))
        b = memoryview(scratch.data)
        if os.preadv(source, [b], start) != size:
            raise _Refused("short read")
        return b
    data = source.read_at(size, start)
    if len(data) != size:
        raise _Refused("short read")
    return memoryview(data).cast("B")


def _values(values: memoryview, encoding: int, dictionary: npt.NDArray[Any] | None, target: npt.NDArray[Any]) -> None:
    """A data page's values, plain or dictionary indices, decoded into ``target``."""
    count = len(target)
    if encoding == _PLAIN:
        if len(values) < count * target.itemsize:
            raise _Refused("plain page too short")
        target[:] = np.frombuffer(values, target.dtype, count=count)
    elif encoding in (_PLAIN_DICTIONARY, _RLE_DICTIONARY) and dictionary is not None and len(values):
        width = values[0]
        if width > 32:
            raise _Refused(f"dictionary indices of {width} bits")
        _take(dictionary, _hybrid_pieces(values, 1, len(values), width, count, _INDEX_RUNS), target)
    else:
        raise _Refused(f"encoding {encoding}")


def _int(fields: dict[int, tuple[int, Any]], number: int, default: int | None = None) -> int:
    """Field ``number`` of a parsed header: a count, a size or an enum, so a Thrift i32 of at least 0."""
    kind, value = fields.get(number, (_I32, default))
    if kind != _I32 or value is None or value < 0:
        raise _Refused(f"header field {number}: {value!r}")
    return int(value)


def _sub(fields: dict[int, tuple[int, Any]], number: int) -> dict[int, tuple[int, Any]]:
    kind, value = fields.get(number, (None, None))
    if kind != _STRUCT or not isinstance(value, dict):
        raise _Refused(f"header field {number}: {value!r}")
    return value


def _take(dictionary: npt.NDArray[Any], pieces: list[npt.NDArray[Any]], target: npt.NDArray[Any]) -> None:
    """The dictionary's entries at the indices of ``pieces`` (2-D runs or 1-D arrays), in order, into ``target``.

    ``numpy.take`` first converts its indices to ``intp``: 8 bytes for each 2-byte index, a fresh temporary as large
    as four copies of a token page. Taking ``_TAKE_CHUNK`` indices at a time keeps that temporary in the cache."""
    at = 0
    for whole in pieces:
        size = min(whole.size, len(target) - at)
        piece = whole.reshape(-1)[:size] if size < whole.size else whole  # the last run's padding cut off
        if size and int(piece.max()) >= len(dictionary):
            raise _Refused("dictionary index out of range")
        out = target[at : at + size].reshape(piece.shape)
        step = max(1, _TAKE_CHUNK // (piece.shape[1] if piece.ndim == 2 else 1))
        for first in range(0, len(piece), step):
            np.take(dictionary, piece[first : first + step], out=out[first : first + step], mode="clip")
        at += size
    if at != len(target):
        raise _Refused("fewer indices than values")


def _payload(b: memoryview, body: int, compressed: int, uncompressed: int, codec: pa.Codec | None) -> memoryview:
    page = b[body : body + compressed]
    if codec is None:
        return page
    return memoryview(codec.decompress(page, decompressed_size=uncompressed)).cast("B")  # Arrow buffers say "b"


def _data_page(  # noqa: PLR0917 - a page's place in its chunk, and how to read it
    b: memoryview,
    body: int,
    sizes: tuple[int, int],
    header: dict[int, Any],
    codec: pa.Codec | None,
    levels_max: tuple[int, int],
) -> tuple[int, int, memoryview, memoryview]:
    """(values in the page, their encoding, the level bytes, the value bytes) of a data page, v1 or v2; the level
    bytes in v1's layout (each stream after its 4-byte length)."""
    compressed, uncompressed = sizes
    max_rep, max_def = levels_max
    if _int(header, 1) == _DATA_PAGE:  # the whole payload is compressed
        fields = _sub(header, 5)
        if (max_rep and _int(fields, 4) != _RLE) or (max_def and _int(fields, 3) != _RLE):
            raise _Refused("levels not RLE")
        page = _payload(b, body, compressed, uncompressed, codec)
        at = 0
        for present in (max_rep, max_def):
            if present:
                at += 4 + int.from_bytes(page[at : at + 4], "little")
        if at > len(page):
            raise _Refused("levels past the page")
        return _int(fields, 1), _int(fields, 2), page[:at], page[at:]
    fields = _sub(header, 8)  # v2: levels first, uncompressed and without lengths; then the values
    if _int(fields, 2):
        raise _Refused("nulls")
    rep_len, def_len = _int(fields, 6), _int(fields, 5)
    if rep_len + def_len > min(compressed, uncompressed):
        raise _Refused("levels past the page")
    levels = bytearray()
    for present, begin, length in ((max_rep, body, rep_len), (max_def, body + rep_len, def_len)):
        if present:
            levels += length.to_bytes(4, "little") + bytes(b[begin : begin + length])
    values = b[body + rep_len + def_len : body + compressed]
    kind, compressed_values = fields.get(7, (_TRUE, True))
    if kind not in (_TRUE, _FALSE):
        raise _Refused(f"header field 7: {compressed_values!r}")
    if codec is not None and compressed_values:
        values = memoryview(codec.decompress(values, decompressed_size=uncompressed - rep_len - def_len)).cast("B")
    return _int(fields, 1), _int(fields, 4), memoryview(bytes(levels)), values


def read_row_group(
    source: Source, parquet: pq.ParquetFile, index: int, columns: list[str], empty: Empty = np.empty
) -> pa.Table | None:
    """Row group ``index`` of a file open as ``parquet`` and as ``source`` (a local file's descriptor, or a pyarrow
    file with ``read_at``, such as an S3 object's), columns ``columns``, as pyarrow's ``read_row_group`` would
    return it; None when a column is not one this reader takes. Arrays come from
    ``empty``: a pool that hands a buffer out again once nothing refers to it saves the kernel faulting in and
    zeroing fresh pages for every row group."""
    metadata = parquet.metadata
    group = metadata.row_group(index)
    rows = group.num_rows
    try:
        plans = [_column_plan(parquet, name) for name in columns]
        arrays: list[pa.Array] = []
        for leaf, field, dtype, max_rep, max_def in plans:
            values, width = _read_chunk(source, group.column(leaf), rows, dtype, (max_rep, max_def), empty)
            flat = pa.array(values)
            if pa.types.is_fixed_size_list(field.type):
                if width != field.type.list_size:
                    raise _Refused(f"{field.name}: rows of {width} values in a list of {field.type.list_size}")
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, type=field.type))
            elif max_rep:
                offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
                arrays.append(pa.ListArray.from_arrays(offsets, flat, type=field.type))
            else:
                arrays.append(flat)
    except (_Refused, KeyError, IndexError, ValueError, TypeError, OverflowError, OSError, pa.ArrowException):
        return None  # damage too (a page header that does not parse, a codec's error): pyarrow reports it
    schema = pa.schema([parquet.schema_arrow.field(name) for name in columns])
    return pa.Table.from_arrays(arrays, schema=schema)
