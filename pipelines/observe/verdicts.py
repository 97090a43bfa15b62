"""Verdicts of the operator's view: OK, WARN or ERR, each naming the value that decided it and the command that fixes
it. Pure functions over figures already gathered (``pipelines.observe.gather``), so they are tested without a stack.

Kafka lag is judged the way Burrow judges a consumer group, over a sliding window of the query's own commits rather
than against a fixed number of records (a fixed number is too strict for a burst and too lax for a trickle):

- no lag now, or none at some commit in the window: **OK** (the query keeps catching up);
- records wait while the committed offset has not moved for longer than the window's commits span (and at least
  the grace period): **STALLED**, an error (the driver is stopped, hung or failing);
- the committed offset moves but the lag grew or held at every step of the window: **LAGGING**, a warning (the
  driver runs but cannot keep up);
- otherwise **OK** (behind, and the lag shrinks).

Burrow measures the stall by the time since the consumer's last commit, because Kafka consumers commit even when
idle. A Spark query commits only when a batch has records, so an idle query's last commit may be hours old while it
is perfectly current; here the stall is measured by the age of the oldest record waiting, which is zero for an idle
query and grows only when records wait.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.observe.dag_runs import MaintenanceRuns

DEFAULT_LAG_GRACE_S = 60.0
"""Records may wait this long (at least) before a partition whose offset does not move counts as stalled."""
LAGGING_MIN_SAMPLES = 3
"""Fewer samples than this say nothing about a trend: two points make one step, and one step is noise."""


class Level(enum.IntEnum):
    """How bad a verdict is; the page and the exit code take the worst one."""

    OK = 0
    WARN = 1
    ERR = 2


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """One judgement: what (``subject``), how bad, the value that decided it and the command that fixes it."""

    section: str
    subject: str
    level: Level
    value: str
    fix: str = ""

    def __post_init__(self) -> None:
        if self.level is not Level.OK and not self.fix:
            raise ValueError(f"verdict on {self.subject!r} is {self.level.name} but names no fix")

    def line(self) -> str:
        """One line a person reads: ``ERR ev.telemetry/0: ... Fix: ...``."""
        fix = f" Fix: {self.fix}" if self.fix else ""
        return f"{self.level.name} {self.subject}: {self.value}.{fix}"


def worst(verdicts: Sequence[Verdict]) -> Level:
    return max((v.level for v in verdicts), default=Level.OK)


# ---------------------------------------------------------------------------------------------------------
# Kafka lag, Burrow-style


class LagState(enum.Enum):
    OK = "OK"
    LAGGING = "LAGGING"
    STALLED = "STALLED"


LAG_LEVEL = {LagState.OK: Level.OK, LagState.LAGGING: Level.WARN, LagState.STALLED: Level.ERR}


@dataclass(frozen=True)
class LagSample:
    """A partition at one moment: the next offset the query will read, and the log end offset."""

    at_s: float
    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


def judge_lag(
    window: Sequence[LagSample], *, waiting_s: float | None, grace_s: float = DEFAULT_LAG_GRACE_S
) -> LagState:
    """The state of one partition from ``window``: the query's committed batches, oldest first, then now.

    ``waiting_s``: age of the oldest record past the committed offset (None: unknown, e.g. it could not be read;
    then the time since the committed offset was first seen stands in for it).
    """
    if not window or window[-1].lag == 0:
        return LagState.OK
    now = window[-1]
    span = window[-2].at_s - window[0].at_s if len(window) > 1 else 0.0  # the commits' span; the last is not one
    if waiting_s is None:
        reached = min(s.at_s for s in window if s.committed == now.committed)
        waiting_s = now.at_s - reached
    if waiting_s > max(grace_s, span) and all(s.committed <= now.committed for s in window):
        moved_recently = any(s.committed < now.committed and now.at_s - s.at_s <= grace_s for s in window)
        if not moved_recently:
            return LagState.STALLED
    if any(s.lag == 0 for s in window):
        return LagState.OK
    if len(window) >= LAGGING_MIN_SAMPLES and window[0].committed < now.committed:
        steps = itertools.pairwise(window)
        if all(later.lag >= earlier.lag for earlier, later in steps):
            return LagState.LAGGING
    return LagState.OK


def lag_verdict(
    topic: str, partition: int, state: LagState, sample: LagSample, *, waiting_s: float | None, driver_running: bool
) -> Verdict:
    """The verdict of one partition, with the fix that fits whether a driver runs."""
    waited = "" if waiting_s is None else f", oldest waiting {waiting_s:.0f} s"
    value = f"{state.value}: lag {sample.lag} records (committed {sample.committed}, end {sample.end}{waited})"
    if state is LagState.OK:
        return Verdict(section="kafka", subject=f"{topic}/{partition}", level=Level.OK, value=value)
    if state is LagState.STALLED:
        fix = (
            "`tierlake ingest status` shows why it stopped; then `tierlake ingest stop` and `tierlake ingest start`"
            if driver_running
            else "no ingest driver runs: `tierlake ingest start` (or `tierlake ingest run` to catch up once)"
        )
    else:
        fix = (
            "the driver cannot keep up: give Spark more cores (spark.master) or a longer trigger "
            "(`tierlake ingest stop`, then `tierlake ingest start --trigger-s 10`)"
        )
    return Verdict(section="kafka", subject=f"{topic}/{partition}", level=LAG_LEVEL[state], value=value, fix=fix)


# ---------------------------------------------------------------------------------------------------------
# Tables

SMALL_FILES_WARN = 100
"""At least this many small files, and at least half the table's files small: OPTIMIZE is due."""
VERSIONS_SINCE_CHECKPOINT_WARN = 100
"""Readers replay every JSON commit since the last checkpoint; past this many, opening the table gets slow."""


