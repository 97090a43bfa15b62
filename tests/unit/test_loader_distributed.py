"""Multi-rank runs under torch.distributed (gloo, CPU, loopback): world sizes 2 and 4, resume 2 -> 4 and 4 -> 2."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.multiprocessing.spawn import spawn

from loaders.dataset import OrderOptions, delta_dataset
from loaders.loader import DeltaLoader
from tests.unit.loader_tables import write_token_table
from tierlake.errors import TierlakeError

ROWS = (96, 120, 24)  # 240 rows: divisible by 2 x 5 and 4 x 5 global batches, so exactly once holds with drop
BATCH = 5


def free_port() -> int:
    for port in range(29700, 29800):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 29700-29799 for torch.distributed")


def _rank_main(  # noqa: PLR0917 - torch.multiprocessing.spawn passes arguments by position
    rank: int, world: int, port: int, table: str, out: str, state_in: str | None, steps: int
) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=_timeout()
    )
    try:
        loader = DeltaLoader(delta_dataset(table, order=OrderOptions(seed=42, window=2)), batch_size=BATCH)
        assert (loader.rank, loader.world_size) == (rank, world)
        if state_in:
            loader.load_state_dict(json.loads(Path(state_in).read_text()))
        ids: list[list[int]] = []
        for step, batch in enumerate(loader):
            ids.append(batch["id"].tolist())
            if step + 1 == steps:
                break
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, {"ids": ids, "state": loader.state_dict(), "len": len(ids)})
        if rank == 0:
            Path(out).write_text(json.dumps(gathered))
    finally:
        dist.destroy_process_group()


def _timeout() -> Any:
    import datetime  # noqa: PLC0415

    return datetime.timedelta(seconds=60)


def run_world(world: int, table: Path, out: Path, *, state_in: Path | None = None, steps: int = -1) -> list[Any]:
    args = (world, free_port(), str(table), str(out), str(state_in) if state_in else None, steps)
    spawn(  # type: ignore[no-untyped-call]
        _rank_main, args=args, nprocs=world, join=True
    )
    result: list[Any] = json.loads(out.read_text())
    return result


def global_order(per_rank: list[Any]) -> list[int]:
    order: list[int] = []
    for step in range(per_rank[0]["len"]):
        for rank in per_rank:
            order.extend(rank["ids"][step])
    return order


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dist") / "tokens"
    write_token_table(path, ROWS)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_ranks_serve_every_row_once_with_equal_lengths(table: Path, tmp_path: Path, world: int) -> None:
    ranks = run_world(world, table, tmp_path / "out.json")
    assert len({rank["len"] for rank in ranks}) == 1
    order = global_order(ranks)
    assert sorted(order) == list(range(sum(ROWS)))
    single = DeltaLoader(delta_dataset(table, order=OrderOptions(seed=42, window=2)), batch_size=sum(ROWS))
    assert order == next(iter(single))["id"].tolist()  # the same global order as one process


@pytest.mark.slow
@pytest.mark.parametrize(("before", "after"), [(2, 4), (4, 2)])
def test_resume_on_another_world_size(table: Path, tmp_path: Path, before: int, after: int) -> None:
    first = run_world(before, table, tmp_path / "first.json", steps=8)  # leaves a multiple of both global batches
    states = [rank["state"] for rank in first]
    assert all(state == states[0] for state in states)
    assert states[0]["samples_consumed"] == 8 * before * BATCH
    (tmp_path / "state.json").write_text(json.dumps(states[0]))
    second = run_world(after, table, tmp_path / "second.json", state_in=tmp_path / "state.json")
    order = global_order(first) + global_order(second)
    assert sorted(order) == list(range(sum(ROWS)))  # nothing lost, nothing repeated
    assert all(rank["state"]["epoch"] == 1 for rank in second)


def _mismatch_main(rank: int, world: int, port: int, table: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        loader = DeltaLoader(delta_dataset(table, order=OrderOptions(seed=42, window=2)), batch_size=BATCH)
        state = loader.state_dict() | {"samples_consumed": 10 * rank}
        with pytest.raises(TierlakeError, match="ranks loaded different loader states"):
            loader.load_state_dict(state)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_loading_different_states_fail_loudly(table: Path) -> None:
    spawn(  # type: ignore[no-untyped-call]
        _mismatch_main, args=(2, free_port(), str(table)), nprocs=2, join=True
    )


def test_gloo_is_available() -> None:
    assert torch.distributed.is_available()
    assert dist.is_gloo_available()
