"""The device prefetcher: same batches and exact resume on the CPU; pinned, side-stream copies on CUDA."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from loaders.dataset import OrderOptions, delta_dataset
from loaders.device import DevicePrefetcher
from loaders.loader import DeltaLoader
from tests.unit.loader_tables import write_token_table
from tierlake.errors import TierlakeError


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("device") / "tokens"
    write_token_table(path, (130, 70))
    return path


def loader_of(table: Path) -> DeltaLoader:
    return DeltaLoader(delta_dataset(table, order=OrderOptions(seed=8, window=2)), batch_size=8)


def ids(batches: list[dict[str, torch.Tensor]]) -> list[int]:
    return [i for batch in batches for i in batch["id"].cpu().tolist()]


def test_cpu_prefetcher_yields_the_loaders_batches(table: Path) -> None:
    plain = ids(list(loader_of(table)))
    prefetched = DevicePrefetcher(loader_of(table), "cpu", depth=3)
    assert ids(list(prefetched)) == plain
    assert prefetched.stats.batches == len(plain) // 8


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_resume_counts_delivered_batches_not_fetched_ones(table: Path, depth: int) -> None:
    reference = ids(list(loader_of(table)))
    prefetcher = DevicePrefetcher(loader_of(table), "cpu", depth=depth)
    delivered = []
    for step, batch in enumerate(prefetcher):
        delivered.append(batch)
        if step == 6:
            break
    state = prefetcher.state_dict()
    assert state["samples_consumed"] == 7 * 8  # the loader itself had fetched up to `depth` more
    resumed = DevicePrefetcher(loader_of(table), "cpu", depth=depth)
    resumed.load_state_dict(state)
    assert ids(delivered) + ids(list(resumed)) == reference


def test_cuda_without_a_gpu_is_a_clear_error(table: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error path is for machines without it")
    with pytest.raises(TierlakeError, match="CUDA is not available"):
        DevicePrefetcher(loader_of(table), "cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_prefetcher_copies_through_pinned_buffers_on_a_side_stream(table: Path) -> None:
    plain = list(loader_of(table))
    prefetcher = DevicePrefetcher(loader_of(table), "cuda", depth=2)
    moved = []
    for batch in prefetcher:
        assert all(t.is_cuda for t in batch.values())
        moved.append({k: (v * 1).cpu() for k, v in batch.items()})  # consume on the default stream
    assert ids(moved) == ids(plain)
    assert all(torch.equal(a["tokens"], b["tokens"]) for a, b in zip(moved, plain, strict=True))
    slots = [slot for slot in prefetcher._slots if slot.host]
    assert slots
    assert all(t.is_pinned() for slot in slots for t in slot.host.values())


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_depth_batches_are_fetched_ahead_while_the_caller_holds_one(depth: int) -> None:
    pulled = 0

    def source() -> Iterator[dict[str, torch.Tensor]]:
        nonlocal pulled
        for i in range(10):
            pulled += 1
            yield {"id": torch.tensor([i])}

    delivered = 0
    for batch in DevicePrefetcher(source(), "cpu", depth=depth):
        delivered += 1
        assert int(batch["id"]) == delivered - 1
        assert pulled == min(10, delivered + depth)  # `depth` batches ahead of the one held
    assert delivered == 10
