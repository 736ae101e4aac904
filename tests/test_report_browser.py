"""report.html in headless Chromium: it renders, every image loads, nothing is fetched,
the console stays clean and an answer holding <script> stays text. Skipped, with the
reason shown, when Chromium or chromedriver is not installed
(``apt-get install chromium chromium-driver``)."""

from __future__ import annotations

import pytest
from annotate_browser import Browser
from test_report import make_pipeline

from rlxf.evaluate import report


class ReportBrowser(Browser):
    """The annotate test's WebDriver client, plus script evaluation and the console log."""

    def execute(self, script: str):
        return self._cmd("POST", "/execute/sync", {"script": script, "args": []})

    def console_errors(self) -> list[dict]:
        """Browser log entries at level SEVERE (console.error, failed loads, CSP and script errors);
        chromedriver collects them by default."""
        return [e for e in self._cmd("POST", "/se/log", {"type": "browser"}) if e["level"] == "SEVERE"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_report_renders_in_chromium_with_every_image_and_no_console_error(tmp_path, chromium):
    root = make_pipeline(tmp_path / "demo")
    page = report.run(report.Config(runs=[str(root)], out=str(root), title="Tinyworld run"))["report"]
    browser = ReportBrowser(*chromium)
    try:
        browser.get(f"file://{page}")
        browser.wait_until(lambda: browser.execute("return document.readyState") == "complete", "the page to load")
        assert browser.execute("return document.title") == "Tinyworld run"
        assert browser.text(browser.find("h1")) == "Tinyworld run"
        headings = [browser.text(h) for h in browser.find_all("h2")]
        assert headings[:3] == ["What was trained", "Headline numbers", "Win rates"]
        assert {"Stage: sft", "Stage: ppo", "Side by side", "How to read this report"} <= set(headings)
        images = browser.execute("return [...document.images].map(i => [i.complete, i.naturalWidth, i.alt])")
        assert len(images) == 5
        assert all(done and width > 0 for done, width, _ in images), images
        # nothing was fetched (data: URIs are not network resources) and nothing went wrong
        assert browser.execute("return performance.getEntriesByType('resource').length") == 0
        assert browser.console_errors() == []
        # the <script> in a model answer is shown as text, not run
        assert not browser.alert_open()
        cells = [browser.text(c) for c in browser.find_all("table.sxs td")]
        assert "<script>alert('x')</script>" in cells
        assert browser.execute("return document.scripts.length") == 0
    finally:
        browser.quit()
