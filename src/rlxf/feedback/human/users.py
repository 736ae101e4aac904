"""Manage annotation accounts: add labellers and admins, re-invite, disable; list them.

New accounts get an invite link (valid ``invite_ttl_h`` hours, usable once) where the
person picks their own password; the link is printed here and never stored (only its
hash is). Send it over a private channel. A new invite for an existing account (a
forgotten password) makes the old password and all sessions stop working.

    rlxf annotate users database=sqlite:///labels.db add=[alice,bob]
    rlxf annotate users database=sqlite:///labels.db add=[carol] role=admin
    rlxf annotate users database=sqlite:///labels.db invite=[bob] disable=[dave]
    rlxf annotate users database=sqlite:///labels.db          # just list the accounts
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlxf.errors import ConfigError, RlxfError
from rlxf.feedback.human.store import open_store, parse_database_url


@dataclass
class Config:
    database: str = "sqlite:///annotate.db"
    """The annotation database (created if new)."""
    add: list[str] = field(default_factory=list)
    """New accounts to create; each gets an invite link."""
    role: Literal["labeller", "admin"] = "labeller"
    """Role of the accounts in `add`: labeller, or admin (sees the admin pages too)."""
    invite: list[str] = field(default_factory=list)
    """Existing accounts that get a new invite link (their password stops working)."""
    disable: list[str] = field(default_factory=list)
    """Accounts to lock out; their labels are kept."""
    enable: list[str] = field(default_factory=list)
    """Disabled accounts to let back in."""
    base_url: str = "http://127.0.0.1:8000"
    """Address labellers use to reach the server, for the printed invite links."""
    invite_ttl_h: float = 72.0
    """Hours an invite link stays valid."""

    def validate(self) -> None:
        parse_database_url(self.database)
        if self.invite_ttl_h <= 0:
            raise ConfigError(f"invite_ttl_h must be > 0, got {self.invite_ttl_h}")
        both = set(self.disable) & set(self.enable)
        if both:
            raise ConfigError(f"{sorted(both)} in both disable and enable; pick one")


def run(cfg: Config) -> dict:
    """Apply the changes; return the new invite links and the account list (the CLI prints them)."""
    store = open_store(cfg.database, create=True)
    # Check every name first, so an error changes nothing (and loses no printed link).
    existing = {u.name.lower() for u in store.users()}
    taken = [name for name in cfg.add if name.lower() in existing]
    unknown = [name for name in cfg.invite + cfg.disable + cfg.enable
               if name.lower() not in existing]
    if taken or unknown:
        raise RlxfError(f"accounts that exist already: {taken or 'none'}; "
                        f"unknown accounts: {unknown or 'none'}")
    ttl_s = cfg.invite_ttl_h * 3600
    tokens = {name: store.add_user(name, cfg.role, ttl_s) for name in cfg.add}
    tokens |= {name: store.new_invite(name, ttl_s) for name in cfg.invite}
    for name in cfg.disable:
        store.set_disabled(name, True)
    for name in cfg.enable:
        store.set_disabled(name, False)
    links = {name: f"{cfg.base_url.rstrip('/')}/invite/{token}" for name, token in tokens.items()}
    accounts = [{"name": u.name, "role": u.role,
                 "status": "disabled" if u.disabled else
                           "active" if u.has_password else "invited"}
                for u in store.users()]
    return {"invites": links, "accounts": accounts}
