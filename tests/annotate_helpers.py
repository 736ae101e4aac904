"""Helpers for the annotation tests: a database with tasks and accounts, the real server
in a subprocess, and a labeller that drives the HTML forms over HTTP (httpx)."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

import rlxf
from rlxf.feedback.human.store import Store, open_store

PASSWORD = "correct horse battery"
XSS = "<script>alert(1)</script><b>x</b>"
SRC = str(Path(rlxf.__file__).resolve().parents[1])


def make_tasks(n_pairs: int, n_rankings: int = 0, k: int = 4) -> list[tuple]:
    """``(prompt, answers, meta)`` tasks with distinct, recognisable texts."""
    tasks = [(f"pair prompt {i}", [f"pair {i} answer one", f"pair {i} answer two"], {})
             for i in range(n_pairs)]
    tasks += [(f"rank prompt {i}", [f"rank {i} answer {j}" for j in range(k)], {})
              for i in range(n_rankings)]
    return tasks


def make_db(path: Path, tasks: list[tuple], labellers: list[str], admins: list[str] = ()
            ) -> tuple[str, Store]:
    url = f"sqlite:///{path}"
    store = open_store(url, create=True)
    store.add_tasks(tasks)
    for names, role in ((labellers, "labeller"), (admins, "admin")):
        for name in names:
            store.add_user(name, role, invite_ttl_s=3600)
            store.set_password(name, PASSWORD)
    return url, store


def sql(store: Store, query: str, *params) -> list[tuple]:
    """Run SQL on the store's database file directly (to inspect it, or to move time)."""
    con = sqlite3.connect(store.path, isolation_level=None)
    try:
        return con.execute(query, params).fetchall()
    finally:
        con.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """``rlxf.feedback.human.server.run`` in a subprocess, as ``rlxf annotate serve`` runs it."""

    database: str
    overrides: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> ServerProcess:
        code = ("import sys; from rlxf.config import load_config; "
                "from rlxf.feedback.human import server; "
                "server.run(load_config(server.Config, None, sys.argv[1:]))")
        args = [f"database={self.database}", f"port={self.port}", "access_log=false",
                *self.overrides]
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env,
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; "
                                   f"log: {self.log_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).text == "ok":
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not start within {timeout_s}s; log: {self.log_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path else ""

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def csrf_token(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def answers_on_page(html: str) -> list[str]:
    """The answer texts in screen order (HTML-unescaped)."""
    import html as html_lib

    return [html_lib.unescape(text) for text in
            re.findall(r'<article class="answer"[^>]*>\s*<h3>[^<]*</h3>\s*'
                       r'<div class="text">(.*?)</div>', html, re.S)]


class Labeller:
    """One labeller using the site like a browser would: GET pages, POST their forms."""

    def __init__(self, base_url: str, name: str, timeout_s: float = 30.0) -> None:
        self.name = name
        self.http = httpx.Client(base_url=base_url, timeout=timeout_s, follow_redirects=False)
        self.token = ""

    def log_in(self, password: str = PASSWORD) -> None:
        page = self.http.get("/login")
        response = self.http.post("/login", data={"name": self.name, "password": password,
                                                  "csrf_token": csrf_token(page.text)})
        assert response.status_code == 303, (response.status_code, response.text[-500:])
        self.token = csrf_token(self.http.get("/me").text)

    def next_assignment(self) -> int | None:
        """Claim the next task; its assignment id, or None when nothing is left."""
        response = self.http.get("/next")
        if response.status_code == 200:
            assert "no task left" in response.text
            return None
        assert response.status_code == 303, response.status_code
        return int(re.match(r"/assignments/(\d+)", response.headers["location"]).group(1))

    def open(self, assignment_id: int) -> tuple[str, list[str], str]:
        """``(kind, answers in screen order, prompt text)`` of an assignment's page."""
        page = self.http.get(f"/assignments/{assignment_id}")
        assert page.status_code == 200, page.status_code
        kind = re.search(r'data-kind="(\w+)"', page.text).group(1)
        prompt = re.search(r'<div class="prompt text" id="prompt">(.*?)</div>', page.text, re.S)
        return kind, answers_on_page(page.text), prompt.group(1)

    def submit(self, assignment_id: int, form: dict[str, str]) -> httpx.Response:
        return self.http.post(f"/assignments/{assignment_id}",
                              data={"csrf_token": self.token, **form})

    def close(self) -> None:
        self.http.close()


SAVED = re.compile(r"^/(?:assignments/(\d+)|next)\?saved=1$")  # where a saved label leads


def expected_label(kind: str, answers: list[str], form: dict[str, str]
                   ) -> tuple[str, tuple[str, ...] | None]:
    """What the database should hold for ``form`` posted on a page showing ``answers``:
    ``(outcome, answer texts best first)``."""
    choice = form["choice"]
    if choice in ("skip", "tie"):
        return choice, None
    if kind == "pair":
        first = 0 if choice == "A" else 1
        return "ranked", (answers[first], answers[1 - first])
    order = sorted(range(len(answers)), key=lambda p: int(form[f"rank_{p}"]))
    return "ranked", tuple(answers[p] for p in order)


def stored_labels(store: Store) -> dict[int, tuple[str, str, tuple[str, ...] | None, int]]:
    """``{assignment id: (labeller, outcome, answer texts best first, task id)}``."""
    out = {}
    for task, labels in store.labelled_tasks():
        for label in labels:
            texts = (tuple(task.answers[i] for i in label.ranking)
                     if label.ranking is not None else None)
            out[label.assignment_id] = (label.user_name, label.outcome, texts, task.id)
    return out
