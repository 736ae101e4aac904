"""The FastAPI routes of the annotation app (see ``server.py`` for the config and pages).

Security rules every route follows:

- every page is rendered by Jinja2 with autoescape on, and model output is never marked
  safe, so answers always show as text; the Content-Security-Policy forbids scripts
  anyway (the app needs none);
- a request's user comes from a signed session cookie (``auth.CookieSigner``) whose
  version must match the account's, so logout or a password reset ends it;
- every POST form carries the session's CSRF token; missing or wrong gives 403;
- a labeller only ever reaches their own assignments: someone else's id answers 404,
  exactly like an id that does not exist;
- admin pages answer 403 to non-admins.

Handlers are plain ``def``: FastAPI runs them in a thread pool, where the blocking
SQLite calls belong.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException

from rlxf.errors import RlxfError
from rlxf.feedback.human.agreement import agreement_report, comparison_items
from rlxf.feedback.human.auth import CookieSigner, LoginThrottle, SessionData
from rlxf.feedback.human.server import Config
from rlxf.feedback.human.store import Assignment, Store, Submit, User

COOKIE = "rlxf_session"
MAX_COMMENT = 2000
PAGE_SIZE = 50
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # invite tokens are in URLs
    "Cache-Control": "no-store",
}


@dataclass
class State:
    """What every request shares: the config, the database and the signing keys."""

    cfg: Config
    store: Store
    signer: CookieSigner
    throttle: LoginThrottle
    templates: Environment


@dataclass
class Visit:
    """One request: its session (new if the cookie was absent, stale or forged) and user."""

    state: State
    request: Request
    session: SessionData
    user: User | None
    send_cookie: bool

    @property
    def csrf_token(self) -> str:
        return self.state.signer.csrf_token(self.session)


class _Redirect(Exception):
    def __init__(self, url: str) -> None:
        self.url = url


def build_app(cfg: Config, store: Store) -> FastAPI:
    templates = Environment(loader=PackageLoader("rlxf.feedback.human", "templates"),
                            autoescape=True, undefined=StrictUndefined)
    templates.filters["clock"] = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t))
    templates.filters["percent"] = _percent
    templates.filters["number"] = _number
    app = FastAPI(title=cfg.title, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.annotate = State(cfg, store,
                               CookieSigner(store.secret, cfg.session_hours * 3600),
                               LoginThrottle(cfg.max_failed_logins, cfg.login_window_s),
                               templates)
    app.include_router(router)
    app.add_exception_handler(_Redirect, lambda request, exc: _redirect(exc.url))
    app.add_exception_handler(HTTPException, _error_page)
    app.add_exception_handler(RequestValidationError, _bad_request)
    app.add_middleware(SecurityHeaders)
    return app


class SecurityHeaders:
    """ASGI middleware adding ``_HEADERS`` to every response (error pages included)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)


# --- dependencies ---------------------------------------------------------------------

def visit(request: Request) -> Visit:
    state: State = request.app.state.annotate
    session = state.signer.loads(request.cookies.get(COOKIE))
    user = None
    if session is not None and session.user_id is not None:
        user = state.store.user(session.user_id)
        if user is None or user.disabled or user.session_version != session.version:
            session, user = None, None
    if session is None:
        return Visit(state, request, state.signer.new_session(), None, send_cookie=True)
    return Visit(state, request, session, user, send_cookie=False)


def labeller(v: Visit = Depends(visit)) -> Visit:
    if v.user is None:
        raise _Redirect("/login")
    return v


def admin(v: Visit = Depends(labeller)) -> Visit:
    if not v.user.is_admin:
        raise HTTPException(403, "This page is for admins.")
    return v


async def form(request: Request) -> dict[str, str]:
    data = await request.form()
    return {key: value for key, value in data.items() if isinstance(value, str)}


def checked_form(v: Visit = Depends(visit), data: dict = Depends(form)) -> dict[str, str]:
    """The POSTed form, if it carries this session's CSRF token (else 403)."""
    if v.send_cookie or not v.state.signer.csrf_ok(v.session, data.get("csrf_token")):
        raise HTTPException(403, "This form is out of date or did not come from this site. "
                                 "Go back, reload the page and try again.")
    return data


# --- pages ------------------------------------------------------------------------------

router = APIRouter()


@router.get("/healthz", include_in_schema=False)
def healthz() -> PlainTextResponse:
    return PlainTextResponse("ok")


@router.get("/static/style.css", include_in_schema=False)
def stylesheet() -> Response:
    return Response(_css(), media_type="text/css", headers={"Cache-Control": "max-age=3600"})


@router.get("/")
def home(v: Visit = Depends(visit)) -> Response:
    return _redirect("/next" if v.user else "/login")


@router.get("/login")
def login_page(v: Visit = Depends(visit)) -> Response:
    if v.user is not None:
        return _redirect("/next")
    return _render(v, "login.html")


