"""The loader over local Delta tables: exactly once, pinned versions, resume under new world/worker counts."""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from deltalake import DeltaTable, write_deltalake
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from loaders import batches as batches_module
from loaders.batches import ArrayPool
from loaders.dataset import DeltaDataset, OrderOptions, delta_dataset
from loaders.loader import DeltaLoader, reader_threads
from loaders.order import IntArray
from loaders.plan import build_plan
from loaders.table import ArrowFileSource, pin_snapshot
from tests.unit.loader_tables import TOKENS, token_rows, write_token_table
from tierlake.errors import NotFound, SchemaMismatch, TierlakeError

ROWS = (150, 97, 211, 40)  # 498 rows, 4 files, row groups of 37 and remainders


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("loader") / "tokens"
    write_token_table(path, ROWS)
    return path


def ids_by_rank(loaders: list[DeltaLoader], steps: int | None = None) -> list[list[IntArray]]:
    """Run the ranks in lockstep (as synchronous training does) for ``steps`` batches or to the epoch's end."""
    iterators = [iter(loader) for loader in loaders]
    out: list[list[IntArray]] = [[] for _ in loaders]
    step = 0
    while steps is None or step < steps:
        batches = [next(it, None) for it in iterators]
        if any(b is None for b in batches):
            assert all(b is None for b in batches), "ranks must run out together"
            break
        for rank, batch in enumerate(batches):
            assert batch is not None
            assert (batch["tokens"] == batch["id"].to(batch["tokens"].dtype)[:, None]).all()
            out[rank].append(batch["id"].numpy())
        step += 1
    for it in iterators:
        if isinstance(it, Generator):
            it.close()  # stops the worker threads of an unfinished epoch
    return out


def global_order(per_rank: list[list[IntArray]]) -> list[int]:
    """Interleave the ranks' batches back into global positions: step s = rank 0's batch s, rank 1's, ..."""
    order: list[int] = []
    for step in range(len(per_rank[0])):
        for rank_batches in per_rank:
            order.extend(rank_batches[step].tolist())
    return order


def test_one_epoch_serves_every_row_once_and_matches_the_table(table: Path) -> None:
    dataset = delta_dataset(table, order=OrderOptions(seed=3))
    loader = DeltaLoader(dataset, batch_size=6, num_workers=3, tail="pad")
    ids = np.concatenate(ids_by_rank([loader])[0])
    assert set(ids.tolist()) == set(range(sum(ROWS)))
    assert len(ids) - sum(ROWS) < 6
    assert loader.epoch == 1
    assert loader.state_dict()["samples_consumed"] == 0


def test_order_is_the_same_for_any_worker_count_and_changes_per_epoch(table: Path) -> None:
    dataset = delta_dataset(table, order=OrderOptions(seed=11, window=2))
    one = global_order(ids_by_rank([DeltaLoader(dataset, batch_size=8, num_workers=1)]))
    three = global_order(ids_by_rank([DeltaLoader(dataset, batch_size=8, num_workers=3, prefetch_batches=7)]))
    assert one == three
    loader = DeltaLoader(dataset, batch_size=8)
    loader.set_epoch(1)
    assert global_order(ids_by_rank([loader])) != one


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    worlds=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    workers=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    batch_size=st.integers(1, 12),
    steps=st.integers(0, 60),
    seed=st.integers(0, 1000),
)
@example(worlds=(2, 3), workers=(2, 2), batch_size=5, steps=9, seed=1)
@example(worlds=(4, 2), workers=(2, 1), batch_size=4, steps=13, seed=2)
@example(worlds=(2, 2), workers=(1, 3), batch_size=7, steps=5, seed=3)
def test_resume_mid_epoch_loses_and_repeats_nothing(  # noqa: PLR0917 - hypothesis draws
    table: Path, worlds: tuple[int, int], workers: tuple[int, int], batch_size: int, steps: int, seed: int
) -> None:
    dataset = delta_dataset(table, order=OrderOptions(seed=seed, window=3))
    whole = DeltaLoader(dataset, batch_size=len(dataset), num_workers=1)
    reference = [next(iter(whole))["id"].tolist() for _ in range(2)]  # epochs 0 and 1, one batch each

    def ranks(world: int, num_workers: int) -> list[DeltaLoader]:
        return [
            DeltaLoader(dataset, batch_size=batch_size, num_workers=num_workers, rank=r, world_size=world)
            for r in range(world)
        ]

    first = ranks(worlds[0], workers[0])
    steps = steps % (len(first[0]) + 1)  # 0 .. all batches of the epoch
    before = ids_by_rank(first, steps)
    states = [loader.state_dict() for loader in first]
    assert all(state == states[0] for state in states)
    second = ranks(worlds[1], workers[1])
    for loader in second:
        loader.load_state_dict(pickle.loads(pickle.dumps(states[0])))  # noqa: S301 - our own bytes
    after = ids_by_rank(second)
    finished_first = steps == len(ids_by_rank(ranks(worlds[0], 1))[0])
    combined = [*global_order(before), *global_order(after)] if not finished_first else global_order(after)
    expected = reference[1] if finished_first else reference[0]
    assert combined == expected[: len(combined)]  # the same global order: nothing lost, nothing repeated
    assert len(expected) - len(combined) < worlds[1] * batch_size  # only the documented drop tail is left out
    assert all(loader.epoch == (2 if finished_first else 1) for loader in second)


