"""Open a page in headless Chromium over the DevTools protocol: console errors, image status, screenshot."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--remote-debugging-address=127.0.0.1"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def inspect_page(url: str, screenshot: Path, timeout: float = 60.0) -> dict:
    """Load `url`; return console errors, exceptions, failed requests and each image's status."""
    import websocket

    port = _free_port()
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    proc = subprocess.Popen([chromium(), *FLAGS, f"--remote-debugging-port={port}", f"--user-data-dir={profile}",
                             "--window-size=1300,900", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while True:
            try:
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2))
                page = next(t for t in targets if t["type"] == "page")
                break
            except (OSError, StopIteration):
                if time.time() > deadline:
                    raise TimeoutError("chromium did not open its DevTools endpoint")
                time.sleep(0.3)
        ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True)
        counter = iter(range(1, 10_000))
        events: list[dict] = []

        def call(method: str, **params) -> dict:
            i = next(counter)
            ws.send(json.dumps({"id": i, "method": method, "params": params}))
            while True:
                msg = json.loads(ws.recv())
                if msg.get("id") == i:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg.get("result", {})
                events.append(msg)

        for domain in ("Runtime", "Log", "Page", "Network"):
            call(f"{domain}.enable")
        call("Page.navigate", url=url)
        while True:  # wait for the load event
            msg = json.loads(ws.recv())
            events.append(msg)
            if msg.get("method") == "Page.loadEventFired":
                break
        images = call("Runtime.evaluate", returnByValue=True, expression=(
            "Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth}))"))
        shot = call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        ws.close()
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    console = [e["params"] for e in events if e.get("method") == "Runtime.consoleAPICalled"
               and e["params"].get("type") in ("error", "assert")]
    logs = [e["params"]["entry"] for e in events if e.get("method") == "Log.entryAdded"
            and e["params"]["entry"].get("level") == "error"]
    exceptions = [e["params"] for e in events if e.get("method") == "Runtime.exceptionThrown"]
    failed = [e["params"] for e in events if e.get("method") == "Network.loadingFailed"]
    return {"images": images["result"]["value"], "console_errors": console + logs, "exceptions": exceptions,
            "failed_requests": failed}


if __name__ == "__main__":  # python -m tests.browser REPORT.html OUT.png [HEIGHT]: a screenshot for the docs
    import sys

    from PIL import Image

    out = Path(sys.argv[2])
    result = inspect_page(Path(sys.argv[1]).resolve().as_uri(), out)
    height = int(sys.argv[3]) if len(sys.argv) > 3 else 2600
    img = Image.open(out)
    img.crop((0, 0, img.width, min(height, img.height))).save(out, optimize=True)
    broken = [i for i in result["images"] if not (i["complete"] and i["width"] > 0)]
    print(f"{out}: {len(result['images'])} images, {len(broken)} broken, "
          f"{len(result['console_errors']) + len(result['exceptions'])} console errors")