@router.post("/login")
def login(v: Visit = Depends(visit), data: dict = Depends(checked_form)) -> Response:
    name, password = data.get("name", "").strip(), data.get("password", "")
    client = v.request.client.host if v.request.client else "?"
    throttle = v.state.throttle
    if throttle.blocked(client, name):
        return _render(v, "login.html", status=429, name=name,
                       error="Too many failed attempts. Wait a few minutes and try again.")
    user = v.state.store.authenticate(name, password)
    if user is None:
        throttle.failed(client, name)
        return _render(v, "login.html", status=401, name=name, error="Wrong name or password.")
    throttle.succeeded(client, name)
    return _log_in(v, user)


@router.post("/logout")
def logout(v: Visit = Depends(labeller), _: dict = Depends(checked_form)) -> Response:
    v.state.store.end_sessions(v.user.id)
    return _with_cookie(v.state, _redirect("/login"), v.state.signer.new_session())


@router.get("/invite/{token}")
def invite_page(token: str, v: Visit = Depends(visit)) -> Response:
    if not v.state.store.invite_valid(token):
        raise HTTPException(404, "This invite link is unknown, used or expired. Ask your "
                                 "admin for a new one.")
    return _render(v, "invite.html", token=token)


@router.post("/invite/{token}")
def accept_invite(token: str, v: Visit = Depends(visit),
                  data: dict = Depends(checked_form)) -> Response:
    password = data.get("password", "")
    if password != data.get("confirm", ""):
        return _render(v, "invite.html", status=400, token=token,
                       error="The two passwords differ.")
    try:
        user = v.state.store.redeem_invite(token, password)
    except RlxfError as err:
        return _render(v, "invite.html", status=400, token=token, error=str(err))
    if user is None:
        raise HTTPException(404, "This invite link is unknown, used or expired.")
    return _log_in(v, user)


@router.get("/next")
def next_task(v: Visit = Depends(labeller), saved: int = 0) -> Response:
    cfg = v.state.cfg
    assignment = v.state.store.claim(v.user.id, cfg.labels_per_task, cfg.assignment_timeout_s)
    if assignment is None:
        return _render(v, "message.html", heading="All done",
                       flash="Saved." if saved else None,
                       text="There is no task left for you right now. Thank you!")
    return _redirect(f"/assignments/{assignment.id}" + ("?saved=1" if saved else ""))


def _after_saving(v: Visit) -> Response:
    """Straight to the next task (one redirect instead of two via /next)."""
    cfg = v.state.cfg
    assignment = v.state.store.claim(v.user.id, cfg.labels_per_task, cfg.assignment_timeout_s)
    return _redirect(f"/assignments/{assignment.id}?saved=1" if assignment else "/next?saved=1")


@router.get("/assignments/{assignment_id}")
def show_assignment(assignment_id: int, v: Visit = Depends(labeller), saved: int = 0
                    ) -> Response:
    assignment = _own_assignment(v, assignment_id)
    if assignment.label is not None:
        return _render(v, "labelled.html", assignment=assignment,
                       **_screen(assignment), verdict=_verdict(assignment))
    return _render(v, "task.html", assignment=assignment, **_screen(assignment),
                   flash="Saved." if saved else None, selected={}, comment="")


@router.post("/assignments/{assignment_id}")
def submit_assignment(assignment_id: int, v: Visit = Depends(labeller),
                      data: dict = Depends(checked_form)) -> Response:
    assignment = _own_assignment(v, assignment_id)
    if assignment.label is not None:  # a repeat (double click, retry): already stored
        return _after_saving(v)
    comment = data.get("comment", "").strip()[:MAX_COMMENT]
    try:
        outcome, ranking = _read_choice(assignment, data)
        result = v.state.store.submit(assignment_id, v.user.id, outcome, ranking, comment,
                                      v.state.cfg.labels_per_task)
    except ValueError as err:
        selected = {key: data[key] for key in data if key.startswith("rank_")}
        return _render(v, "task.html", status=400, assignment=assignment,
                       **_screen(assignment), error=str(err), selected=selected,
                       comment=comment)
    if result is Submit.NOT_FOUND:
        raise HTTPException(404, "No such task.")
    if result is Submit.EXPIRED:
        return _render(v, "message.html", status=409, heading="Too late for this one",
                       text="The time for this task ran out and it went to someone else, "
                            "so this label was not kept. Sorry! The next task is waiting.")
    return _after_saving(v)  # RECORDED or ALREADY_RECORDED: the same to the user


@router.get("/me")
def my_progress(v: Visit = Depends(labeller), page: int = 1) -> Response:
    page = max(page, 1)
    store = v.state.store
    counts = store.progress(v.user.id, v.state.cfg.labels_per_task)
    labels = store.user_labels(v.user.id, PAGE_SIZE, (page - 1) * PAGE_SIZE)
    return _render(v, "progress.html", counts=counts, labels=labels, page=page,
                   more=len(labels) == PAGE_SIZE)