def test_pinned_version_and_timestamp_ignore_later_commits(tmp_path: Path) -> None:
    path = tmp_path / "t"
    write_token_table(path, (50,))
    first_commit = DeltaTable(str(path)).history()[0]["timestamp"]
    write_deltalake(str(path), token_rows(1000, 30), mode="append")
    assert len(delta_dataset(path)) == 80
    assert len(delta_dataset(path, version=0)) == 50
    pinned = delta_dataset(path, timestamp=np.datetime64(first_commit, "ms").astype(object).isoformat() + "Z")
    assert pinned.version == 0
    assert len(pinned) == 50


def test_column_selection_and_partition_filters(tmp_path: Path) -> None:
    path = tmp_path / "parts"
    write_token_table(path, (90, 60), partition=True)
    dataset = delta_dataset(path, columns=["id", "part"], partition_filters=[("part", "in", [0, 2])])
    batches = list(DeltaLoader(dataset, batch_size=4, tail="pad"))
    assert set(batches[0]) == {"id", "part"}
    ids = np.concatenate([b["id"].numpy() for b in batches])
    parts = np.concatenate([b["part"].numpy() for b in batches])
    assert set(ids.tolist()) == {i for i in range(150) if i % 3 in (0, 2)}
    assert np.array_equal(parts, ids % 3)
    with pytest.raises(TierlakeError, match="not a partition column"):
        delta_dataset(path, partition_filters=[("id", "=", 1)])
    with pytest.raises(SchemaMismatch, match=r"columns \['nope'\]"):
        delta_dataset(path, columns=["nope"])


def test_plan_is_cached_per_table_version(tmp_path: Path, table: Path) -> None:
    snapshot = pin_snapshot(table)
    plan = build_plan(snapshot, ArrowFileSource(), cache_dir=tmp_path / "plans", filters=[("x", "=", 1)])
    stored = list((tmp_path / "plans").glob("plan-*.json"))
    assert len(stored) == 1
    assert int(plan.rows.sum()) == sum(ROWS)
    assert build_plan(snapshot, ArrowFileSource(), filters=[("x", "=", 1)]) is plan


def test_a_missing_file_of_the_pinned_version_is_listed(tmp_path: Path) -> None:
    path = tmp_path / "gone"
    write_token_table(path, (20, 20, 20))
    victims = sorted(path.glob("*.parquet"))[:2]
    for victim in victims:
        victim.unlink()
    with pytest.raises(NotFound, match="2 of 3 data files") as caught:
        delta_dataset(path)
    assert all(victim.name in str(caught.value) for victim in victims)


def test_unsupported_columns_fail_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "text"
    write_deltalake(str(path), pa.table({"id": [1, 2], "text": ["a", "b"]}))
    dataset = delta_dataset(path)
    with pytest.raises(SchemaMismatch, match="'text' has type"):
        list(DeltaLoader(dataset, batch_size=2))


