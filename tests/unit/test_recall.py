"""Recalls from tape (tiers/archive/recall.py, loaders/recall.py) without services: the plan's logic as properties,
and recalls into the edge cache from a real virtual library (two sites, real aggregates and catalog rows) whose
origin is a local folder: a bad copy falls back to the other site, concurrent recalls of one file read it once,
and a recall killed (SIGKILL from a hook) at any step leaves nothing half-recalled that a reader could see."""

from __future__ import annotations

import hashlib
import multiprocessing
import re
import signal
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from loaders.recall import PendingRecall, Recall
from tests.lake_tables import scratch_archive
from tests.unit.recall_children import BUCKET, FILES, TABLE, recall_in_child
from tierlake.config import load_settings
from tierlake.errors import ConfigError, NotFound, TapeError
from tiers.archive import archiver, recall_io
from tiers.archive import recall as recall_module
from tiers.archive.aggregate import Member
from tiers.archive.catalog import Catalog, quote
from tiers.archive.context import ArchiveContext
from tiers.archive.recall import CacheTarget, Estimate, RecallFile, RecallPlan, plan_recall, recall
from tiers.tape.library import Library

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------------------
# The plan (pure)


def _row(name: str, copy: int, cartridge: str, block: int, *, size: int = 10) -> dict[str, Any]:
    return {
        "file_id": f"id-{name}",
        "table": TABLE,
        "path": name,
        "bucket": BUCKET,
        "key": f"{TABLE}/{name}",
        "size": size,
        "sha256": "0" * 64,
        "copy": copy,
        "cartridge": cartridge,
        "site": "site-a" if copy == 1 else "site-b",
        "aggregate": f"agg-{cartridge}",
        "member_offset": block * 100,
        "start_block": block,
        "extent_partition": "b",
        "state": "PURGED",
    }


layouts = st.lists(
    st.tuples(st.sampled_from(["A00001", "A00002", "A00003"]), st.sampled_from(["B00001", "B00002"])),
    min_size=1,
    max_size=30,
)


@given(layout=layouts, blocks=st.randoms(use_true_random=False))
@hsettings(max_examples=150, deadline=None)
def test_a_plan_takes_every_file_once_grouped_by_cartridge_in_tape_order(layout: list[Any], blocks: Any) -> None:
    rows = []
    for n, (first, second) in enumerate(layout):
        rows += [_row(f"f{n}", 1, first, blocks.randint(7, 10_000)), _row(f"f{n}", 2, second, blocks.randint(7, 99))]
    wanted = [(BUCKET, f"{TABLE}/f{n}") for n in range(len(layout))]
    plan = plan_recall(rows, wanted)
    assert sorted(f.path for f in plan.files) == sorted(f"f{n}" for n in range(len(layout)))
    assert len({c.cartridge for c in plan.cartridges}) == len(plan.cartridges)  # one mount per cartridge
    for cart in plan.cartridges:
        assert all(f.cartridge == cart.cartridge for f in cart.files)
        positions = [(f.start_block, f.member_offset) for f in cart.files]
        assert positions == sorted(positions)
    # Fewest mounts: never more cartridges than the cheaper of "all of site A's" and "all of site B's".
    assert len(plan.cartridges) <= min(len({a for a, _ in layout}), len({b for _, b in layout}))
    estimate = plan.estimate(drive_mb_s=100.0, mount_s=10.0)
    assert estimate.mounts == len(plan.cartridges)
    assert estimate.seconds == pytest.approx(plan.bytes / 100e6 + 10.0 * len(plan.cartridges))


def test_a_file_whose_copies_are_all_avoided_or_absent_is_named_and_holders_are_listed() -> None:
    rows = [_row("a", 1, "A00001", 9), _row("a", 2, "B00001", 9), _row("b", 1, "A00001", 12)]
    wanted = [(BUCKET, f"{TABLE}/a"), (BUCKET, f"{TABLE}/b"), (BUCKET, f"{TABLE}/zz")]
    plan = plan_recall(rows, wanted, avoid={"id-a": {"A00001"}})
    assert [(f.path, f.cartridge) for f in plan.files] == [("b", "A00001"), ("a", "B00001")]
    assert plan.unarchived == (f"s3://{BUCKET}/{TABLE}/zz",)
    lines = plan.describe()
    assert f"s3://{BUCKET}/{TABLE}/a (size 10): cartridges B00001, A00001" in lines
    assert f"s3://{BUCKET}/{TABLE}/zz: no copy in the archive catalog" in lines
    assert plan_recall(rows, wanted[:1], avoid={"id-a": {"A00001", "B00001"}}).unarchived == (
        f"s3://{BUCKET}/{TABLE}/a",
    )


