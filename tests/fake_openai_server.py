"""A scripted OpenAI-compatible server on loopback, for testing the HTTP judge for real.

It is a real HTTP server (stdlib ``ThreadingHTTPServer`` on 127.0.0.1, a free port,
one thread per connection), so the client's timeouts, retries, connection handling
and concurrency are exercised exactly as against vLLM or a hosted API.

The fake *judge*: a response containing the word "good" is better. For a labelling
prompt it finds the last "Response 1: ..." / "Response 2: ..." lines and answers with
P(position 1) = σ(quality1 - quality2 + ``position_bias``), quality = 2 for "good";
as top log-probs (split over the tokens " 1" and "1" to test variant merging; only as
many of the likeliest as the request asks for), or as text. Rating prompts
("Response: ...") get a rating distribution, echoed per character.
Critique and revision prompts get a fixed critique and revision, each followed by text
the client's stop strings must cut off.

Faults are scripted per request: if a request's prompt contains a marker from
``script``, the k-th attempt at that exact request body performs ``script[marker][k]``
(and later attempts succeed). An action ending in ``*`` repeats on every attempt.

Actions: ``ok``; ``500``, ``503``; ``429`` (with ``Retry-After: retry_after``);
``400`` (a permanent refusal); ``sleep`` (answer only after ``sleep_s``, past the
client's timeout); ``badjson`` (200 with a broken body); ``drop`` (close the
connection without answering); ``nologprobs`` (a text answer only); ``text:...``
(that text, without log-probs). ``delay_s`` slows every answer (a busy server).
With ``context_tokens`` and a ``tokenizer`` the server refuses, as vLLM does (HTTP 400,
its wording), a request whose prompt and ``max_tokens`` need more tokens than that;
``prompt_tokens`` keeps the length of every prompt it answered.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _quality(text: str) -> float:
    return 2.0 if "good" in text.lower() else 0.0


# P(rating k) the fake gives an answer: peaked at 8 for "good" answers, at 3 otherwise.
GOOD_RATINGS = {7: 0.2, 8: 0.5, 9: 0.2, 10: 0.1}
BAD_RATINGS = {2: 0.3, 3: 0.5, 4: 0.2}


class FakeOpenAI:
    def __init__(self, script: dict[str, list[str]] | None = None, *, position_bias: float = 0.0,
                 retry_after: str = "1", sleep_s: float = 1.5, api_key: str | None = None,
                 delay_s: float = 0.0, context_tokens: int | None = None, tokenizer=None) -> None:
        self.script = script or {}
        self.context_tokens, self.tokenizer = context_tokens, tokenizer
        self.prompt_tokens: list[int] = []
        self.delay_s = delay_s
        self.position_bias, self.retry_after, self.sleep_s, self.api_key = position_bias, retry_after, sleep_s, api_key
        self.lock = threading.Lock()
        self.attempts: Counter = Counter()          # request-body hash -> attempts so far
        self.log: list[dict] = []                   # one entry per request: path, body hash, action, time
        self.ok_bodies: set[str] = set()            # bodies answered successfully
        self.auth_headers: list[str | None] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeOpenAI":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- bookkeeping ---------------------------------------------------------------------------

    @property
    def requests(self) -> int:
        with self.lock:
            return len(self.log)

    def count(self, action: str) -> int:
        with self.lock:
            return sum(1 for e in self.log if e["action"] == action)

    def reset_log(self) -> None:
        with self.lock:
            self.log.clear()

    def _action(self, body_hash: str, prompt: str) -> str:
        with self.lock:
            attempt = self.attempts[body_hash]
            self.attempts[body_hash] += 1
        for marker, actions in self.script.items():
            if marker in prompt:
                persistent = [a for a in actions if a.endswith("*")]
                if persistent:
                    return persistent[0][:-1]
                return actions[attempt] if attempt < len(actions) else "ok"
        return "ok"

    # -- the fake judge --------------------------------------------------------------------------

    def p_first(self, prompt: str) -> float:
        r1 = re.findall(r"Response 1: (.*)", prompt)
        r2 = re.findall(r"Response 2: (.*)", prompt)
        if not r1 or not r2:
            return 0.5
        return _sigmoid(_quality(r1[-1]) - _quality(r2[-1]) + self.position_bias)

    def completion(self, prompt: str, body: dict, action: str) -> dict:
        if body.get("echo"):
            return {"index": 0, "text": prompt, "logprobs": self._echo(prompt)}
        if action.startswith("text:"):
            return {"index": 0, "text": action[5:], "logprobs": None}
        if prompt.endswith("Critique:"):
            return {"index": 0, "text": " The reply is rude.\n\nRevision request: (the model rambles on)",
                    "logprobs": None}
        if prompt.endswith("Revision:"):
            return {"index": 0, "text": " Here is a polite answer.\nUser: and a new turn", "logprobs": None}
        if "Rationale:" in prompt and not prompt.rstrip().endswith("="):
            p = self.p_first(prompt)
            return {"index": 0, "text": f" Response {1 if p >= 0.5 else 2} is the good one.", "logprobs": None}
        p = self.p_first(prompt)
        text = " 1" if p >= 0.5 else " 2"
        if action == "nologprobs" or not body.get("logprobs"):
            return {"index": 0, "text": text, "logprobs": None}
        # " 1" and "1" share P(position 1): a client that ignores either variant is wrong
        every = {" 1": math.log(p * 0.75), "1": math.log(p * 0.25), " 2": math.log(1 - p), " The": math.log(1e-4)}
        top = dict(sorted(every.items(), key=lambda kv: -kv[1])[:body["logprobs"]])
        return {"index": 0, "text": text, "logprobs": {"tokens": [text], "token_logprobs": [every[text]],
                                                        "top_logprobs": [top], "text_offset": [len(prompt)]}}

    def _echo(self, text: str) -> dict:
        """One token per character; the characters after "Rating (1-10): " get rating log-probs."""
        cut = text.rfind("Rating (1-10): ") + len("Rating (1-10): ")
        response = re.findall(r"Response: (.*)", text)
        table = GOOD_RATINGS if response and _quality(response[-1]) else BAD_RATINGS
        lps = [None] + [-0.01] * (len(text) - 1)
        rating = text[cut:]
        if rating:
            # P("1") must include P("10"): P(first digit d) = sum of ratings starting with d
            first = int(rating[0])
            p_digit = sum(p for k, p in table.items() if str(k).startswith(str(first)))
            lps[cut] = math.log(max(p_digit, 1e-6))
            if len(rating) > 1:  # "10": P("0" | "1") = P(10) / P(first digit 1)
                lps[cut + 1] = math.log(max(table.get(10, 0.0), 1e-6) / max(p_digit, 1e-6))
        return {"tokens": list(text), "token_logprobs": lps, "text_offset": list(range(len(text)))}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def _send(self, status: int, payload: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timed out) before the answer was ready

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw)
                body_hash = hashlib.sha256(raw).hexdigest()
                chat = self.path.endswith("/chat/completions")
                prompts = ([body["messages"][-1]["content"]] if chat else
                           body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]])
                action = fake._action(body_hash, "\n".join(prompts))
                with fake.lock:
                    fake.log.append({"path": self.path, "body": body_hash, "action": action, "time": time.monotonic(),
                                     "prompt": prompts[0]})
                    fake.auth_headers.append(self.headers.get("Authorization"))
                if fake.api_key and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    return self._send(401, b'{"error": "bad key"}')
                if fake.context_tokens is not None:
                    for p in prompts:
                        n, asked = len(fake.tokenizer(p)["input_ids"]), body.get("max_tokens", 16)
                        if n + asked > fake.context_tokens:
                            message = (f"This model's maximum context length is {fake.context_tokens} tokens. "
                                       f"However, you requested {n + asked} tokens ({n} in the messages, {asked} "
                                       f"in the completion). Please reduce the length of the messages or completion.")
                            return self._send(400, json.dumps({"object": "error", "message": message}).encode())
                        with fake.lock:
                            fake.prompt_tokens.append(n)
                if action in ("500", "503", "400"):
                    return self._send(int(action), b'{"error": "scripted"}')
                if action == "429":
                    return self._send(429, b'{"error": "slow down"}', {"Retry-After": fake.retry_after})
                if action == "badjson":
                    return self._send(200, b'{"choices": [{"text": "1"')
                if action == "drop":
                    self.close_connection = True
                    return
                time.sleep(fake.delay_s)
                if action == "sleep":
                    time.sleep(fake.sleep_s)
                    self.close_connection = True
                if chat:
                    choices = [fake.chat_choice(prompts[0], body, action)]
                else:
                    n = body.get("n", 1)
                    choices = []
                    for i, p in enumerate(prompts):
                        for j in range(n):
                            c = fake.completion(p, body, action)
                            c["index"] = i * n + j
                            choices.append(c)
                with fake.lock:
                    fake.ok_bodies.add(body_hash)
                self._send(200, json.dumps({"id": "fake", "object": "text_completion", "choices": choices}).encode())

        return Handler

    def chat_choice(self, prompt: str, body: dict, action: str) -> dict:
        p = self.p_first(prompt)
        text = "1" if p >= 0.5 else "2"
        if action.startswith("text:"):
            return {"index": 0, "message": {"role": "assistant", "content": action[5:]}, "logprobs": None}
        logprobs = None
        if body.get("logprobs") and action != "nologprobs":
            top = [{"token": "1", "logprob": math.log(p)}, {"token": "2", "logprob": math.log(1 - p)}]
            top = sorted(top, key=lambda t: -t["logprob"])[:body.get("top_logprobs", len(top))]
            logprobs = {"content": [{"token": text, "logprob": math.log(max(p, 1 - p)), "top_logprobs": top}]}
        return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs}


def by_body_counts(log: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for e in log:
        counts[e["body"]] += 1
    return dict(counts)