def table_verdicts(
    table: str, *, files: int, small_files: int, version: int, last_checkpoint: int | None
) -> list[Verdict]:
    """Small files and commits since the last checkpoint of one table (only the problems, or one OK)."""
    found: list[Verdict] = []
    if small_files >= SMALL_FILES_WARN and small_files * 2 >= files:
        found.append(
            Verdict(
                section="tables",
                subject=table,
                level=Level.WARN,
                value=f"{small_files} of {files} files are small (>= {SMALL_FILES_WARN} and at least half)",
                fix=f"`tierlake table optimize {table}` (while ingestion of that table is stopped)",
            )
        )
    since = version - (last_checkpoint if last_checkpoint is not None else -1)
    if since > VERSIONS_SINCE_CHECKPOINT_WARN:
        what = "no checkpoint" if last_checkpoint is None else f"last checkpoint at version {last_checkpoint}"
        found.append(
            Verdict(
                section="tables",
                subject=table,
                level=Level.WARN,
                value=f"{since} commits since the last checkpoint ({what}; version {version}) > "
                f"{VERSIONS_SINCE_CHECKPOINT_WARN}",
                fix=f"`tierlake table checkpoint {table}`",
            )
        )
    if not found:
        found.append(
            Verdict(section="tables", subject=table, level=Level.OK, value=f"{files} files, {small_files} small")
        )
    return found


# ---------------------------------------------------------------------------------------------------------
# Ingestion: reconciliation and quarantine

QUARANTINE_WARN = 0.10
"""A share of quarantined records above this in the window: a producer sends bad records (the demo sends 2 %)."""


def reconcile_verdict(topic: str, *, missing: int, unexpected: int, repeated: int, holes: int) -> Verdict:
    """Bronze against its outputs, offset by offset (records Kafka holds past bronze are the lag verdicts')."""
    value = f"missing {missing}, unexpected {unexpected}, repeated {repeated}, holes in bronze {holes} (all time)"
    if missing or unexpected or repeated or holes:
        return Verdict(
            section="ingestion",
            subject=f"reconcile {topic}",
            level=Level.ERR,
            value=f"not balanced: {value}",
            fix="`tierlake ingest reconcile --json` lists the offsets; docs/operations.md says what each means",
        )
    return Verdict(section="ingestion", subject=f"reconcile {topic}", level=Level.OK, value=f"balanced: {value}")


def quarantine_verdict(entity: str, *, quarantined: int, total: int, top_rule: str | None) -> Verdict:
    share = quarantined / total if total else 0.0
    value = f"{quarantined} of {total} records quarantined ({share:.1%})"
    if total and share > QUARANTINE_WARN:
        rule = f" --rule {top_rule}" if top_rule else ""
        return Verdict(
            section="ingestion",
            subject=f"quarantine {entity}",
            level=Level.WARN,
            value=f"{value} > {QUARANTINE_WARN:.0%}, most under {top_rule}",
            fix=f"fix the producer, then `tierlake ingest replay-quarantine --entity {entity}{rule}`",
        )
    return Verdict(section="ingestion", subject=f"quarantine {entity}", level=Level.OK, value=value)


# ---------------------------------------------------------------------------------------------------------
# Edge cache and cold tier

