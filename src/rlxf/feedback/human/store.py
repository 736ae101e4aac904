"""Storage of the annotation app: users, tasks, assignments and labels, in SQLite.

Every method is one transaction, so a label is either committed whole before the
server answers or not at all, and a killed server loses nothing it acknowledged. The
database runs in WAL mode, so readers (an export, the admin page) never block
labellers, and labels and accounts are committed with ``synchronous=FULL`` (on disk,
not just handed to the OS, so they survive a power cut too).

Tables::

    users        id, name, role (labeller|admin), password_hash, invite_hash,
                 invite_expires, session_version, disabled
    tasks        id, prompt (JSON), answers (JSON list of K), k, fingerprint, meta (JSON),
                 n_labels (labels so far, skips excluded)
    assignments  id, task_id, user_id, shown_order (JSON: screen position -> answer),
                 claimed_at, expires_at, done;  UNIQUE (task_id, user_id)
    labels       id, assignment_id UNIQUE, task_id, user_id, outcome (ranked|tie|skip),
                 ranking (JSON answer indices, best first), comment, seconds, created_at

The rules the app promises are enforced here, inside ``BEGIN IMMEDIATE`` transactions
(SQLite's write lock, taken before the first read, so two claims cannot both see the
same free slot):

- a task is handed out until it has ``labels_per_task`` labels; an assignment that is
  neither submitted nor expired holds one of those slots;
- a labeller never gets the same task twice (the UNIQUE constraint);
- an assignment not submitted within its timeout frees its slot for someone else;
- a label is stored once per assignment: a repeated submit is answered
  ``ALREADY_RECORDED`` and changes nothing.

Only SQLite is implemented. The URL parsing below already tells the backends apart, so a
PostgreSQL backend would be a second class with these methods (its claim would lock the
task row with ``SELECT ... FOR UPDATE SKIP LOCKED`` instead of ``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import enum
import hashlib
import json
import random
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlxf.data.records import Prompt
from rlxf.errors import ConfigError, RlxfError
from rlxf.feedback.human import auth

Role = Literal["labeller", "admin"]
Outcome = Literal["ranked", "tie", "skip"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    role TEXT NOT NULL CHECK (role IN ('labeller', 'admin')),
    password_hash TEXT,
    invite_hash TEXT UNIQUE,
    invite_expires REAL,
    session_version INTEGER NOT NULL DEFAULT 0,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    prompt TEXT NOT NULL,
    answers TEXT NOT NULL,
    k INTEGER NOT NULL CHECK (k >= 2),
    fingerprint TEXT NOT NULL UNIQUE,
    meta TEXT NOT NULL DEFAULT '{}',
    n_labels INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
-- Claims look at nearly finished tasks first (see _PICK_TASK).
CREATE INDEX IF NOT EXISTS tasks_by_progress ON tasks (n_labels DESC, id);
CREATE TABLE IF NOT EXISTS assignments (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks (id),
    user_id INTEGER NOT NULL REFERENCES users (id),
    shown_order TEXT NOT NULL,
    claimed_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    UNIQUE (task_id, user_id)
);
CREATE INDEX IF NOT EXISTS assignments_open ON assignments (task_id, done, expires_at);
CREATE INDEX IF NOT EXISTS assignments_by_user ON assignments (user_id, done, expires_at);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY,
    assignment_id INTEGER NOT NULL UNIQUE REFERENCES assignments (id),
    task_id INTEGER NOT NULL REFERENCES tasks (id),
    user_id INTEGER NOT NULL REFERENCES users (id),
    outcome TEXT NOT NULL CHECK (outcome IN ('ranked', 'tie', 'skip')),
    ranking TEXT,
    comment TEXT NOT NULL DEFAULT '',
    seconds REAL NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS labels_by_task ON labels (task_id);
CREATE INDEX IF NOT EXISTS labels_by_user ON labels (user_id, id);
"""

# The task a labeller gets next: one they have not been given, with a free slot (labels
# so far plus live assignments below the quota). Nearly finished tasks come first, so
# each task collects its labels close together in time and agreement can be measured
# early; the (n_labels DESC, id) index serves this order without sorting.
_PICK_TASK = """
SELECT t.id, t.k FROM tasks t
WHERE t.n_labels < :quota
  AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.task_id = t.id AND a.user_id = :user)
  AND t.n_labels + (SELECT COUNT(*) FROM assignments a
                    WHERE a.task_id = t.id AND a.done = 0 AND a.expires_at > :now) < :quota
ORDER BY t.n_labels DESC, t.id
LIMIT 1
"""