def test_state_of_another_dataset_is_refused(table: Path) -> None:
    state = DeltaLoader(delta_dataset(table, order=OrderOptions(seed=1)), batch_size=2).state_dict()
    other = DeltaLoader(delta_dataset(table, order=OrderOptions(seed=2)), batch_size=2)
    with pytest.raises(TierlakeError, match="differs in seed: saved 1, now 2"):
        other.load_state_dict(state)


def test_host_memory_is_bounded_by_the_row_group_cache(table: Path) -> None:
    dataset = delta_dataset(table, order=OrderOptions(seed=0, window=1))
    loader = DeltaLoader(dataset, batch_size=4, num_workers=2, max_cached_row_groups=2)
    ids_by_rank([loader])
    store = loader.stats.store
    assert store.largest_row_group_bytes >= 37 * (8 + 4 * TOKENS)
    assert 0 < store.peak_resident_bytes <= 2 * store.largest_row_group_bytes
    assert loader.stats.store.reads >= len(dataset.sources[0].plan)


def test_dataset_pickles_without_clients(table: Path) -> None:
    dataset = delta_dataset(table)
    clone = pickle.loads(pickle.dumps(dataset))  # noqa: S301 - our own bytes
    assert isinstance(clone, DeltaDataset)
    assert clone.fingerprint == dataset.fingerprint
    assert len(list(DeltaLoader(clone, batch_size=50))) == len(dataset) // 50


def test_options_are_validated() -> None:
    with pytest.raises(TierlakeError, match="window = 0"):
        OrderOptions(window=0)


