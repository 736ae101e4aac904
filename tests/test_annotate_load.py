"""The real server (uvicorn, in a subprocess) under concurrent labellers, and killed.

- Load: 20 labellers x 100 labels submitted concurrently over loopback through the HTML
  forms (open the task page, post the form; the answer redirects to the next task),
  every tenth one double-submitted at once (a double click); afterwards the
  database holds exactly the acknowledged labels, with the labeller's choice, no task
  twice per labeller and no task over its quota. Prints labels/s and p95 latency.
- Crash: SIGKILL the server in the middle of labelling; after a restart on the same
  database every acknowledged label is there and labellers go on with their sessions.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from annotate_helpers import (SAVED, Labeller, ServerProcess, expected_label, make_db,
                              make_tasks, stored_labels)

from rlxf.feedback.human.store import open_store

QUOTA = 3


def choose(rng: random.Random, kind: str, k: int) -> dict[str, str]:
    """A labeller's decision: mostly real choices, some ties and skips."""
    if rng.random() < 0.05:
        return {"choice": "skip"}
    if kind == "pair":
        return {"choice": rng.choices(["A", "B", "tie"], [45, 45, 10])[0]}
    ranks = rng.sample(range(1, k + 1), k)
    return {"choice": "rank", **{f"rank_{p}": str(r) for p, r in enumerate(ranks)}}


class Worker:
    """One labeller's loop; records every acknowledged label and each POST's latency."""

    def __init__(self, base_url: str, name: str, seed: int) -> None:
        self.labeller = Labeller(base_url, name)
        self.rng = random.Random(seed)
        self.acknowledged: dict[int, tuple] = {}  # assignment id -> expected stored label
        self.latencies: list[float] = []
        self.error: BaseException | None = None
        self.next_id: int | None = None  # where the last saved label redirected to

    def label(self, count: int | None, stop: threading.Event | None = None,
              double_every: int = 10) -> None:
        try:
            while count is None or len(self.acknowledged) < count:
                if stop is not None and stop.is_set():
                    return
                self.label_one(double=double_every > 0 and
                               len(self.acknowledged) % double_every == double_every - 1)
        except httpx.TransportError as err:
            self.error = err  # expected only when the server is killed
        except BaseException as err:  # noqa: BLE001 - re-raised by the test
            self.error = err

    def label_one(self, double: bool) -> None:
        # A saved label redirects straight to the next task; otherwise ask for one.
        assignment_id, self.next_id = self.next_id or self.labeller.next_assignment(), None
        assert assignment_id is not None, "ran out of tasks"
        kind, answers, _ = self.labeller.open(assignment_id)
        form = choose(self.rng, kind, len(answers))
        start = time.perf_counter()
        if double:  # two identical POSTs at once, like a double click
            with ThreadPoolExecutor(2) as pool:
                responses = list(pool.map(lambda _: self.labeller.submit(assignment_id, form),
                                          range(2)))
        else:
            responses = [self.labeller.submit(assignment_id, form)]
        self.latencies.append(time.perf_counter() - start)
        for r in responses:
            saved = r.status_code == 303 and SAVED.match(r.headers["location"])
            assert saved, (r.status_code, r.text[-300:])
        # Both POSTs of a double click lead to the same next task.
        assert len({r.headers["location"] for r in responses}) == 1
        self.next_id = int(saved.group(1)) if saved.group(1) else None
        outcome, texts = expected_label(kind, answers, form)
        self.acknowledged[assignment_id] = (self.labeller.name, outcome, texts)