# --- records ----------------------------------------------------------------------------

@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: Role
    session_version: int
    disabled: bool
    has_password: bool

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class Task:
    """A prompt and its K answers; ``meta`` (source row, generating models) is never
    shown to labellers."""

    id: int
    prompt: Prompt
    answers: tuple[str, ...]
    meta: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return len(self.answers)


@dataclass(frozen=True)
class Label:
    """One labeller's judgment of one task, in answer indices (not screen positions).

    ``outcome``: ``"ranked"`` with ``ranking`` = answer indices best first (for a pair:
    ``(winner, loser)``), ``"tie"`` (pairs only) or ``"skip"``; both with ``ranking`` None.
    """

    id: int
    assignment_id: int
    task_id: int
    user_id: int
    user_name: str
    outcome: Outcome
    ranking: tuple[int, ...] | None
    comment: str
    seconds: float
    created_at: float


@dataclass(frozen=True)
class Assignment:
    """A task handed to one labeller. ``shown_order[p]`` is the answer shown at screen
    position p (drawn per assignment, so position bias averages out over labellers)."""

    id: int
    task: Task
    user_id: int
    shown_order: tuple[int, ...]
    claimed_at: float
    expires_at: float
    label: Label | None


class Submit(enum.Enum):
    """What happened to a submitted label."""

    RECORDED = "recorded"
    ALREADY_RECORDED = "already recorded"  # a repeat (double click, retry): nothing changed
    EXPIRED = "expired"  # too late: the slot went to another labeller
    NOT_FOUND = "not found"  # no such assignment for this labeller


# --- opening --------------------------------------------------------------------------

@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed database URL: ``sqlite:///relative.db``, ``sqlite:////absolute.db`` (the
    SQLAlchemy convention), or ``postgresql://user@host/db`` (recognised, not served)."""

    scheme: Literal["sqlite", "postgresql"]
    target: str  # the file for SQLite; the rest of the URL otherwise


def parse_database_url(url: str) -> DatabaseUrl:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"database {url!r} is not a URL; write sqlite:///{url} for a "
                          "file relative to the current folder")
    scheme = scheme.lower().split("+")[0]
    if scheme == "sqlite":
        if not rest.startswith("/") or rest in ("/", "/:memory:"):
            raise ConfigError(f"database {url!r}: write sqlite:///relative/path.db or "
                              "sqlite:////absolute/path.db (an in-memory database would "
                              "not be shared by import, serve and export)")
        return DatabaseUrl("sqlite", rest[1:])
    if scheme in ("postgresql", "postgres"):
        return DatabaseUrl("postgresql", rest)
    raise ConfigError(f"database {url!r}: unknown kind {scheme!r}; use sqlite:///FILE")


def open_store(url: str, *, create: bool = False) -> Store:
    """The store behind ``url``; ``create`` makes a new database (else it must exist)."""
    parsed = parse_database_url(url)
    if parsed.scheme != "sqlite":
        raise ConfigError(f"database {url!r}: only SQLite is implemented so far; PostgreSQL "
                          "needs a second Store backend (see docs/annotate.md)")
    path = Path(parsed.target)
    if not create and not path.is_file():
        raise RlxfError(f"database {path} does not exist; create it with "
                        "`rlxf annotate import` or `rlxf annotate users`")
    path.parent.mkdir(parents=True, exist_ok=True)
    return Store(path)


