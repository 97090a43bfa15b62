"""Defects found by testing the loader from outside (issue 22, part 3): each test failed before its fix."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from loaders.dataset import OrderOptions, delta_dataset
from loaders.loader import DeltaLoader, LoaderOptions
from tests.unit.loader_tables import write_token_table
from tierlake.errors import ConfigError, NotFound, TierlakeError

ROWS = (300, 300, 300, 210)  # 1,110 rows in row groups of 37: 31 row groups


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("defects") / "tokens"
    write_token_table(path, ROWS)
    return path


def ids_of(loader: DeltaLoader) -> list[int]:
    return [i for batch in loader for i in batch["id"].tolist()]


def test_a_file_deleted_after_planning_is_not_found_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "deleted"
    write_token_table(path, (60, 60, 60))
    delta_dataset(path, plan_cache_dir=tmp_path / "plans")  # the plan is cached on disk and in memory
    victim = sorted(path.glob("*.parquet"))[1]
    victim.unlink()
    loader = DeltaLoader(delta_dataset(path, plan_cache_dir=tmp_path / "plans"), batch_size=8)
    with pytest.raises(NotFound, match=rf"{victim.name}.*Fix: "):
        list(loader)


@pytest.mark.parametrize(("window", "batch_size", "workers"), [(1, 32, 1), (2, 32, 2), (4, 32, 1), (4, 100, 2)])
def test_each_row_group_is_read_once_per_epoch_with_shuffling_on(
    table: Path, window: int, batch_size: int, workers: int
) -> None:
    dataset = delta_dataset(table, order=OrderOptions(seed=1, window=window))
    row_groups = len(dataset.sources[0].plan)
    assert row_groups >= 30
    # One worker: the default budget, and the read schedule alone keeps every row group until it is used. Two worker
    # threads: which batch reaches the store first is a matter of timing, and under load the default budget re-read
    # one row group in 34 once; a budget that holds the read-ahead of both makes the count exact.
    budget = None if workers == 1 else 2 * dataset.window_row_groups + 2 * workers * 4 + 1
    loader = DeltaLoader(dataset, batch_size=batch_size, num_workers=workers, max_cached_row_groups=budget)
    for epoch in range(2):
        ids_of(loader)
        assert loader.epoch == epoch + 1
        assert loader.stats.store.rereads == 0
        assert loader.stats.store.reads == row_groups


def test_a_small_budget_rereads_and_says_so(table: Path) -> None:
    dataset = delta_dataset(table, order=OrderOptions(seed=1, window=4))
    loader = DeltaLoader(dataset, batch_size=4, num_workers=1, prefetch_batches=1, max_cached_row_groups=1)
    ids_of(loader)
    store = loader.stats.store
    assert store.rereads > 0
    assert store.reads == len(dataset.sources[0].plan) + store.rereads


def test_a_table_rewritten_at_the_same_path_gets_a_fresh_plan(tmp_path: Path) -> None:
    path = tmp_path / "rewritten"
    write_token_table(path, (50,))
    first = delta_dataset(path)
    assert len(first) == 50
    shutil.rmtree(path)
    write_token_table(path, (70,))  # version 0 again, another table
    second = delta_dataset(path)
    assert len(second) == 70
    assert sorted(ids_of(DeltaLoader(second, batch_size=7))) == list(range(70))
    assert second.fingerprint != first.fingerprint


def test_a_resume_state_does_not_depend_on_how_the_path_is_spelled(table: Path) -> None:
    plain = DeltaLoader(delta_dataset(str(table), order=OrderOptions(seed=4)), batch_size=10)
    next(iter(plain))
    state = plain.state_dict()
    reference = ids_of(DeltaLoader(delta_dataset(table, order=OrderOptions(seed=4)), batch_size=10))
    for spelling in (f"{table}/", f"file://{table}"):
        resumed = DeltaLoader(delta_dataset(spelling, order=OrderOptions(seed=4)), batch_size=10)
        resumed.load_state_dict(state)
        assert ids_of(resumed) == reference[10:]


def test_a_refused_state_names_what_differs(table: Path, tmp_path: Path) -> None:
    state = DeltaLoader(delta_dataset(table, order=OrderOptions(seed=1)), batch_size=2).state_dict()
    other_seed = DeltaLoader(delta_dataset(table, order=OrderOptions(seed=2)), batch_size=2)
    with pytest.raises(TierlakeError, match=r"seed: saved 1, now 2"):
        other_seed.load_state_dict(state)
    other = tmp_path / "other"
    write_token_table(other, ROWS)
    other_table = DeltaLoader(delta_dataset(other, order=OrderOptions(seed=1)), batch_size=2)
    with pytest.raises(TierlakeError, match=r"differs in table"):
        other_table.load_state_dict(state)


LOADER_THREADS = ("tierlake-loader", "tierlake-rowgroups", "tierlake-slab")


def test_num_workers_zero_builds_batches_in_the_main_process(table: Path) -> None:
    dataset = delta_dataset(table, order=OrderOptions(seed=6, window=2))
    threaded = ids_of(DeltaLoader(dataset, batch_size=9, num_workers=2))
    loader = DeltaLoader(dataset, batch_size=9, num_workers=0)
    served: list[int] = []
    threads: list[str] = []
    for batch in loader:
        served.extend(batch["id"].tolist())
        # The loader's own threads (worker pool, row-group reads); other tests of this process leave theirs.
        threads.extend(t.name for t in threading.enumerate() if t.name.startswith(LOADER_THREADS))
    assert threads == []
    assert served == threaded


def test_an_invalid_tail_names_the_valid_values_and_the_fix(table: Path) -> None:
    dataset = delta_dataset(table)
    with pytest.raises(ConfigError, match=r"tail = 'truncate'.*'drop', 'pad'.*Fix: "):
        DeltaLoader(dataset, batch_size=4, tail="truncate")


def test_loader_options_check_the_tail_too() -> None:
    with pytest.raises(ConfigError, match=r"tail = 'truncate'"):
        LoaderOptions(batch_size=4, tail="truncate")  # type: ignore[arg-type]


def test_the_pad_tail_rereads_at_most_the_first_window(table: Path) -> None:
    dataset = delta_dataset(table, order=OrderOptions(seed=1, window=4))
    assert len(dataset) % 32  # the last batch wraps to the epoch's start
    loader = DeltaLoader(dataset, batch_size=32, num_workers=2, tail="pad")
    ids_of(loader)
    assert loader.stats.store.reads - loader.stats.store.rereads == len(dataset.sources[0].plan)
    assert loader.stats.store.rereads <= 4
