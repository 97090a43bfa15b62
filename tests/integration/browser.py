"""Open a local HTML file in headless Chromium (Debian's ``chromium``) and report what a person's browser would see:
console errors, every request the page made, how many elements each chart drew, and a screenshot.

Driven over the DevTools protocol (a websocket, through aiohttp), so no browser is downloaded and nothing beyond
loopback is reached: the browser gets a fresh profile folder and a remote-debugging port on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")
# Drawn: the shapes inside a chart's data drawings (ids starting "data-", pipelines.observe.render.tag_data), not
# its axes, ticks or legend, and not a marker's definition (<defs>), which draws nothing by itself.
_COUNT_CHARTS = """
JSON.stringify(Array.from(document.querySelectorAll('figure.chart')).map(f => ({
  name: f.dataset.chart,
  drawn: Array.from(f.querySelectorAll('svg [id^="data-"] :is(path, rect, line, polyline, polygon, use)'))
    .filter(e => !e.closest('defs')).length,
  width: f.querySelector('svg') ? f.querySelector('svg').getBoundingClientRect().width : 0,
})))
"""


@dataclass
class PageVisit:
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    charts: list[dict[str, Any]] = field(default_factory=list)
    title: str = ""


async def _devtools(ws: aiohttp.ClientWebSocketResponse, visit: PageVisit, url: str, shot: Path) -> None:
    ids = iter(range(1, 1_000_000))
    replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
    loaded = asyncio.Event()

    async def call(method: str, **params: Any) -> dict[str, Any]:
        n = next(ids)
        replies[n] = asyncio.get_running_loop().create_future()
        await ws.send_str(json.dumps({"id": n, "method": method, "params": params}))
        return await asyncio.wait_for(replies[n], 60)

    async def listen() -> None:
        async for message in ws:
            event = json.loads(message.data)
            if "id" in event and event["id"] in replies:
                replies[event["id"]].set_result(event.get("result", {}))
            method, params = event.get("method"), event.get("params", {})
            if method == "Network.requestWillBeSent":
                visit.requests.append(params["request"]["url"])
            elif method == "Runtime.exceptionThrown":
                visit.console_errors.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                visit.console_errors.append(json.dumps(params.get("args"))[:500])
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                visit.console_errors.append(params["entry"].get("text", "")[:500])
            elif method == "Page.loadEventFired":
                loaded.set()

    listener = asyncio.create_task(listen())
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            await call(f"{domain}.enable")
        await call("Emulation.setDeviceMetricsOverride", width=1200, height=900, deviceScaleFactor=1, mobile=False)
        await call("Page.navigate", url=url)
        await asyncio.wait_for(loaded.wait(), 60)
        await asyncio.sleep(0.5)  # late console messages, if any
        result = await call("Runtime.evaluate", expression=_COUNT_CHARTS, returnByValue=True)
        visit.charts = json.loads(result["result"]["value"])
        title = await call("Runtime.evaluate", expression="document.title", returnByValue=True)
        visit.title = str(title["result"]["value"])
        image = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        shot.write_bytes(base64.b64decode(image["data"]))
    finally:
        listener.cancel()


async def _visit(port: int, url: str, shot: Path) -> PageVisit:
    visit = PageVisit()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
            pages = [t for t in await response.json() if t.get("type") == "page"]
        async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            await _devtools(ws, visit, url, shot)
    return visit


def open_in_chromium(page: Path, *, screenshot: Path, profile: Path) -> PageVisit:
    """Load ``page`` (a file) in headless Chromium, keep a screenshot, and say what happened."""
    browser = subprocess.Popen(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert browser.stderr is not None
        for line in browser.stderr:
            if found := _LISTENING.search(line):
                port = int(found.group(1).split(":")[2].split("/")[0])
                break
        else:
            raise RuntimeError(f"chromium exited ({browser.wait()}) without a DevTools port")
        return asyncio.run(_visit(port, page.resolve().as_uri(), screenshot))
    finally:
        browser.terminate()
        try:
            browser.wait(timeout=20)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait()
