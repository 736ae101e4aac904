"""Passwords, invite tokens, signed session cookies, CSRF tokens and login throttling.

Pure standard library (``hashlib``, ``hmac``, ``secrets``), so it is easy to audit:

- passwords are hashed with scrypt and a random salt (RFC 7914; the cost n=2**14, r=8,
  p=1 is the interactive-login setting OWASP lists), compared in constant time;
- invite tokens are 32 random bytes shown once; only their SHA-256 is stored;
- a session cookie is ``base64(json payload).base64(HMAC-SHA256(secret, payload))``;
  the payload holds a random session id, the user id and the user's
  ``session_version`` (bumped on logout, password reset and disabling, which ends every
  session of that user at once), and the time it was issued;
- the CSRF token of a session is ``HMAC(secret, "csrf:" + session id)``: every POST form
  carries it, and a request whose token is missing or wrong is refused (403).

Cookies and tokens we issue are URL-safe base64, so one holding any other character is
refused before it is compared: ``hmac.compare_digest`` raises TypeError on a non-ASCII
str, which would make the page a 500 instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _SCRYPT_LEN = 2**14, 8, 1, 32
MIN_PASSWORD_LENGTH = 8


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` (salt and hash in URL-safe base64)."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches ``stored``; takes as long when there is no hash."""
    if not stored:
        # Spend the same time as a real check, so response times do not reveal which
        # account names exist.
        _scrypt(password, b"\0" * 16, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        assert scheme == "scrypt"
        expected = _unb64(digest)
        actual = _scrypt(password, _unb64(salt), int(n), int(r), int(p))
    except (ValueError, AssertionError):
        return False
    return hmac.compare_digest(actual, expected)


def new_token() -> str:
    """A random URL-safe token (256 bits) for invite links."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What the database keeps of an invite token. A plain hash suffices: the token is
    random and long, so unlike a password it cannot be guessed from its hash."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class SessionData:
    """What a session cookie says: who (``user_id``, None before login) since when."""

    sid: str
    user_id: int | None
    version: int
    issued_at: float


class CookieSigner:
    """Signs and checks session cookies and derives each session's CSRF token."""

    def __init__(self, secret: bytes, max_age_s: float) -> None:
        self._secret, self.max_age_s = secret, max_age_s

    def new_session(self, user_id: int | None = None, version: int = 0) -> SessionData:
        return SessionData(secrets.token_urlsafe(16), user_id, version, time.time())

    def dumps(self, session: SessionData) -> str:
        payload = _b64(json.dumps([session.sid, session.user_id, session.version,
                                   round(session.issued_at)]).encode())
        return f"{payload}.{self._sign(payload)}"

    def loads(self, cookie: str | None) -> SessionData | None:
        """The session in ``cookie``, or None if it is absent, tampered with or too old."""
        if not cookie or not cookie.isascii() or cookie.count(".") != 1:
            return None
        payload, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            sid, user_id, version, issued_at = json.loads(_unb64(payload))
        except ValueError:
            return None
        if time.time() - issued_at > self.max_age_s:
            return None
        return SessionData(sid, user_id, version, issued_at)

    def csrf_token(self, session: SessionData) -> str:
        return self._sign("csrf:" + session.sid)

    def csrf_ok(self, session: SessionData | None, token: object) -> bool:
        return (session is not None and isinstance(token, str) and token.isascii()
                and hmac.compare_digest(token, self.csrf_token(session)))

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self._secret, text.encode(), hashlib.sha256).digest())


class LoginThrottle:
    """At most ``max_failures`` failed logins per (client, account) in ``window_s``.

    Kept in memory: a restart forgets it, which is fine for slowing down guessing.
    """

    def __init__(self, max_failures: int, window_s: float) -> None:
        self.max_failures, self.window_s = max_failures, window_s
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, client: str, account: str) -> bool:
        with self._lock:
            return len(self._recent((client, account.lower()))) >= self.max_failures

    def failed(self, client: str, account: str) -> None:
        with self._lock:
            key = (client, account.lower())
            self._recent(key)
            self._failures.setdefault(key, deque()).append(time.monotonic())

    def succeeded(self, client: str, account: str) -> None:
        with self._lock:
            self._failures.pop((client, account.lower()), None)

    def _recent(self, key: tuple[str, str]) -> deque[float]:
        """The failures of ``key`` within the window; forgets older ones (and the key)."""
        times = self._failures.get(key, deque())
        while times and time.monotonic() - times[0] > self.window_s:
            times.popleft()
        if not times:
            self._failures.pop(key, None)
        return times


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p,
                          maxmem=64 * 1024 * 1024, dklen=_SCRYPT_LEN)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
