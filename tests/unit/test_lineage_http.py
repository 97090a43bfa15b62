"""Lineage events over HTTP against a real loopback server: posted as written, and kept when the endpoint fails."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import CommitProperties, write_deltalake

from pipelines.ingest.silver import commit_metadata
from tierlake.config import CheckpointSettings, load_settings
from tierlake.errors import ConfigError
from training.lineage import LineageLog
from training.lineage_http import LineageHttp, LineageUndelivered, lineage_http_for
from training.lineage_records import validate_event
from training.lineage_store import LineageSources, LineageStore, sync
from training.manifest import Manifest

REPO = Path(__file__).resolve().parents[2]


class Endpoint:
    """A loopback OpenLineage endpoint: records each POST; answers ``status`` (201 unless told)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.status = 201
        self.authorization: list[str | None] = []  # each POST's Authorization header
        self.api_key = ""  # when set, a POST without ``Bearer <api_key>`` is answered 401
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.posts.append((self.path, json.loads(body)))
                endpoint.authorization.append(self.headers.get("Authorization"))
                wrong = endpoint.api_key and self.headers.get("Authorization") != f"Bearer {endpoint.api_key}"
                self.send_response(401 if wrong else endpoint.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint()
    yield server
    server.close()


def _manifest(step: int) -> Manifest:
    return Manifest(run="r", step=step, created_unix=1.7e9 + step, shards=(), tables={"s3://lake/gold/t": 9})


def test_a_checkpoint_event_is_written_then_posted_as_written(tmp_path: Path, endpoint: Endpoint) -> None:
    log = LineageLog(tmp_path, http=LineageHttp(url=endpoint.url))
    log.committed(_manifest(5), "s3://lake/ckpt/r/5/")
    (line,) = log.path.read_text().splitlines()
    ((path, posted),) = endpoint.posts
    assert path == "/api/v1/lineage"
    assert posted == json.loads(line)
    validate_event(posted)
    assert log.undelivered == 0


def test_a_refused_post_is_a_clear_error_and_the_event_stays_in_the_file(
    tmp_path: Path, endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint.status = 503
    log = LineageLog(tmp_path, http=LineageHttp(url=endpoint.url, attempts=2))
    with caplog.at_level(logging.ERROR, logger="training.lineage"):
        log.committed(_manifest(6), "s3://lake/ckpt/r/6/")  # the checkpoint is not affected: no raise
    assert log.undelivered == 1
    assert len(endpoint.posts) == 2  # two attempts, then given up
    # Only tierlake's own line: the OpenLineage client logs at INFO too, when an earlier test set the root to INFO.
    (record,) = [r for r in caplog.records if r.name == "training.lineage"]
    assert f"{endpoint.url}/api/v1/lineage" in record.getMessage()
    assert "HTTP 503" in record.getMessage()
    assert f"they stay in {log.path}" in record.getMessage()
    (line,) = log.path.read_text().splitlines()
    assert json.loads(line)["run"]["runId"] == endpoint.posts[0][1]["run"]["runId"]


def test_a_closed_endpoint_raises_naming_what_is_left_and_where(tmp_path: Path, endpoint: Endpoint) -> None:
    url = endpoint.url
    endpoint.close()
    http = LineageHttp(url=url, attempts=1, timeout_s=2)
    events = [{"eventType": "COMPLETE"}, {"eventType": "COMPLETE"}]
    with pytest.raises(
        LineageUndelivered, match=r"2 of 2 lineage events not delivered .*connection refused.*stay in"
    ) as raised:
        http.send(events, kept_in="somewhere.jsonl")
    assert raised.value.unsent == 2
    assert "tierlake lineage send <file> --last 2" in str(raised.value)


def _bronze(folder: Path, batches: int) -> str:
    uri = str(folder / "bronze")
    for batch in range(batches):
        ranges = {0: (batch * 10, batch * 10 + 9)}
        props = CommitProperties(custom_metadata={"userMetadata": commit_metadata("ev", batch, {"ev.t": ranges})})
        write_deltalake(uri, pa.table({"n": [batch]}), mode="append", commit_properties=props)
    return uri


def test_sync_posts_its_new_events_and_a_failure_leaves_them_in_table_and_file(
    tmp_path: Path, endpoint: Endpoint
) -> None:
    uri = _bronze(tmp_path, 2)
    store = LineageStore(str(tmp_path / "lineage"))
    out = tmp_path / "lake.jsonl"
    sources = LineageSources(tables=[uri], lake_bucket="lake", events_out=out, http=LineageHttp(url=endpoint.url))
    report = sync(store, sources)
    assert report.posted == report.events == 2
    assert [p[1] for p in endpoint.posts] == [json.loads(line) for line in out.read_text().splitlines()]
    write_deltalake(uri, pa.table({"n": [2]}), mode="append", commit_properties=CommitProperties(
        custom_metadata={"userMetadata": commit_metadata("ev", 2, {"ev.t": {0: (20, 29)}})}
    ))  # fmt: skip
    endpoint.status = 500
    with pytest.raises(
        LineageUndelivered, match=r"1 of 1 lineage events .*HTTP 500.*lineage table .* and .*lake\.jsonl"
    ):
        sync(store, sources)
    batches = store.read(columns=["batch_id"])["batch_id"].to_pylist()
    assert sorted(batches) == [0, 1, 2]  # the table holds the batch whose event was refused
    assert len(out.read_text().splitlines()) == 3
    endpoint.status = 201
    env = {**os.environ, "TIERLAKE_RUN_DIR": str(tmp_path / "run")}
    tierlake = Path(sys.executable).parent / "tierlake"
    sent = subprocess.run(
        [str(tierlake), "lineage", "send", str(out), "--last", "1", "--url", endpoint.url, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["posted"] == 1
    assert endpoint.posts[-1][1] == json.loads(out.read_text().splitlines()[-1])


KEY = "tl-test-key-0f3a9c"


def _section(env: dict[str, str]) -> CheckpointSettings:
    return load_settings("ci", conf_dir=REPO / "conf", env=env).checkpoint


def test_the_api_key_from_a_named_variable_or_file_is_sent_as_a_bearer_header_and_never_shown(
    tmp_path: Path, endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint.api_key = KEY
    named = _section(
        {"TIERLAKE_CHECKPOINT__LINEAGE_URL": endpoint.url, "TIERLAKE_CHECKPOINT__LINEAGE_API_KEY_ENV": "TL_KEY"}
    )
    assert KEY not in repr(named)
    http = lineage_http_for(named, {"TL_KEY": KEY})
    assert http is not None
    assert KEY not in repr(http)
    with caplog.at_level(logging.DEBUG):
        assert http.send([{"eventType": "COMPLETE"}], kept_in="f.jsonl") == 1
    assert endpoint.authorization == [f"Bearer {KEY}"]
    assert KEY not in caplog.text
    secret = tmp_path / "lineage.key"
    secret.write_text(KEY + "\n")
    filed = _section(
        {"TIERLAKE_CHECKPOINT__LINEAGE_URL": endpoint.url, "TIERLAKE_CHECKPOINT__LINEAGE_API_KEY_FILE": str(secret)}
    )
    http = lineage_http_for(filed, {})
    assert http is not None
    assert http.send([{"eventType": "COMPLETE"}], kept_in="f.jsonl") == 1
    assert endpoint.authorization[-1] == f"Bearer {KEY}"
    plain = lineage_http_for(_section({"TIERLAKE_CHECKPOINT__LINEAGE_URL": endpoint.url}), {"TL_KEY": KEY})
    assert plain is not None
    assert plain.api_key == ""  # no setting names a key: none is sent, whatever the environment holds


def test_a_401_is_a_clear_error_naming_the_setting_to_fix(tmp_path: Path, endpoint: Endpoint) -> None:
    endpoint.api_key = KEY
    secret = tmp_path / "lineage.key"
    secret.write_text("not-the-key")
    section = _section(
        {"TIERLAKE_CHECKPOINT__LINEAGE_URL": endpoint.url, "TIERLAKE_CHECKPOINT__LINEAGE_API_KEY_FILE": str(secret)}
    )
    http = lineage_http_for(section, {})
    assert http is not None
    with pytest.raises(
        LineageUndelivered,
        match=rf"HTTP 401 .*refused the API key from checkpoint.lineage_api_key_file = {re.escape(str(secret))}\. Fix",
    ) as raised:
        http.send([{"eventType": "COMPLETE"}], kept_in="f.jsonl")
    assert "not-the-key" not in str(raised.value)
    assert len(endpoint.posts) == 1  # a refused key is not retried
    keyless = lineage_http_for(_section({"TIERLAKE_CHECKPOINT__LINEAGE_URL": endpoint.url}), {})
    assert keyless is not None
    with pytest.raises(
        LineageUndelivered, match=r"HTTP 401 .*none is configured\. Fix: set checkpoint.lineage_api_key_env"
    ):
        keyless.send([{"eventType": "COMPLETE"}], kept_in="f.jsonl")


def test_a_named_key_that_is_missing_or_named_twice_is_a_config_error(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9"
    section = _section({"TIERLAKE_CHECKPOINT__LINEAGE_URL": url, "TIERLAKE_CHECKPOINT__LINEAGE_API_KEY_ENV": "TL_KEY"})
    with pytest.raises(
        ConfigError, match=r"checkpoint\.lineage_api_key_env = TL_KEY: the environment variable TL_KEY is"
    ):
        lineage_http_for(section, {"TL_KEY": "  "})
    missing = tmp_path / "absent.key"
    section = _section(
        {"TIERLAKE_CHECKPOINT__LINEAGE_URL": url, "TIERLAKE_CHECKPOINT__LINEAGE_API_KEY_FILE": str(missing)}
    )
    with pytest.raises(ConfigError, match=r"lineage_api_key_file = .*absent\.key: the file cannot be read"):
        lineage_http_for(section, {})
    both = {"TIERLAKE_CHECKPOINT__LINEAGE_API_KEY_ENV": "TL_KEY", "TIERLAKE_CHECKPOINT__LINEAGE_API_KEY_FILE": "k"}
    with pytest.raises(ConfigError, match="lineage_api_key_env is set too"):
        _section(both)
    with pytest.raises(ConfigError, match="must be an environment variable's name"):
        _section({"TIERLAKE_CHECKPOINT__LINEAGE_API_KEY_ENV": "not a name"})
