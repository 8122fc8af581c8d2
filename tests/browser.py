"""Open a local HTML file in headless Chromium over the DevTools protocol (tests only).

`render` loads the page, waits for its load event, and returns a PNG screenshot, the state of
every <img> (loaded or not, natural size) and every console error, uncaught exception and failed
load the browser logged. Chromium is Debian's package (`.ci/run` installs it).
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import websocket

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--hide-scrollbars",
)
IMAGES_JS = (
    "JSON.stringify(Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, "
    "width: i.naturalWidth, height: i.naturalHeight})))"
)


def chromium() -> str | None:
    """The Chromium binary, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Rendered:
    """What the browser saw."""

    screenshot: bytes
    images: list[dict[str, Any]]
    errors: list[str]
    title: str


class _Session:
    """A DevTools websocket: send commands, collect events."""

    def __init__(self, url: str) -> None:
        self.ws = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self.ids)
        self.ws.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {timeout} s")
            self.events.append(json.loads(self.ws.recv()))


def _errors(events: list[dict[str, Any]]) -> list[str]:
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(f"console.{params['type']}: {params.get('args')}")
        elif method == "Runtime.exceptionThrown":
            errors.append(f"exception: {params['exceptionDetails'].get('text')}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        elif method == "Network.loadingFailed":
            errors.append(f"load failed: {params.get('errorText')}")
    return errors


def render(path: Path, width: int = 1280, height: int = 900) -> Rendered:
    """Load ``path`` in a fresh headless Chromium; screenshot the whole page."""
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
    # Chromium's helper processes can still write into the profile for a moment after the
    # browser exits: a leftover temporary folder is no test failure.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        process = subprocess.Popen(
            [
                binary,
                *FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            while not port_file.exists() or not port_file.read_text().strip():
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("chromium did not open its DevTools port")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as answer:
                pages = [t for t in json.load(answer) if t["type"] == "page"]
            session = _Session(pages[0]["webSocketDebuggerUrl"])
            for domain in ("Page", "Runtime", "Log", "Network"):
                session.call(f"{domain}.enable")
            session.call("Page.navigate", url=path.resolve().as_uri())
            session.wait_for("Page.loadEventFired")
            images = json.loads(
                session.call("Runtime.evaluate", expression=IMAGES_JS, returnByValue=True)[
                    "result"
                ]["value"]
            )
            title = session.call("Runtime.evaluate", expression="document.title")["result"]
            shot = session.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            session.ws.close()
            return Rendered(
                screenshot=base64.b64decode(shot["data"]),
                images=images,
                errors=_errors(session.events),
                title=title.get("value", ""),
            )
        finally:
            process.terminate()
            process.wait(timeout=30)