def test_recall_options_refuse_unknown_modes_and_targets_with_the_valid_ones(tmp_path: Path) -> None:
    settings = load_settings("ci", conf_dir=REPO / "conf", env={})
    context = ArchiveContext(archive=settings.archive, s3=settings.s3, cache=settings.cache.options)
    assert Recall.from_context(context).mode == settings.archive.recall == "never"
    with pytest.raises(
        ConfigError, match=re.escape("recall mode = 'always' is invalid. Fix: use one of never, ask, auto")
    ):
        Recall(context=context, mode="always")
    with pytest.raises(ConfigError, match=re.escape("recall_to = 'tape' is invalid. Fix: use lake")):
        Recall(context=context, to="tape")


# ---------------------------------------------------------------------------------------------------------
# Recalls into the edge cache from a real virtual library


def _context(tmp_path: Path) -> ArchiveContext:
    base = load_settings("ci", conf_dir=REPO / "conf", env={"TIERLAKE_CACHE__DIR": str(tmp_path / "cache")})
    archive = scratch_archive(base.archive, tmp_path)
    return ArchiveContext(archive=archive, s3=base.s3, cache=base.cache.options)


def _archive(context: ArchiveContext, catalog: Catalog, files: dict[str, bytes]) -> list[dict[str, Any]]:
    """Both sites' cartridges written as ``archive run`` writes them; every file PURGED in the catalog."""
    now = datetime.now(UTC)
    members = []
    for name, data in files.items():
        source = context.archive.staging_dir / "src" / name
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(data)
        fields: dict[str, Any] = {
            "file_id": archiver.file_id(TABLE, name),
            "table": TABLE,
            "path": name,
            "bucket": BUCKET,
        }
        fields |= {"key": f"{TABLE}/{name}", "partition": "", "partition_values": "{}", "version_min": 0}
        fields |= {"version_max": 0, "sha256": hashlib.sha256(data).hexdigest(), "row_count": 0, "key_column": ""}
        fields |= {"key_min": "", "key_max": "", "archived_at": now.isoformat()}
        fields |= {"retention_until": (now - timedelta(days=1)).isoformat()}
        members.append(Member(source=source, size=len(data), fields=fields))
    groups = archiver._groups(members, uuid.uuid4().hex[:12], 1 << 30)
    results = archiver._write_both_sites(context.archive, groups, progress=False, label=TABLE)
    catalog.append([row for _, rows in results for row in rows])
    catalog.update(f'"table" = {quote(TABLE)}', {"state": quote("PURGED")})
    rows: list[dict[str, Any]] = catalog.rows().to_pylist()
    return rows


@pytest.fixture
def archived(tmp_path: Path) -> tuple[ArchiveContext, Catalog, list[dict[str, Any]]]:
    context = _context(tmp_path)
    catalog = Catalog(context.archive.catalog_uri, context.archive.audit_uri)
    return context, catalog, _archive(context, catalog, FILES)


def _plan(rows: list[dict[str, Any]], names: list[str] | None = None) -> RecallPlan:
    return plan_recall(rows, [(BUCKET, f"{TABLE}/{n}") for n in names or FILES])


def _in_cache(context: ArchiveContext, name: str) -> bytes | None:
    path = CacheTarget(context.cache).local_path(BUCKET, f"{TABLE}/{name}")
    return None if path is None else path.read_bytes()


def test_a_recall_to_the_cache_mounts_each_cartridge_once_and_audits_who_and_why(
    archived: tuple[ArchiveContext, Catalog, list[dict[str, Any]]],
) -> None:
    context, catalog, rows = archived
    plan = _plan(rows)
    assert len(plan.cartridges) == 1
    assert plan.cartridges[0].site == "site-a"
    report = recall(context, catalog, plan, to="cache", asked_by="trainer-7", reason="epoch 3", progress=False)
    assert report.mounts == 1
    assert report.fallbacks == []
    assert len(report.recalled) == len(FILES)
    assert all(_in_cache(context, name) == data for name, data in FILES.items())
    events = [e for e in catalog.audit().sort_by("at").to_pylist() if e["action"] in ("recall", "recalled")]
    assert [e["action"] for e in events] == ["recall", "recalled"]
    assert all('"asked_by": "trainer-7"' in e["detail"] and '"reason": "epoch 3"' in e["detail"] for e in events)
    assert catalog.audit_chain_ok()
    assert {r["state"] for r in catalog.rows().to_pylist()} == {"PURGED"}  # the lake still lacks them
    again = recall(context, catalog, plan, to="cache", progress=False)  # another reader, later: nothing re-read
    assert again.recalled == []
    assert len(again.already) == len(FILES)