CACHE_FULL_WARN = 0.95
CACHE_HIT_WARN = 0.5
CACHE_MIN_READS = 100
"""A hit ratio over fewer reads than this says nothing."""
SITE_FULL_WARN = 0.9
CACHE_EVICT_TO = 0.8
"""A cache over its budget's warning line is told to evict down to this share of the budget."""


def cache_verdicts(*, hits: int, misses: int, used_bytes: int, capacity_bytes: int) -> list[Verdict]:
    found = []
    reads = hits + misses
    if reads >= CACHE_MIN_READS and hits / reads < CACHE_HIT_WARN:
        found.append(
            Verdict(
                section="cache",
                subject="edge cache hit ratio",
                level=Level.WARN,
                value=f"{hits / reads:.2f} over {reads} reads < {CACHE_HIT_WARN}",
                fix="warm what training reads next: `tierlake cache warm <table>`; or raise cache.max_bytes",
            )
        )
    if capacity_bytes and used_bytes / capacity_bytes > CACHE_FULL_WARN:
        found.append(
            Verdict(
                section="cache",
                subject="edge cache budget",
                level=Level.WARN,
                value=f"{used_bytes / capacity_bytes:.0%} of {capacity_bytes} bytes used > {CACHE_FULL_WARN:.0%}",
                fix=f"`tierlake cache evict --to-bytes {int(capacity_bytes * CACHE_EVICT_TO)}` (through the eviction "
                "policy; pinned entries stay), or raise cache.max_bytes",
            )
        )
    if not found:
        ratio = f"{hits / reads:.2f}" if reads else "no reads yet"
        found.append(Verdict(section="cache", subject="edge cache", level=Level.OK, value=f"hit ratio {ratio}"))
    return found


def verify_verdict(cartridge: str, *, checked: int, bad: int, at: str) -> Verdict:
    """The last verify of one cartridge (from the audit log)."""
    if bad:
        return Verdict(
            section="archive",
            subject=f"cartridge {cartridge}",
            level=Level.ERR,
            value=f"its last verify ({at}) found bad files on it ({bad} bad of {checked} checked in that run)",
            fix=(
                f"`tierlake archive verify --cartridge {cartridge}` to re-read it; restores read the other site's "
                "copy meanwhile; re-archive the bad files from the lake or that copy"
            ),
        )
    return Verdict(
        section="archive", subject=f"cartridge {cartridge}", level=Level.OK, value=f"last verify ({at}): {checked} ok"
    )


def site_verdict(site: str, *, used_bytes: int, capacity_bytes: int) -> Verdict:
    share = used_bytes / capacity_bytes if capacity_bytes else 0.0
    value = f"{used_bytes} of {capacity_bytes} bytes used ({share:.0%})"
    if share > SITE_FULL_WARN:
        return Verdict(
            section="archive",
            subject=f"tape site {site}",
            level=Level.WARN,
            value=f"{value} > {SITE_FULL_WARN:.0%}",
            fix="add cartridges to the pool (archive.cartridges_per_site applies to new pools)",
        )
    return Verdict(section="archive", subject=f"tape site {site}", level=Level.OK, value=value)


# ---------------------------------------------------------------------------------------------------------
# Training checkpoints


def checkpoint_tier_verdict(tier: str, *, error: str, checkpoints: int) -> Verdict:
    """One checkpoint tier: ERR when it could not be listed (its checkpoints are then unknown, not absent)."""
    subject = f"checkpoint tier {tier}"
    if error:
        return Verdict(
            section="training",
            subject=subject,
            level=Level.ERR,
            value=f"could not be listed: {error}",
            fix="`tierlake checkpoint list` (its log names the tier left out); then check that tier's settings "
            "(checkpoint.local_dir, checkpoint.edge_dir, s3.endpoint, archive.library_dir)",
        )
    return Verdict(section="training", subject=subject, level=Level.OK, value=f"{checkpoints} committed checkpoints")


def maintenance_verdicts(found: MaintenanceRuns) -> list[Verdict]:
    """The maintenance DAG's newest run: WARN when it failed (no verdict when the runs could not be read: the page
    says why, and a host without Airflow is no problem)."""
    if not found.runs:
        return []
    newest = found.runs[0]
    subject = f"DAG {found.dag_id}"
    if newest.state == "failed":
        return [
            Verdict(
                section="tables",
                subject=subject,
                level=Level.WARN,
                value=f"its newest run {newest.run_id} failed",
                fix="its failed task's log in Airflow names the error; meanwhile its steps by hand: "
                "`tierlake table optimize --all`, then `tierlake table checkpoint --all`",
            )
        ]
    return [Verdict(section="tables", subject=subject, level=Level.OK, value=f"newest run {newest.state}")]
