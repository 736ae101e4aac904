"""Serve the labelling web app: labellers compare or rank answers, admins watch progress.

Pages: log in (or accept an invite), the next task (pairwise: A / B / tie / skip;
ranking: give each of the K answers a rank), the labeller's own progress, and for
admins the counts per task and labeller with inter-annotator agreement. Labels are
committed to the database before the page answers, so stopping or killing the server
loses nothing acknowledged; restart it on the same database to go on.

It binds to 127.0.0.1; set ``host`` (e.g. 0.0.0.0) to let others reach it, and put it
behind an HTTPS proxy with ``secure_cookies: true`` when it leaves a trusted network.

    rlxf annotate serve database=sqlite:///labels.db labels_per_task=3
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from rlxf.errors import ConfigError, RlxfError
from rlxf.feedback.human.store import open_store, parse_database_url

log = logging.getLogger("rlxf")


@dataclass
class Config:
    database: str = "sqlite:///annotate.db"
    """The annotation database (sqlite:///relative.db or sqlite:////absolute.db); it must
    exist (create it with `rlxf annotate import` or `rlxf annotate users`)."""
    host: str = "127.0.0.1"
    """Interface to listen on; 0.0.0.0 serves every network the machine is on."""
    port: int = 8000
    """TCP port."""
    labels_per_task: int = 3
    """How many labellers judge each task (skips do not count)."""
    assignment_timeout_s: float = 1800.0
    """Seconds a labeller has for a task before it goes back to the pool."""
    session_hours: float = 12.0
    """How long a login lasts."""
    secure_cookies: bool = False
    """Send the session cookie over HTTPS only (turn on behind an HTTPS proxy)."""
    max_failed_logins: int = 10
    """Failed logins allowed per client and account within login_window_s."""
    login_window_s: float = 300.0
    """Window for max_failed_logins, in seconds."""
    title: str = "rlxf annotate"
    """Name shown at the top of every page."""
    instructions: str = ""
    """Guidelines shown above every task (plain text)."""
    access_log: bool = True
    """Log every request (uvicorn's access log)."""

    def validate(self) -> None:
        parse_database_url(self.database)
        if self.labels_per_task < 1:
            raise ConfigError(f"labels_per_task must be >= 1, got {self.labels_per_task}")
        if self.assignment_timeout_s <= 0 or self.session_hours <= 0:
            raise ConfigError("assignment_timeout_s and session_hours must be > 0")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if self.max_failed_logins < 1 or self.login_window_s <= 0:
            raise ConfigError("max_failed_logins must be >= 1 and login_window_s > 0")


def create_app(cfg: Config):
    """The ASGI app (FastAPI) for ``cfg``, e.g. to run under another ASGI server."""
    try:
        from rlxf.feedback.human.app import build_app
    except ImportError as err:
        raise RlxfError(f"the annotation server needs the 'annotate' extra ({err.name} is "
                        "missing): pip install 'rlxf[annotate]'") from None
    return build_app(cfg, open_store(cfg.database))


def run(cfg: Config) -> None:
    app = create_app(cfg)
    import uvicorn

    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.secure_cookies:
        log.warning("serving on %s without secure_cookies: passwords and session cookies "
                    "cross the network unencrypted unless an HTTPS proxy is in front",
                    cfg.host)
    uvicorn.run(app, host=cfg.host, port=cfg.port, access_log=cfg.access_log,
                log_level="info")
