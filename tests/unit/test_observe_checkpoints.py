"""Training checkpoints per tier in the operator's view: counted from ``training.operations``' own listings (what
the CLI passes in), the newest committed step named with its run, a tier that could not be listed shown as unknown
with an ERR, never as empty."""

from __future__ import annotations

from pipelines.observe import verdicts as v
from pipelines.observe.checkpoints import CheckpointTierRow, TrainingCheckpoints, checkpoint_rows
from pipelines.observe.gather import LakeReport
from pipelines.observe.render import training_html
from training.operations import TierListing


def listing(tier: str, run: str, committed: tuple[int, ...], uncommitted: tuple[int, ...] = ()) -> TierListing:
    return TierListing(tier=tier, run=run, committed=committed, uncommitted=uncommitted)


def test_rows_per_tier_count_steps_of_every_run_and_name_the_newest() -> None:
    found = TrainingCheckpoints(
        tiers=["local", "edge", "rgw", "tape"],
        listings=[
            listing("local", "a", (100, 200), (300,)),
            listing("local", "b", (50,)),
            listing("rgw", "a", (100, 200)),
            listing("rgw", "b", (250,)),
        ],
        unreadable={"tape": "library folder /x is missing"},
    )
    local, edge, rgw, tape = checkpoint_rows(found)
    assert local == CheckpointTierRow(
        tier="local", runs=2, checkpoints=3, unfinished=1, newest_step=200, newest_run="a"
    )
    assert edge == CheckpointTierRow(tier="edge")  # listed, and holds nothing
    assert (rgw.checkpoints, rgw.newest_step, rgw.newest_run) == (3, 250, "b")
    assert tape.error == "library folder /x is missing"
    assert tape.newest_step is None


def test_a_tier_that_could_not_be_listed_is_an_err_naming_the_error_and_a_command() -> None:
    bad = v.checkpoint_tier_verdict("tape", error="library folder /x is missing", checkpoints=0)
    assert bad.level is v.Level.ERR
    assert "library folder /x is missing" in bad.value
    assert "`tierlake checkpoint list`" in bad.fix
    assert v.checkpoint_tier_verdict("rgw", error="", checkpoints=3).level is v.Level.OK


def test_the_page_shows_counts_and_newest_steps_per_tier() -> None:
    report = LakeReport(generated_s=100.0, since_s=0.0)
    assert "not listed" in training_html(report)
    report.checkpoints = checkpoint_rows(
        TrainingCheckpoints(
            tiers=["local", "tape"], listings=[listing("local", "a", (100, 200))], unreadable={"tape": "gone"}
        )
    )
    html = training_html(report)
    assert "<td>local</td><td>1</td><td>2</td><td>0</td><td>200 (run a)</td>" in html
    assert "<td>tape</td><td>could not be listed</td>" in html