def test_copy_of_table_reads_the_same(tmp_path: Path, table: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(table, copy)
    a = global_order(ids_by_rank([DeltaLoader(delta_dataset(table), batch_size=9)]))
    b = global_order(ids_by_rank([DeltaLoader(delta_dataset(copy), batch_size=9)]))
    assert a == b


@pytest.mark.parametrize("workers", [1, 3])
def test_slab_loader_yields_the_thread_loaders_batches_and_resumes(table: Path, workers: int) -> None:
    from loaders.slabs import SlabLoader  # noqa: PLC0415 - worker processes only for this test

    dataset = delta_dataset(table, order=OrderOptions(seed=21, window=2))
    threads = global_order(ids_by_rank([DeltaLoader(dataset, batch_size=7)]))
    slabs = SlabLoader(dataset, batch_size=7, num_workers=workers, slabs_per_worker=2)
    first = ids_by_rank([slabs], 11)
    resumed = SlabLoader(dataset, batch_size=7, num_workers=2)
    resumed.load_state_dict(slabs.state_dict())
    assert global_order(first) + global_order(ids_by_rank([resumed])) == threads


def test_plain_dataloader_with_worker_processes_yields_the_same_batches(table: Path) -> None:
    from torch.utils.data import DataLoader  # noqa: PLC0415

    from loaders.workers import DeltaIterableDataset  # noqa: PLC0415

    dataset = delta_dataset(table, order=OrderOptions(seed=13, window=2))
    threads = global_order(ids_by_rank([DeltaLoader(dataset, batch_size=9, rank=1, world_size=2)]))
    iterable = DeltaIterableDataset(dataset, batch_size=9, rank=1, world_size=2)
    processes = [i for batch in DataLoader(iterable, batch_size=None, num_workers=2) for i in batch["id"].tolist()]
    assert processes == threads
    assert len(iterable) == len(processes) // 9


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_are_gathered_in_groups_and_the_first_group_needs_only_the_first_batch_row_groups(
    table: Path, monkeypatch: pytest.MonkeyPatch, shuffle: bool
) -> None:
    """Workers gather groups of consecutive batches (one copy per row group for the group); the first group
    holds only batches whose row groups batch 0 needs too, so batch 0 waits for no other row group."""
    dataset = delta_dataset(table, order=OrderOptions(seed=3, shuffle=shuffle, window=2))
    loader = DeltaLoader(dataset, batch_size=8, num_workers=2)  # groups of up to 16 // 2 batches
    calls: list[tuple[int, int]] = []
    build = DeltaLoader._build

    def recorded(self: DeltaLoader, *args: Any, **kwargs: Any) -> Any:  # store, schedule, epoch, plan, first, count
        calls.append((args[-2], args[-1]))
        return build(self, *args, **kwargs)

    monkeypatch.setattr(DeltaLoader, "_build", recorded)
    grouped = global_order(ids_by_rank([loader]))
    monkeypatch.undo()
    assert grouped == global_order(ids_by_rank([DeltaLoader(dataset, batch_size=8, num_workers=0)]))
    assert max(count for _, count in calls) > 1
    assert sorted(calls)[0][0] == 0

    def keys(batches: range) -> set[tuple[int, int]]:
        positions = np.concatenate([np.arange(b * 8, b * 8 + 8) for b in batches])
        sources, rgs, _ = dataset.locate(0, positions)
        return set(zip(sources.tolist(), rgs.tolist(), strict=True))

    first_count = sorted(calls)[0][1]
    assert keys(range(first_count)) == keys(range(1))


@pytest.mark.parametrize(("shuffle", "window"), [(False, 4), (True, 1)])
def test_read_ahead_waits_for_the_first_batch_which_reads_only_its_own_row_groups(
    table: Path, monkeypatch: pytest.MonkeyPatch, shuffle: bool, window: int
) -> None:
    """Before the first batch is out, only the row groups of the batches in flight are read: read-ahead of later
    ones took the cores the first batch needed (storage order: it needs one row group, and waited for all)."""
    loader = DeltaLoader(
        delta_dataset(table, order=OrderOptions(seed=1, shuffle=shuffle, window=window)),
        batch_size=4,
        num_workers=2,
        prefetch_batches=2,
    )
    held: list[set[tuple[int, int]]] = []
    build = DeltaLoader._build

    def recorded(
        self: DeltaLoader, store: Any, *args: Any, **kwargs: Any
    ) -> Any:  # schedule, epoch, plan, first, count
        arrays = build(self, store, *args, **kwargs)
        first = args[-2]
        if first == 0:
            held.append(set(store._entries))  # every row group read or being read when batch 0 is gathered
        return arrays

    monkeypatch.setattr(DeltaLoader, "_build", recorded)
    first_two = iter(loader)
    next(first_two)

    def keys(positions: IntArray) -> set[tuple[int, int]]:
        sources, rgs, _ = loader.dataset.locate(0, positions)
        return set(zip(sources.tolist(), rgs.tolist(), strict=True))

    (at_first,) = held
    assert keys(np.arange(4)) <= at_first <= keys(np.arange(8))  # batch 0's, and at most batch 1's (in flight)
    assert len(loader.dataset.sources[0].plan) > len(keys(np.arange(8)))  # the table has more, not read yet


@pytest.mark.parametrize(
    ("workers", "window", "cores", "readers"),
    [(2, 4, 2, 2), (2, 4, 16, 4), (1, 4, 3, 3), (8, 4, 2, 8), (2, 1, 16, 2)],
)
def test_row_group_readers_are_a_window_at_most_the_cores_at_least_the_workers(
    workers: int, window: int, cores: int, readers: int
) -> None:
    # Decoding is CPU-bound: readers beyond the cores only hold more decode buffers at once.
    assert reader_threads(workers, window, cores) == readers


def test_array_pool_hands_a_buffer_out_again_only_when_nothing_refers_to_it() -> None:
    pool = ArrayPool(1, min_bytes=0)
    kind = np.dtype(np.int32)
    first = pool.empty((8, 4), kind)
    address = first.ctypes.data
    held = torch.from_numpy(first[:2])  # a batch the trainer keeps
    del first
    assert pool.empty((8, 4), kind).ctypes.data != address  # still referenced: not handed out
    del held
    assert pool.empty((8, 4), kind).ctypes.data == address  # released: the same memory again


def test_batches_the_trainer_keeps_are_not_overwritten_by_later_ones(
    table: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batches_module, "POOLED_MIN_BYTES", 0)  # the test table's arrays are small
    dataset = delta_dataset(table, order=OrderOptions(seed=5))
    loader = DeltaLoader(dataset, batch_size=4, num_workers=2, prefetch_batches=4)
    kept: list[dict[str, torch.Tensor]] = []
    copies: list[dict[str, torch.Tensor]] = []
    dropped_addresses: list[int] = []
    for number, batch in enumerate(loader):
        if number % 3 == 0:
            kept.append(batch)
            copies.append({name: tensor.clone() for name, tensor in batch.items()})
        else:
            dropped_addresses.append(batch["tokens"].data_ptr())
    assert len(set(dropped_addresses)) < len(dropped_addresses)  # memory of dropped batches was used again
    for batch, copy in zip(kept, copies, strict=True):
        for name, tensor in batch.items():
            assert torch.equal(tensor, copy[name])
        assert (batch["tokens"] == batch["id"].to(batch["tokens"].dtype)[:, None]).all()


def test_a_unit_offset_outside_its_row_group_is_refused_not_clipped(table: Path) -> None:
    """The gather takes rows with numpy's ``mode="clip"`` (one copy); the offsets are checked before it instead."""
    dataset = delta_dataset(table, order=OrderOptions(shuffle=False))
    store = batches_module.RowGroupStore(dataset.sources, 2)
    rows = int(dataset.sources[0].units[0])
    sources = np.zeros(2, dtype=np.int64)
    rgs = np.zeros(2, dtype=np.int64)
    ids = dataset.sources[0].read_row_group(0)[0]["id"]
    batch = batches_module.assemble(store, sources, rgs, np.array([rows - 1, 0], dtype=np.int64))
    assert batch["id"].tolist() == [ids[rows - 1], ids[0]]
    with pytest.raises(TierlakeError, match=f"outside a row group of {rows} units"):
        batches_module.assemble(store, sources, rgs, np.array([0, rows], dtype=np.int64))


@pytest.mark.parametrize(("cores", "in_reader"), [(2, True), (16, False)])
def test_readers_that_fill_the_cores_decode_in_their_own_thread(
    table: Path, monkeypatch: pytest.MonkeyPatch, cores: int, in_reader: bool
) -> None:
    """With as many readers as cores, Arrow's thread pool is left out of the decode (a hand-off per column)."""
    monkeypatch.setattr("loaders.loader.os.cpu_count", lambda: cores)
    calls: list[bool] = []
    read = batches_module.TableSource.read_row_group

    def recorded(self: Any, rg: int, *, use_threads: bool = True) -> Any:
        calls.append(use_threads)
        return read(self, rg, use_threads=use_threads)

    monkeypatch.setattr(batches_module.TableSource, "read_row_group", recorded)
    dataset = delta_dataset(table, order=OrderOptions(seed=2))
    served = global_order(ids_by_rank([DeltaLoader(dataset, batch_size=8, num_workers=2)]))
    assert set(calls) == {not in_reader}  # one decode per row group read, each in the same place
    calls.clear()
    assert served == global_order(ids_by_rank([DeltaLoader(dataset, batch_size=8, num_workers=0)]))
    assert set(calls) == {True}  # no reader threads: the calling thread leaves the columns to Arrow's pool


def test_row_groups_no_batch_left_needs_are_let_go_before_the_epoch_ends(table: Path) -> None:
    """Once the whole epoch is located, a row group whose batches are all gathered is dropped from the store (its
    memory goes back to the allocator for the next reads) instead of being held to the epoch's end."""
    dataset = delta_dataset(table, order=OrderOptions(seed=4, window=2))
    row_groups = len(dataset.sources[0].plan)
    loader = DeltaLoader(dataset, batch_size=8, num_workers=2, prefetch_batches=2)
    served = global_order(ids_by_rank([loader]))
    store = loader.stats.store
    assert (store.reads, store.rereads) == (row_groups, 0)
    assert store.resident_bytes == 0  # nothing held once the last batch is gathered
    assert served == global_order(ids_by_rank([DeltaLoader(dataset, batch_size=8, num_workers=0)]))


def test_array_pool_hands_out_a_free_buffer_that_fits_before_growing_a_smaller_one() -> None:
    pool = ArrayPool(2, min_bytes=0)
    kind = np.dtype(np.int32)
    small, large = pool.empty((4, 4), kind), pool.empty((64, 4), kind)
    addresses = small.ctypes.data, large.ctypes.data
    del small, large
    again = pool.empty((64, 4), kind)  # the large buffer, not the small one replaced by a new allocation
    assert again.ctypes.data == addresses[1]
    assert pool.empty((2, 4), kind).ctypes.data == addresses[0]