class Store:
    """The SQLite backend. Thread-safe: each thread gets its own connection."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        con = self._connection()
        con.execute("PRAGMA journal_mode = WAL")  # persistent: stored in the file
        con.executescript(_SCHEMA)
        con.execute("INSERT OR IGNORE INTO settings VALUES ('schema_version', '1')")
        con.execute("INSERT OR IGNORE INTO settings VALUES ('secret', ?)",
                    (secrets.token_hex(32),))
        self._secret = bytes.fromhex(con.execute(
            "SELECT value FROM settings WHERE key = 'secret'").fetchone()[0])

    @property
    def secret(self) -> bytes:
        """The key that signs session cookies; kept in the database, so sessions survive
        a restart, and anyone who can read the database could forge them."""
        return self._secret

    def close(self) -> None:
        """Close this thread's connection."""
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    # --- users ------------------------------------------------------------------------

    def add_user(self, name: str, role: Role, invite_ttl_s: float, now: float | None = None
                 ) -> str:
        """Create an account and return its invite token (shown once)."""
        if not _NAME.match(name):
            raise RlxfError(f"account name {name!r}: use 1-64 letters, digits and _.@- "
                            "starting with a letter or digit")
        if role not in ("labeller", "admin"):
            raise RlxfError(f"role {role!r}: use labeller or admin")
        now = _now(now)
        token = auth.new_token()
        with self._transaction() as con:
            if con.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise RlxfError(f"account {name!r} exists already; to let them set a new "
                                "password, give them a new invite instead")
            con.execute("INSERT INTO users (name, role, invite_hash, invite_expires, "
                        "created_at) VALUES (?, ?, ?, ?, ?)",
                        (name, role, auth.token_hash(token), now + invite_ttl_s, now))
        return token

    def new_invite(self, name: str, invite_ttl_s: float, now: float | None = None) -> str:
        """A fresh invite token for ``name``; their old password and sessions stop working."""
        token = auth.new_token()
        with self._transaction() as con:
            changed = con.execute(
                "UPDATE users SET invite_hash = ?, invite_expires = ?, password_hash = NULL, "
                "session_version = session_version + 1 WHERE name = ?",
                (auth.token_hash(token), _now(now) + invite_ttl_s, name)).rowcount
        if not changed:
            raise RlxfError(f"no account named {name!r}")
        return token

    def redeem_invite(self, token: str, password: str, now: float | None = None) -> User | None:
        """Set the password of the invited account; None if the token is wrong or expired."""
        _check_password(password)
        password_hash = auth.hash_password(password)  # slow: outside the write lock
        with self._transaction() as con:
            row = con.execute("SELECT id FROM users WHERE invite_hash = ? AND "
                              "invite_expires > ? AND disabled = 0",
                              (auth.token_hash(token), _now(now))).fetchone()
            if row is None:
                return None
            con.execute("UPDATE users SET password_hash = ?, invite_hash = NULL, "
                        "invite_expires = NULL WHERE id = ?", (password_hash, row["id"]))
        return self.user(row["id"])

    def invite_valid(self, token: str, now: float | None = None) -> bool:
        row = self._read_one("SELECT 1 FROM users WHERE invite_hash = ? AND invite_expires > ?"
                             " AND disabled = 0", (auth.token_hash(token), _now(now)))
        return row is not None

    def set_password(self, name: str, password: str) -> None:
        """Set a password directly (scripts, tests); ends the account's sessions."""
        _check_password(password)
        password_hash = auth.hash_password(password)
        with self._transaction() as con:
            changed = con.execute(
                "UPDATE users SET password_hash = ?, invite_hash = NULL, "
                "session_version = session_version + 1 WHERE name = ?",
                (password_hash, name)).rowcount
        if not changed:
            raise RlxfError(f"no account named {name!r}")

    def authenticate(self, name: str, password: str) -> User | None:
        row = self._read_one("SELECT id, password_hash, disabled FROM users WHERE name = ?",
                             (name,))
        ok = auth.verify_password(password, row["password_hash"] if row else None)
        return self.user(row["id"]) if ok and not row["disabled"] else None

    def user(self, user_id: int) -> User | None:
        row = self._read_one("SELECT * FROM users WHERE id = ?", (user_id,))
        return _user(row) if row else None

    def users(self) -> list[User]:
        with self._transaction(write=False) as con:
            return [_user(r) for r in con.execute("SELECT * FROM users ORDER BY name")]

    def set_disabled(self, name: str, disabled: bool) -> None:
        """Lock an account out (its labels stay) or let it back in."""
        with self._transaction() as con:
            changed = con.execute("UPDATE users SET disabled = ?, session_version = "
                                  "session_version + 1 WHERE name = ?",
                                  (int(disabled), name)).rowcount
        if not changed:
            raise RlxfError(f"no account named {name!r}")

    def end_sessions(self, user_id: int) -> None:
        """Log the user out everywhere (their session cookies stop being accepted)."""
        with self._transaction() as con:
            con.execute("UPDATE users SET session_version = session_version + 1 WHERE id = ?",
                        (user_id,))

    # --- tasks ------------------------------------------------------------------------

    def add_tasks(self, tasks: Iterable[tuple[Prompt, list[str], dict]],
                  now: float | None = None) -> tuple[int, int]:
        """Add ``(prompt, answers, meta)`` tasks in one transaction.

        Returns ``(added, duplicates)``: a task whose prompt and set of answers is
        already stored is not added again, so importing a file twice is harmless.
        """
        now = _now(now)
        added = duplicates = 0
        with self._transaction() as con:
            for prompt, answers, meta in tasks:
                if len(answers) < 2:
                    raise ValueError(f"a task needs at least 2 answers, got {len(answers)}")
                prompt_json = json.dumps(prompt, ensure_ascii=False)
                fingerprint = hashlib.sha256(json.dumps(
                    [prompt, sorted(answers)], ensure_ascii=False).encode()).hexdigest()
                inserted = con.execute(
                    "INSERT OR IGNORE INTO tasks (prompt, answers, k, fingerprint, meta, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (prompt_json, json.dumps(list(answers), ensure_ascii=False), len(answers),
                     fingerprint, json.dumps(meta, ensure_ascii=False), now)).rowcount
                added += inserted
                duplicates += 1 - inserted
        return added, duplicates

    def task_count(self) -> int:
        return self._read_one("SELECT COUNT(*) FROM tasks", ())[0]

    # --- assignments and labels ---------------------------------------------------------

    def claim(self, user_id: int, labels_per_task: int, timeout_s: float,
              now: float | None = None) -> Assignment | None:
        """The labeller's open assignment, else a new one; None when nothing is left."""
        now = _now(now)
        with self._transaction(durable=False) as con:  # a lost claim only frees a task
            row = con.execute("SELECT id FROM assignments WHERE user_id = ? AND done = 0 "
                              "AND expires_at > ? ORDER BY id LIMIT 1", (user_id, now)
                              ).fetchone()
            if row is None:
                task = con.execute(_PICK_TASK, {"user": user_id, "now": now,
                                                "quota": labels_per_task}).fetchone()
                if task is None:
                    return None
                order = random.sample(range(task["k"]), task["k"])
                row = con.execute(
                    "INSERT INTO assignments (task_id, user_id, shown_order, claimed_at, "
                    "expires_at) VALUES (?, ?, ?, ?, ?) RETURNING id",
                    (task["id"], user_id, json.dumps(order), now, now + timeout_s)).fetchone()
            return self._assignment(con, row["id"])

    def assignment(self, assignment_id: int, user_id: int) -> Assignment | None:
        """The assignment if it belongs to ``user_id``; None otherwise (no matter whose
        it is, so ids reveal nothing)."""
        with self._transaction(write=False) as con:
            found = self._assignment(con, assignment_id)
        return found if found is not None and found.user_id == user_id else None

    def submit(self, assignment_id: int, user_id: int, outcome: Outcome,
               ranking: Iterable[int] | None, comment: str, labels_per_task: int,
               now: float | None = None) -> Submit:
        """Store a label for the assignment, once.

        Raises:
            ValueError: ``ranking`` is not a permutation of the task's answers, or the
                outcome does not fit the task (a tie between more than two answers).
        """
        now = _now(now)
        ranking = tuple(ranking) if ranking is not None else None
        with self._transaction() as con:
            row = con.execute("SELECT a.*, t.k, t.n_labels FROM assignments a JOIN tasks t "
                              "ON t.id = a.task_id WHERE a.id = ?", (assignment_id,)
                              ).fetchone()
            if row is None or row["user_id"] != user_id:
                return Submit.NOT_FOUND
            if row["done"]:
                return Submit.ALREADY_RECORDED
            _check_outcome(outcome, ranking, row["k"])
            counts = outcome != "skip"
            if counts and now >= row["expires_at"]:
                # Late, but keep the label if nobody has taken the slot meanwhile.
                live_others = con.execute(
                    "SELECT COUNT(*) FROM assignments WHERE task_id = ? AND done = 0 "
                    "AND expires_at > ? AND id != ?",
                    (row["task_id"], now, assignment_id)).fetchone()[0]
                if row["n_labels"] + live_others >= labels_per_task:
                    return Submit.EXPIRED
            con.execute(
                "INSERT INTO labels (assignment_id, task_id, user_id, outcome, ranking, "
                "comment, seconds, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (assignment_id, row["task_id"], user_id, outcome,
                 json.dumps(ranking) if ranking is not None else None, comment,
                 now - row["claimed_at"], now))
            con.execute("UPDATE assignments SET done = 1 WHERE id = ?", (assignment_id,))
            if counts:
                con.execute("UPDATE tasks SET n_labels = n_labels + 1 WHERE id = ?",
                            (row["task_id"],))
        return Submit.RECORDED

    # --- reading labels -------------------------------------------------------------------

    def user_labels(self, user_id: int, limit: int = 50, offset: int = 0
                    ) -> list[tuple[Label, Task]]:
        """The labeller's own labels, newest first."""
        with self._transaction(write=False) as con:
            rows = con.execute(_LABELS + " WHERE l.user_id = ? ORDER BY l.id DESC "
                               "LIMIT ? OFFSET ?", (user_id, limit, offset)).fetchall()
            return [(_label(r), _task(r, prefix="t_")) for r in rows]

    def progress(self, user_id: int, labels_per_task: int) -> dict[str, int]:
        """``ranked``, ``tie``, ``skip`` counts of the labeller, and tasks ``available``."""
        with self._transaction(write=False) as con:
            out = {"ranked": 0, "tie": 0, "skip": 0}
            out.update(con.execute("SELECT outcome, COUNT(*) FROM labels WHERE user_id = ? "
                                   "GROUP BY outcome", (user_id,)).fetchall())
            out["available"] = con.execute(
                "SELECT COUNT(*) FROM tasks t WHERE t.n_labels < ? AND NOT EXISTS (SELECT 1 "
                "FROM assignments a WHERE a.task_id = t.id AND a.user_id = ?)",
                (labels_per_task, user_id)).fetchone()[0]
        return out

    def labelled_tasks(self) -> Iterator[tuple[Task, list[Label]]]:
        """Every task with at least one label, with its labels (skips included), in task
        order; read in one snapshot, so a running server does not disturb an export."""
        with self._transaction(write=False) as con:
            task, labels = None, []
            for row in con.execute(_LABELS + " ORDER BY l.task_id, l.id"):
                if task is None or task.id != row["task_id"]:
                    if task is not None:
                        yield task, labels
                    task, labels = _task(row, prefix="t_"), []
                labels.append(_label(row))
            if task is not None:
                yield task, labels

    # --- admin overview ---------------------------------------------------------------

    def overview(self, labels_per_task: int, now: float | None = None) -> dict[str, int]:
        now = _now(now)
        with self._transaction(write=False) as con:
            out = dict(con.execute(
                "SELECT COUNT(*) AS tasks, COALESCE(SUM(n_labels >= ?), 0) AS complete, "
                "COALESCE(SUM(n_labels), 0) AS labels FROM tasks", (labels_per_task,)
            ).fetchone())
            out.update(con.execute(
                "SELECT COALESCE(SUM(outcome = 'skip'), 0) AS skips, "
                "COALESCE(SUM(outcome = 'tie'), 0) AS ties FROM labels").fetchone())
            out.update(con.execute(
                "SELECT COALESCE(SUM(done = 0 AND expires_at > ?), 0) AS open, "
                "COALESCE(SUM(done = 0 AND expires_at <= ?), 0) AS expired FROM assignments",
                (now, now)).fetchone())
        return out

    def labeller_stats(self) -> list[dict[str, Any]]:
        """Per account: labels by outcome, mean seconds per label, time of the last label."""
        with self._transaction(write=False) as con:
            return [dict(r) for r in con.execute(
                "SELECT u.name, u.role, u.disabled, "
                "COALESCE(SUM(l.outcome = 'ranked'), 0) AS ranked, "
                "COALESCE(SUM(l.outcome = 'tie'), 0) AS ties, "
                "COALESCE(SUM(l.outcome = 'skip'), 0) AS skips, "
                "AVG(l.seconds) AS mean_seconds, MAX(l.created_at) AS last_label "
                "FROM users u LEFT JOIN labels l ON l.user_id = u.id "
                "GROUP BY u.id ORDER BY u.name")]

    def task_stats(self, limit: int, offset: int, now: float | None = None
                   ) -> list[dict[str, Any]]:
        """Per task: K, labels, skips, live assignments, prompt."""
        with self._transaction(write=False) as con:
            return [dict(r) for r in con.execute(
                "SELECT t.id, t.k, t.n_labels, t.prompt, "
                "(SELECT COUNT(*) FROM labels l WHERE l.task_id = t.id AND "
                " l.outcome = 'skip') AS skips, "
                "(SELECT COUNT(*) FROM assignments a WHERE a.task_id = t.id AND a.done = 0 "
                " AND a.expires_at > ?) AS open "
                "FROM tasks t ORDER BY t.id LIMIT ? OFFSET ?", (_now(now), limit, offset))]

    def recent_comments(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._transaction(write=False) as con:
            return [dict(r) for r in con.execute(
                "SELECT l.task_id, u.name, l.comment, l.created_at FROM labels l JOIN users u "
                "ON u.id = l.user_id WHERE l.comment != '' ORDER BY l.id DESC LIMIT ?",
                (limit,))]

    # --- internals ------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves. timeout: how long a
            # writer waits for the write lock before giving up (SQLite's busy handler).
            con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA foreign_keys = ON")
            con.execute("PRAGMA synchronous = FULL")
            self._local.con, self._local.durable = con, True
        return con

    @contextmanager
    def _transaction(self, write: bool = True, durable: bool = True
                     ) -> Iterator[sqlite3.Connection]:
        """One transaction; a write one takes the write lock up front (BEGIN IMMEDIATE),
        so its reads and writes cannot interleave with another writer's.

        A ``durable`` write is on disk when this returns (``synchronous=FULL``: the WAL
        is fsynced at commit). Other writes (claims) skip the fsync: they survive a
        killed process but maybe not a power cut, and the next durable commit's fsync
        covers them too, as the WAL is one append-only file.
        """
        con = self._connection()
        if not write:
            with self._run(con, "BEGIN"):
                yield con
            return
        if durable != self._local.durable:
            con.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self._local.durable = durable
        # Writers of this process queue on a lock rather than in SQLite's busy handler,
        # which polls with sleeps of up to 100 ms; the lock wakes the next writer at once.
        # BEGIN IMMEDIATE still guards against other processes (an import, an export).
        with self._write_lock, self._run(con, "BEGIN IMMEDIATE"):
            yield con

    @staticmethod
    @contextmanager
    def _run(con: sqlite3.Connection, begin: str) -> Iterator[None]:
        con.execute(begin)
        try:
            yield
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    def _read_one(self, sql: str, params: tuple) -> sqlite3.Row | None:
        return self._connection().execute(sql, params).fetchone()

    def _assignment(self, con: sqlite3.Connection, assignment_id: int) -> Assignment | None:
        row = con.execute("SELECT a.*, t.prompt AS t_prompt, t.answers AS t_answers, "
                          "t.meta AS t_meta FROM assignments a JOIN tasks t "
                          "ON t.id = a.task_id WHERE a.id = ?", (assignment_id,)).fetchone()
        if row is None:
            return None
        label = con.execute(_LABELS + " WHERE l.assignment_id = ?", (assignment_id,)
                            ).fetchone()
        return Assignment(row["id"], _task(row, prefix="t_", id_key="task_id"),
                          row["user_id"], tuple(json.loads(row["shown_order"])),
                          row["claimed_at"], row["expires_at"],
                          _label(label) if label else None)


_LABELS = ("SELECT l.*, u.name AS user_name, t.prompt AS t_prompt, t.answers AS t_answers, "
           "t.meta AS t_meta FROM labels l JOIN users u ON u.id = l.user_id "
           "JOIN tasks t ON t.id = l.task_id")


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _check_password(password: str) -> None:
    if len(password) < auth.MIN_PASSWORD_LENGTH:
        raise RlxfError(f"a password needs at least {auth.MIN_PASSWORD_LENGTH} characters")


def _check_outcome(outcome: str, ranking: tuple[int, ...] | None, k: int) -> None:
    if outcome == "ranked":
        if ranking is None or sorted(ranking) != list(range(k)):
            raise ValueError(f"a ranking must order each of the {k} answers exactly once, "
                             f"got {ranking}")
    elif outcome in ("tie", "skip"):
        if ranking is not None:
            raise ValueError(f"a {outcome} has no ranking")
        if outcome == "tie" and k != 2:
            raise ValueError("a tie is only possible between two answers")
    else:
        raise ValueError(f"unknown outcome {outcome!r}")


def _decode_prompt(text: str) -> Prompt:
    prompt = json.loads(text)
    return tuple(prompt) if isinstance(prompt, list) else prompt


def _user(row: sqlite3.Row) -> User:
    return User(row["id"], row["name"], row["role"], row["session_version"],
                bool(row["disabled"]), row["password_hash"] is not None)


def _task(row: sqlite3.Row, prefix: str, id_key: str = "task_id") -> Task:
    return Task(row[id_key], _decode_prompt(row[prefix + "prompt"]),
                tuple(json.loads(row[prefix + "answers"])), json.loads(row[prefix + "meta"]))


def _label(row: sqlite3.Row) -> Label:
    ranking = json.loads(row["ranking"]) if row["ranking"] is not None else None
    return Label(row["id"], row["assignment_id"], row["task_id"], row["user_id"],
                 row["user_name"], row["outcome"], tuple(ranking) if ranking else None,
                 row["comment"], row["seconds"], row["created_at"])