def test_nothing_is_published_before_the_recall_event_is_in_the_audit_log(
    archived: tuple[ArchiveContext, Catalog, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``recall`` event is written beside the first reads; a file is published only once it is written.
    Here the event's write waits until the first file was read and verified, the moment it would be published."""
    context, catalog, rows = archived
    first_verified = threading.Event()
    written: list[str] = []
    seen_at_publish: list[list[str]] = []
    record = Catalog.record

    def slow_record(self: Catalog, action: str, **kwargs: Any) -> None:
        if action == "recall":
            first_verified.wait()
        record(self, action, **kwargs)
        written.append(action)

    def step(name: str, _path: str) -> None:
        if name == "verified":
            first_verified.set()

    monkeypatch.setattr(Catalog, "record", slow_record)
    report = recall(
        context,
        catalog,
        _plan(rows),
        to="cache",
        progress=False,
        step=step,
        published=lambda _item, _where: seen_at_publish.append(list(written)),
    )
    assert len(report.recalled) == len(FILES)
    assert seen_at_publish
    assert all("recall" in seen for seen in seen_at_publish)
    assert written == ["recall", "recalled"]


def test_a_small_catalog_read_in_memory_gives_the_rows_duckdb_gives(
    archived: tuple[ArchiveContext, Catalog, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan reads a small local catalog with pyarrow (files rewritten by ``update`` hold string_view) and a
    large one through DuckDB: the same rows, in the same order, for a folder, the bucket, and a folder not there."""
    _, catalog, _ = archived
    for prefix in (TABLE, "", "no/such/folder"):
        small = recall_module.catalog_rows_under(catalog, BUCKET, prefix)
        monkeypatch.setattr(recall_module, "SMALL_CATALOG_BYTES", 0)
        large = recall_module.catalog_rows_under(catalog, BUCKET, prefix)
        monkeypatch.undo()
        assert small == large
        assert len(small) == (0 if prefix.startswith("no/") else 2 * len(FILES))


def test_a_corrupted_copy_is_never_published_and_the_other_site_copy_is_used(
    archived: tuple[ArchiveContext, Catalog, list[dict[str, Any]]],
) -> None:
    context, catalog, rows = archived
    name = next(iter(FILES))
    row = next(r for r in rows if r["path"] == name and r["copy"] == 1)
    record = Library(context.archive).cartridge_dir(row["cartridge"]) / f"1_{row['start_block']}_R"
    data = bytearray(record.read_bytes())
    data[row["byte_offset"] + 10] ^= 0xFF
    record.write_bytes(bytes(data))
    report = recall(context, catalog, _plan(rows), to="cache", progress=False)
    used = {r["path"]: r["copy"] for r in report.recalled}
    assert used[name] == 2
    assert all(copy == 1 for path, copy in used.items() if path != name)
    assert report.fallbacks == [f"{name}: copy 1 ({row['cartridge']}) SHA-256 mismatch"]
    assert report.mounts == 2
    assert all(_in_cache(context, n) == d for n, d in FILES.items())


@pytest.mark.parametrize("kill_step", ["read", "verified", "synced", "renamed", "published"])
def test_a_recall_killed_at_any_step_leaves_nothing_half_recalled_and_the_next_one_completes(
    archived: tuple[ArchiveContext, Catalog, list[dict[str, Any]]], tmp_path: Path, kill_step: str
) -> None:
    """``synced`` (the bytes of a group durable, not renamed) and ``renamed`` (under the final name, the index
    not yet saying READY) are the cache's group publication (tiers/cache/group.py)."""
    context, catalog, rows = archived
    spawn = multiprocessing.get_context("spawn")  # delta-rs (the audit log) refuses a forked runtime
    child = spawn.Process(target=recall_in_child, args=(context, rows, kill_step, tmp_path / "out"))
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL
    first, *others = FILES
    # The killed file is absent (up to renamed) or whole (published): never a part of it, never another file's.
    assert _in_cache(context, first) in ((FILES[first],) if kill_step == "published" else (None,))
    # A file published in the same group as the first one is whole; any other is absent.
    found = {n: _in_cache(context, n) for n in others}
    assert all(data in ((FILES[n], None) if kill_step == "published" else (None,)) for n, data in found.items())
    if kill_step == "renamed":  # the file is under its final name, but no READY row names it: never served
        assert [p for p in (context.cache.directory / "objects").rglob("*") if p.is_file()]
    report = recall(context, catalog, _plan(rows), to="cache", progress=False)
    published = (kill_step == "published") + sum(data is not None for data in found.values())
    assert len(report.recalled) == len(FILES) - published
    assert all(_in_cache(context, n) == d for n, d in FILES.items())
    assert not list((context.cache.directory / "tmp").glob("*.tmp"))  # the killed fill's temp was cleared


def test_concurrent_recalls_of_the_same_files_read_each_file_from_tape_once(
    archived: tuple[ArchiveContext, Catalog, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """Two readers, each from another site's cartridge (so the two mounts do not serialise them), start together:
    every file is copied from tape by exactly one of them; the other finds it recalled."""
    context, _catalog, rows = archived
    spawn = multiprocessing.get_context("spawn")  # delta-rs (the audit log) refuses a forked runtime
    barrier = spawn.Barrier(2)
    children = [
        spawn.Process(
            target=recall_in_child,
            args=(context, rows, None, tmp_path / f"out{copy}"),
            kwargs={"copy": copy, "barrier": barrier},
        )
        for copy in (1, 2)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join()
        assert child.exitcode == 0
    counts = [tuple(map(int, (tmp_path / f"out{copy}").read_text().split())) for copy in (1, 2)]
    assert sum(recalled for recalled, _ in counts) == len(FILES)  # each file copied from tape by one of them
    assert all(recalled + already == len(FILES) for recalled, already in counts)
    assert all(_in_cache(context, n) == d for n, d in FILES.items())


def test_recall_never_names_each_file_and_its_cartridges(
    archived: tuple[ArchiveContext, Catalog, list[dict[str, Any]]],
) -> None:
    context, _catalog, rows = archived
    plan = _plan(rows)
    holders = sorted({r["cartridge"] for r in rows})
    with pytest.raises(NotFound, match=f"cartridges {holders[0]}, {holders[1]}") as caught:
        Recall(context=context, mode="never").apply(plan, what="the test table at version 0")
    text = str(caught.value)
    assert all(f"s3://{BUCKET}/{TABLE}/{n}" in text for n in FILES)
    assert "3 data file(s) of the test table at version 0 are on tape only" in text
    asked: list[int] = []

    def decline(_plan: RecallPlan, estimate: Estimate) -> bool:
        asked.append(estimate.files)
        return False

    with pytest.raises(NotFound, match="on tape only"):
        Recall(context=context, mode="ask", confirm=decline).apply(plan, what="v0")
    assert asked == [3]


class _Purged:
    """The lake's file source after the purge: every file is missing."""

    def open(self, uri: str) -> Any:
        raise NotFound(f"data file {uri} is missing from the object store")


def test_a_reader_opens_the_first_recalled_file_while_the_rest_is_still_on_tape(
    archived: tuple[ArchiveContext, Catalog, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recall streams: the second file's publication is held until the reader has opened the first one, so a
    read that waited for the whole recall would never get its file (the hold gives up and the recall fails)."""
    context, _catalog, rows = archived
    plan = _plan(rows)
    first, *rest = plan.files
    opened_first = threading.Event()
    put = recall_io.CacheTarget.put

    def held_put(self: recall_io.CacheTarget, item: RecallFile, chunks: Any, done: Any = None) -> str:
        if item.path != first.path and not opened_first.wait(timeout=30):
            raise TapeError("the reader never got the first file while the others waited")
        return put(self, item, chunks, done)

    monkeypatch.setattr(recall_io.CacheTarget, "put", held_put)
    policy = Recall(context=context, mode="auto", to="cache", reason="streaming", progress=False)
    pending = PendingRecall(policy, plan, what="three files")
    source = policy.wrap(_Purged(), pending)
    assert Path(source.open(first.uri)).read_bytes() == FILES[first.path]
    opened_first.set()
    report = pending.join()
    assert pending.error is None
    assert report is not None
    assert [r["path"] for r in report.recalled] == [f.path for f in plan.files]  # tape order, each once
    assert all(Path(source.open(f.uri)).read_bytes() == FILES[f.path] for f in rest)