@router.get("/admin")
def admin_page(v: Visit = Depends(admin)) -> Response:
    store = v.state.store
    judged = [(task.id, label.user_name, task.k, label.outcome, label.ranking)
              for task, labels in store.labelled_tasks() for label in labels]
    return _render(v, "admin.html", overview=store.overview(v.state.cfg.labels_per_task),
                   agreement=agreement_report(comparison_items(judged)),
                   labellers=store.labeller_stats(), comments=store.recent_comments())


@router.get("/admin/tasks")
def admin_tasks(v: Visit = Depends(admin), page: int = 1) -> Response:
    page = max(page, 1)
    tasks = v.state.store.task_stats(PAGE_SIZE, (page - 1) * PAGE_SIZE)
    return _render(v, "admin_tasks.html", tasks=tasks, page=page,
                   more=len(tasks) == PAGE_SIZE)


# --- helpers ----------------------------------------------------------------------------

def _own_assignment(v: Visit, assignment_id: int) -> Assignment:
    assignment = v.state.store.assignment(assignment_id, v.user.id)
    if assignment is None:
        raise HTTPException(404, "No such task.")
    return assignment


def _screen(assignment: Assignment) -> dict[str, Any]:
    """The answers in screen order, named A/B for a pair and 1..K for a ranking."""
    task = assignment.task
    kind = "pair" if task.k == 2 else "rank"
    names = "AB" if kind == "pair" else [str(p + 1) for p in range(task.k)]
    answers = [(names[p], task.answers[i]) for p, i in enumerate(assignment.shown_order)]
    return {"task": task, "kind": kind, "answers": answers}


def _read_choice(assignment: Assignment, data: dict[str, str]
                 ) -> tuple[str, tuple[int, ...] | None]:
    """``(outcome, ranking in answer indices)`` from the form's screen positions."""
    shown, choice = assignment.shown_order, data.get("choice", "")
    if choice == "skip":
        return "skip", None
    if assignment.task.k == 2:
        if choice == "tie":
            return "tie", None
        if choice in ("A", "B"):
            winner = 0 if choice == "A" else 1
            return "ranked", (shown[winner], shown[1 - winner])
        raise ValueError("Choose A, B, tie or skip.")
    k = assignment.task.k
    try:
        ranks = [int(data[f"rank_{p}"]) for p in range(k)]
    except (KeyError, ValueError):
        raise ValueError(f"Give every answer a rank from 1 to {k}.") from None
    if sorted(ranks) != list(range(1, k + 1)):
        raise ValueError(f"Each rank from 1 to {k} must be used exactly once.")
    by_rank = sorted(range(k), key=lambda p: ranks[p])
    return "ranked", tuple(shown[p] for p in by_rank)


def _verdict(assignment: Assignment) -> str:
    """The stored label in the words of the labeller's own screen."""
    label, shown = assignment.label, assignment.shown_order
    if label.outcome == "skip":
        return "You skipped this task."
    if label.outcome == "tie":
        return "You judged the two answers a tie."
    position = {answer: p for p, answer in enumerate(shown)}
    if assignment.task.k == 2:
        return f"You preferred answer {'AB'[position[label.ranking[0]]]}."
    order = ", ".join(str(position[answer] + 1) for answer in label.ranking)
    return f"Your ranking, best first: answers {order}."


def _log_in(v: Visit, user: User) -> Response:
    # A new session id at login, so a session id planted before login is worthless.
    session = v.state.signer.new_session(user.id, user.session_version)
    return _with_cookie(v.state, _redirect("/next"), session)


def _render(v: Visit, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    cfg = v.state.cfg
    context.setdefault("flash", None)
    context.setdefault("error", None)
    html = v.state.templates.get_template(template).render(
        title=cfg.title, instructions=cfg.instructions, user=v.user,
        csrf_token=v.csrf_token, **context)
    response = HTMLResponse(html, status_code=status)
    return _with_cookie(v.state, response, v.session) if v.send_cookie else response


def _with_cookie(state: State, response: Response, session: SessionData) -> Response:
    response.set_cookie(COOKIE, state.signer.dumps(session), max_age=int(state.signer.max_age_s),
                        path="/", httponly=True, samesite="lax",
                        secure=state.cfg.secure_cookies)
    return response


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


async def _error_page(request: Request, exc: HTTPException) -> Response:
    state: State = request.app.state.annotate
    template = state.templates.get_template("message.html")
    titles = {403: "Not allowed", 404: "Not found"}
    html = template.render(title=state.cfg.title, instructions="", user=None, csrf_token="",
                           flash=None, error=None,
                           heading=titles.get(exc.status_code, "Something went wrong"),
                           text=exc.detail)
    return HTMLResponse(html, status_code=exc.status_code)


async def _bad_request(request: Request, exc: RequestValidationError) -> Response:
    return await _error_page(request, HTTPException(400, "This address or form is malformed."))


@cache
def _css() -> str:
    return resources.files("rlxf.feedback.human").joinpath("static/style.css").read_text()


def _percent(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def _number(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.3f}"