def check_database(store, acknowledged: dict[int, tuple], exact: bool) -> None:
    stored = stored_labels(store)
    if exact:
        assert set(stored) == set(acknowledged), "lost or unexpected labels"
    else:
        missing = set(acknowledged) - set(stored)
        assert not missing, f"{len(missing)} acknowledged labels lost"
    for assignment_id, expected in acknowledged.items():
        assert stored[assignment_id][:3] == expected, assignment_id
    con = sqlite3.connect(store.path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # One label per assignment, one assignment per (task, labeller), quota kept, and
        # the per-task counter matches the labels.
        assert con.execute("SELECT COUNT(*), COUNT(DISTINCT assignment_id) FROM labels"
                           ).fetchone() == (len(stored),) * 2
        assert con.execute("SELECT task_id, user_id FROM assignments GROUP BY task_id, user_id "
                           "HAVING COUNT(*) > 1").fetchall() == []
        assert con.execute("SELECT COUNT(*) FROM labels GROUP BY task_id, user_id "
                           "HAVING COUNT(*) > 1").fetchall() == []
        over = con.execute("SELECT task_id FROM labels WHERE outcome != 'skip' GROUP BY task_id "
                           "HAVING COUNT(*) > ?", (QUOTA,)).fetchall()
        assert over == []
        assert con.execute("SELECT COUNT(*) FROM tasks t WHERE n_labels != (SELECT COUNT(*) "
                           "FROM labels l WHERE l.task_id = t.id AND l.outcome != 'skip')"
                           ).fetchone()[0] == 0
    finally:
        con.close()


def run_workers(workers: list[Worker], target, *args) -> None:
    threads = [threading.Thread(target=target(w), args=args) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a labeller hung"


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_twenty_concurrent_labellers_lose_and_duplicate_nothing(tmp_path):
    n_labellers, per_labeller = 20, 100
    names = [f"labeller{i:02d}" for i in range(n_labellers)]
    url, store = make_db(tmp_path / "load.db", make_tasks(640, 160, k=4), names)
    with ServerProcess(url, [f"labels_per_task={QUOTA}"], log_path=tmp_path / "server.log"
                       ) as srv:
        workers = [Worker(srv.url, name, seed=i) for i, name in enumerate(names)]
        for w in workers:
            w.labeller.log_in()
        start = time.perf_counter()
        run_workers(workers, lambda w: w.label, per_labeller)
        elapsed = time.perf_counter() - start
        for w in workers:
            w.labeller.close()
            if w.error is not None:
                raise AssertionError(f"{w.labeller.name}: {w.error!r}; "
                                     f"server log: {srv.log_text()}") from w.error
    acknowledged = {a: label for w in workers for a, label in w.acknowledged.items()}
    assert len(acknowledged) == n_labellers * per_labeller
    check_database(open_store(url), acknowledged, exact=True)
    latencies = sorted(x for w in workers for x in w.latencies)
    p95 = latencies[int(0.95 * len(latencies)) - 1]
    print(f"\nannotate load: {len(acknowledged)} labels by {n_labellers} concurrent labellers "
          f"in {elapsed:.1f}s = {len(acknowledged) / elapsed:.0f} labels/s (each label = "
          f"2 requests: task page, submit); submit (store + claim next) latency median "
          f"{1000 * statistics.median(latencies):.1f} ms, p95 {1000 * p95:.1f} ms")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_killed_server_loses_no_acknowledged_label(tmp_path):
    names = [f"labeller{i}" for i in range(6)]
    url, _ = make_db(tmp_path / "crash.db", make_tasks(300, 60, k=3), names)
    srv = ServerProcess(url, [f"labels_per_task={QUOTA}"], log_path=tmp_path / "server.log")
    srv.start()
    workers = [Worker(srv.url, name, seed=i) for i, name in enumerate(names)]
    for w in workers:
        w.labeller.log_in()
    stop = threading.Event()
    threads = [threading.Thread(target=w.label, args=(None, stop)) for w in workers]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while sum(len(w.acknowledged) for w in workers) < 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    srv.proc.send_signal(signal.SIGKILL)  # mid-request for some labellers
    srv.proc.wait()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    acknowledged = {a: label for w in workers for a, label in w.acknowledged.items()}
    assert len(acknowledged) >= 150
    assert all(w.error is None or isinstance(w.error, httpx.TransportError) for w in workers), \
        [w.error for w in workers]

    srv.start()  # same database, same port: starts cleanly
    try:
        check_database(open_store(url), acknowledged, exact=False)
        # Sessions live on (the signing key is in the database): everyone goes on labelling.
        for w in workers:
            before, w.error = len(w.acknowledged), None
            w.label(before + 2, double_every=0)
            assert w.error is None and len(w.acknowledged) == before + 2
            w.labeller.close()
        acknowledged = {a: label for w in workers for a, label in w.acknowledged.items()}
        check_database(open_store(url), acknowledged, exact=False)
    finally:
        srv.stop()
    print(f"\nannotate crash: {len(acknowledged)} acknowledged labels all present after "
          "SIGKILL and restart")
