"""The tune report in a real browser: headless Chromium (Debian's ``chromium``) over the DevTools
protocol (a small stdlib WebSocket client below), checking that the page renders its plots, logs
no console error, requests nothing from the network, and shows user strings as text. A screenshot
is saved beside the report (and copied to ``$LRKIT_SCREENSHOT`` when set).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests._system import ensure_program

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--remote-debugging-port=0", "--window-size=1100,900"]
EVIL = "<img src=x onerror=alert(1)> & \"quotes\""


class _WebSocket:
    """The client side of RFC 6455, enough for the DevTools protocol (text frames, masked)."""

    def __init__(self, url: str) -> None:
        u = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += self.sock.recv(4096)
        head, self.buf = buf.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise ConnectionError(f"WebSocket handshake refused: {head[:200]!r}")

    def send(self, text: str) -> None:
        data = text.encode()
        n = len(data)
        hdr = bytearray([0x81])
        if n < 126:
            hdr.append(0x80 | n)
        elif n < 65536:
            hdr.append(0x80 | 126)
            hdr += struct.pack(">H", n)
        else:
            hdr.append(0x80 | 127)
            hdr += struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(bytes(hdr) + mask + masked)

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("DevTools connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self) -> str:
        message = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(n)
            op = b0 & 0x0F
            if op == 8:
                raise ConnectionError("DevTools closed the WebSocket")
            if op in (9, 10):  # ping / pong
                continue
            message += payload
            if b0 & 0x80:
                return message.decode()


class _DevTools:
    def __init__(self, ws: _WebSocket) -> None:
        self.ws, self.next_id, self.events = ws, 0, []

    def call(self, method: str, **params):
        self.next_id += 1
        my = self.next_id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, event: str, timeout: float = 30.0) -> dict:
        end = time.monotonic() + timeout
        for e in self.events:
            if e.get("method") == event:
                return e
        while time.monotonic() < end:
            msg = json.loads(self.ws.recv())
            self.events.append(msg)
            if msg.get("method") == event:
                return msg
        raise TimeoutError(event)


@pytest.fixture(scope="module")
def chromium():
    path = ensure_program("chromium", "chromium")
    if path is None:
        pytest.skip("chromium is not installed and cannot be installed here (needs root + apt)")
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    import dataclasses

    from lrkit.tune import tune
    from tests.tiny_task import make_task

    task = dataclasses.replace(make_task(200), description=EVIL)
    out = tmp_path_factory.mktemp("browser") / "run"
    res = tune(task, out=out, progress=False, schedules=("constant", "cosine", "onecycle"))
    return Path(res.report)


def _render(chromium: str, report: Path, tmp_path: Path) -> dict:
    """Open ``report`` in headless Chromium; its images, text, title, DevTools events, page
    height and a full-page screenshot."""
    profile = tmp_path / "profile"
    proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        port_file = profile / "DevToolsActivePort"
        end = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > end or proc.poll() is not None:
                pytest.fail("chromium did not open its DevTools port: "
                            + proc.stderr.read().decode(errors="replace")[-2000:]
                            if proc.poll() is not None else "timeout")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list",
                                                    timeout=30).read())
        page = next(t for t in targets if t["type"] == "page")
        cdp = _DevTools(_WebSocket(page["webSocketDebuggerUrl"]))
        for domain in ("Page", "Runtime", "Log", "Network"):
            cdp.call(f"{domain}.enable")
        cdp.call("Page.navigate", url=report.resolve().as_uri())
        cdp.wait_for("Page.loadEventFired")

        def js(expr: str):
            return cdp.call("Runtime.evaluate", expression=expr, returnByValue=True)[
                "result"]["value"]

        images = js("Array.from(document.images).map(i => [i.complete, i.naturalWidth, "
                    "i.naturalHeight, i.getBoundingClientRect().width])")
        text = js("document.body.innerText")
        title = js("document.title")
        metrics = cdp.call("Page.getLayoutMetrics")
        height = int(min(metrics["cssContentSize"]["height"], 8000))
        cdp.call("Emulation.setDeviceMetricsOverride", width=1100, height=height,
                 deviceScaleFactor=1, mobile=False)
        shot = base64.b64decode(cdp.call("Page.captureScreenshot", format="png",
                                         captureBeyondViewport=True)["data"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
    return {"images": images, "text": text, "title": title, "events": cdp.events,
            "height": height, "shot": shot}


def _check_clean(events: list) -> None:
    """No console error, no exception, and no request beyond the file itself and data: URIs."""
    errors = [e for e in events
              if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled"
                  and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded"
                  and e["params"]["entry"]["level"] == "error")]
    assert errors == []
    urls = [e["params"]["request"]["url"] for e in events
            if e.get("method") == "Network.requestWillBeSent"]
    assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls


def test_report_renders_in_chromium(chromium, report, tmp_path):
    page = _render(chromium, report, tmp_path)
    images, text, title, shot = page["images"], page["text"], page["title"], page["shot"]
    # the five plots decoded at their PNG sizes and laid out
    assert len(images) == 5
    for complete, w, h, shown in images:
        assert complete and w >= 400 and h >= 200 and shown > 300
    _check_clean(page["events"])
    # the user's string is shown as text, not parsed as markup
    assert EVIL in text
    assert "Decision:" in text and "Why" in text and title.startswith("lrkit tune")
    # the screenshot is a PNG of the whole page
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", shot[16:24])
    assert w == 1100 and h == page["height"] > 2000
    path = report.parent / "report-screenshot.png"
    path.write_bytes(shot)
    if os.environ.get("LRKIT_SCREENSHOT"):
        shutil.copy(path, os.environ["LRKIT_SCREENSHOT"])


def test_an_unconfirmed_report_renders_and_says_so(chromium, tmp_path):
    # a 40-step run: the budget pays for no confirmation runs (docs/tune.md)
    from lrkit.tune import tune
    from tests.tiny_task import make_task

    res = tune(make_task(40), out=tmp_path / "run", progress=False)
    assert res.stages[2].cost_steps == 0
    page = _render(chromium, Path(res.report), tmp_path)
    # range test, the "no confirmation runs" panel, schedule, final run (no time-rescaling plot)
    assert len(page["images"]) == 4
    for complete, w, h, shown in page["images"]:
        assert complete and w >= 400 and h >= 150 and shown > 300
    _check_clean(page["events"])
    assert "unconfirmed" in page["text"] and "Decision:" in page["text"]
    assert "No confirmation runs: the budget left too few steps" in page["text"]
    (tmp_path / "run" / "report-screenshot.png").write_bytes(page["shot"])
