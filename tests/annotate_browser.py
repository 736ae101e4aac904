"""A minimal W3C WebDriver client (httpx + chromedriver) for the browser test.

Only what the test needs: open a page, find elements by CSS, click, type, read text.
Talking the WebDriver HTTP protocol directly avoids a selenium dependency; chromedriver
and Chromium come from Debian (``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time

import httpx
from annotate_helpers import free_port

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
               "--window-size=1280,1000"]


def find_chromium() -> tuple[str, str] | None:
    """(chromium, chromedriver) paths, or None when either is missing."""
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                                  "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


class WebDriverError(RuntimeError):
    pass


class Browser:
    def __init__(self, browser: str, driver: str, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self.profile = tempfile.TemporaryDirectory(prefix="rlxf-chromium-")
        port = free_port()
        self.driver = subprocess.Popen([driver, f"--port={port}"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        self._wait(lambda: self._ready(), "chromedriver to start")
        caps = {"browserName": "chrome", "goog:chromeOptions": {
            "binary": browser, "args": CHROME_ARGS + [f"--user-data-dir={self.profile.name}"]}}
        self.session = self._call("POST", "/session",
                                  {"capabilities": {"alwaysMatch": caps}})["sessionId"]

    # --- commands ----------------------------------------------------------------------

    def get(self, url: str) -> None:
        self._cmd("POST", "/url", {"url": url})

    def find(self, css: str) -> str:
        """The first element matching ``css``, waiting for it to appear."""
        found: list[str] = []
        self._wait(lambda: found.extend(self.find_all(css)) or found, f"element {css!r}")
        return found[0]

    def find_all(self, css: str) -> list[str]:
        values = self._cmd("POST", "/elements", {"using": "css selector", "value": css})
        return [v[ELEMENT] for v in values]

    def exists(self, css: str) -> bool:
        return bool(self.find_all(css))

    def click(self, css: str) -> None:
        self._cmd("POST", f"/element/{self.find(css)}/click", {})

    def type(self, css: str, text: str) -> None:
        self._cmd("POST", f"/element/{self.find(css)}/value", {"text": text})

    def text(self, element: str) -> str:
        return self._cmd("GET", f"/element/{element}/text")

    def attribute(self, css: str, name: str) -> str | None:
        return self._cmd("GET", f"/element/{self.find(css)}/attribute/{name}")

    def is_selected(self, css: str) -> bool:
        return self._cmd("GET", f"/element/{self.find(css)}/selected")

    def alert_open(self) -> bool:
        try:
            self._cmd("GET", "/alert/text")
            return True
        except WebDriverError as err:
            if "no such alert" in str(err):
                return False
            raise

    def wait_until(self, predicate, what: str) -> None:
        self._wait(predicate, what)

    def quit(self) -> None:
        try:
            self._call("DELETE", f"/session/{self.session}")
        except (httpx.HTTPError, WebDriverError):
            pass
        self.driver.terminate()
        try:
            self.driver.wait(10)
        except subprocess.TimeoutExpired:
            self.driver.kill()
        self.http.close()
        self.profile.cleanup()

    # --- protocol ------------------------------------------------------------------------

    def _cmd(self, method: str, path: str, body: dict | None = None):
        return self._call(method, f"/session/{self.session}{path}", body)

    def _call(self, method: str, path: str, body: dict | None = None):
        response = self.http.request(method, path, json=body)
        value = response.json().get("value")
        if response.status_code != 200:
            error = value.get("error") if isinstance(value, dict) else value
            message = value.get("message", "") if isinstance(value, dict) else ""
            raise WebDriverError(f"{method} {path}: {error}: {message[:300]}")
        return value

    def _ready(self) -> bool:
        try:
            return self.http.get("/status").json()["value"]["ready"]
        except (httpx.HTTPError, ValueError, KeyError):
            return False

    def _wait(self, predicate, what: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {self.timeout_s}s for {what}")
            time.sleep(0.05)
