"""The OpenAI-compatible judge against a real HTTP server on loopback (tests/fake_openai_server.py).

Faults are scripted per request: timeouts, 500s, 429 with Retry-After, malformed JSON,
dropped connections, missing log-probs, ambiguous text. Every pair must end up either
labelled or counted, retries must happen (the server counts requests), a re-run must
cost zero requests, and a crash -- an abort, or the process killed -- must lose no
finished judgement.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, write_jsonl
from fake_openai_server import FakeOpenAI

from rlxf.config import load_config
from rlxf.errors import ConfigError, RlxfError
from rlxf.feedback.ai import label
from rlxf.feedback.ai.http_judge import OpenAIJudge
from rlxf.feedback.ai.labeller import DirectScoreReward, JudgeSettings, judge_pairs
from rlxf.feedback.ai.templates import load_template

CASES = ["plain", "case-500", "case-429", "case-timeout", "case-badjson", "case-drop", "case-nologprobs",
         "case-ambiguous"]
SCRIPT = {"case-500": ["500", "503"], "case-429": ["429"], "case-timeout": ["sleep"], "case-badjson": ["badjson"],
          "case-drop": ["drop"], "case-nologprobs": ["nologprobs*"], "case-ambiguous": ["text:1 or 2*"]}
SIGMA2 = 1 / (1 + math.exp(-2))  # the fake's P(position 1) when only position 1 is "good": σ(2 - 0)


def pairs_file(tmp_path: Path, cases: list[str], name: str = "pairs.jsonl") -> Path:
    # "chosen"/"rejected" are read as unlabelled A/B; the fake prefers the answer saying "good",
    # which is A in even rows and B in odd rows
    rows = []
    for i, case in enumerate(cases):
        good, bad = f"a good answer to {case}", f"a bad answer to {case}"
        rows.append({"prompt": f"User: question {i} {case}", "chosen": good if i % 2 == 0 else bad,
                     "rejected": bad if i % 2 == 0 else good})
    return write_jsonl(tmp_path / name, rows)


def label_config(tmp_path: Path, url: str, data: Path, *extra: str) -> label.Config:
    return load_config(label.Config, None, [
        f"out={tmp_path / 'run'}", f"data={data}", "judge.backend=openai", "judge.model=fake-judge",
        f"judge.base_url={url}", "judge.timeout=0.5", "judge.backoff=0.01", "judge.max_retries=3",
        "judge.concurrency=4", "chunk_size=3", "progress=false", *extra])


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_faults_are_retried_counted_and_cached(tmp_path):
    data = pairs_file(tmp_path, CASES)
    with FakeOpenAI(SCRIPT, retry_after="1") as fake:
        summary = label.run(label_config(tmp_path, fake.url, data))
        # 8 pairs x 2 orders = 16 requests, plus one retry per scripted fault on each order:
        # 500 -> 503 -> ok is 2 retries, each other fault 1: (2 + 1 + 1 + 1 + 1) x 2 orders = 12
        assert fake.requests == 16 + 12
        assert (fake.count("500"), fake.count("503"), fake.count("429"), fake.count("sleep")) == (2, 2, 2, 2)
        assert summary["retries"] == 12 and summary["judge_stats"]["timeouts"] == 2
        assert summary["judge_stats"]["malformed"] == 2 and summary["judge_stats"]["connection_errors"] == 2
        # the retry after a 429 waited for Retry-After: 1 s (the backoff alone would be ~0.01 s)
        times = {}
        for e in fake.log:
            if "case-429" in e["prompt"]:
                times.setdefault(e["body"], []).append(e["time"])
        assert all(t[1] - t[0] >= 0.95 for t in times.values()) and len(times) == 2

        # every pair is accounted for: 7 labelled, 1 unparseable ("1 or 2" in both orders)
        assert (summary["pairs"], summary["labelled"], summary["unparseable_pairs"], summary["failed_pairs"]) == \
            (8, 7, 1, 0)
        assert summary["label_methods"] == {"logprobs": 12, "text": 2, "unparseable": 2}
        assert summary["unparseable_judgements"] == 2
        prefs = read(tmp_path / "run" / "preferences.jsonl")
        assert len(prefs) == 7 and all(p["chosen"].startswith("a good") for p in prefs)
        by_case = {p["prompt"].split()[-1]: p for p in prefs}
        # log-probs: P(A) = (σ(2) + 1 - σ(-2)) / 2 = σ(2); the text fallback is one-hot: 1.0
        assert by_case["plain"]["prob_chosen"] == pytest.approx(SIGMA2, abs=1e-9)
        assert by_case["case-nologprobs"]["prob_chosen"] == 1.0
        [skipped] = read(tmp_path / "run" / "unlabelled.jsonl")
        assert skipped["reason"] == "unparseable" and skipped["unparsed"] == ["1 or 2", "1 or 2"]
        from rlxf.data import load_preferences

        assert len(load_preferences(tmp_path / "run" / "preferences.jsonl")) == 7  # the reward stage reads it

        # a second run sharing the cache costs zero requests and gives the same labels
        before = fake.requests
        again = label.run(label_config(tmp_path, fake.url, data, f"out={tmp_path / 'run2'}",
                                       f"cache={tmp_path / 'run' / 'judge_cache.sqlite'}"))
        assert fake.requests == before
        assert again["cache_hits"] == 16 and again["cache_misses"] == 0
        assert read(tmp_path / "run2" / "preferences.jsonl") == prefs


def test_position_bias_is_measured_and_averaged_away(tmp_path):
    data = pairs_file(tmp_path, [f"p{i}" for i in range(6)])
    with FakeOpenAI(position_bias=3.0) as fake:
        summary = label.run(label_config(tmp_path, fake.url, data))
        one_order = label.run(label_config(tmp_path, fake.url, data, f"out={tmp_path / 'ab'}", "both_orders=false"))
    # good answer first: P(first) = σ(2 + 3) = 0.9933; good answer second: σ(-2 + 3) = 0.7311.
    # Both > 0.5: the judge picks position 1 whatever it holds, so every pair flips.
    hi, lo = 1 / (1 + math.exp(-5)), 1 / (1 + math.exp(-1))
    assert summary["flip_rate"] == 1.0 and summary["flips_to_first"] == 6 and summary["favoured_position"] == "first"
    assert summary["mean_prob_first_position"] == pytest.approx((hi + lo) / 2, abs=1e-9)
    # swap-averaged P(good) = (0.9933 + (1 - 0.7311)) / 2 = 0.6311: still the right answer
    prefs = read(tmp_path / "run" / "preferences.jsonl")
    assert all(p["chosen"].startswith("a good") for p in prefs)
    assert all(p["prob_chosen"] == pytest.approx((hi + 1 - lo) / 2, abs=1e-9) for p in prefs)
    # one order only: where the good answer is B (odd rows) the judge still says A (0.7311)
    single = read(tmp_path / "ab" / "preferences.jsonl")
    assert sum(p["chosen"].startswith("a good") for p in single) == 3
    assert one_order["flip_rate"] is None


def test_an_abort_mid_run_loses_no_finished_judgement(tmp_path):
    cases = [f"p{i}" for i in range(10)]
    cases[6] = "case-400"  # refused twice per request body: in its chunk, then alone
    data = pairs_file(tmp_path, cases)
    with FakeOpenAI({"case-400": ["400", "400"]}) as fake:
        with pytest.raises(RlxfError, match="1 pairs failed"):
            label.run(label_config(tmp_path, fake.url, data, "max_failed_pairs=0"))
        answered = set(fake.ok_bodies)
        assert len(answered) >= 12  # pairs 0-5 were finished (chunks of 3), and cached
        fake.reset_log()
        summary = label.run(label_config(tmp_path, fake.url, data, "max_failed_pairs=0"))
        resent = [e for e in fake.log if e["body"] in answered]
        assert resent == []  # nothing finished before the abort was asked again
        # each of the 20 judgements (10 pairs, 2 orders) is answered once over both runs; how many
        # refusals the second run meets depends on which requests the first sent before it stopped
        answered_now = [e["body"] for e in fake.log if e["action"] == "ok"]
        assert summary["labelled"] == 10 and len(answered_now) == len(set(answered_now)) == 20 - len(answered)


def test_a_killed_process_loses_no_finished_judgement(tmp_path):
    data = pairs_file(tmp_path, [f"p{i}" for i in range(40)])
    out = tmp_path / "run"
    with FakeOpenAI(delay_s=0.03) as fake:
        args = [f"out={out}", f"data={data}", "judge.backend=openai", "judge.model=fake-judge",
                f"judge.base_url={fake.url}", "judge.concurrency=2", "chunk_size=4", "progress=false"]
        code = ("import sys; from rlxf.config import load_config; from rlxf.feedback.ai import label; "
                "label.run(load_config(label.Config, None, sys.argv[1:]))")
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env)
        deadline = time.monotonic() + 30
        while len(fake.ok_bodies) < 30 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished
        answered = len(fake.ok_bodies)
        with sqlite3.connect(out / "judge_cache.sqlite") as db:
            stored = db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        # at most the requests in flight (concurrency 2) were answered but not yet stored
        assert 30 <= answered < 80 and answered - 2 <= stored <= answered
        fake.reset_log()
        summary = label.run(load_config(label.Config, None, args))
        assert fake.requests == 80 - stored  # only what was never stored is asked again
        assert summary["labelled"] == 40 and summary["cache_hits"] == stored


def test_permanent_refusals_and_exhausted_retries_fail_only_their_pair(tmp_path):
    data = pairs_file(tmp_path, ["p0", "case-400", "case-down", "p3"])
    with FakeOpenAI({"case-400": ["400*"], "case-down": ["500*"]}) as fake:
        summary = label.run(label_config(tmp_path, fake.url, data))
        # Each pair is asked in its chunk, then (the chunk failed) alone: twice per order.
        # 400 is not retried: 2 orders x 2 = 4 requests; 500 is, 1 + 3 retries: 2 orders x 2 x 4 = 16
        assert fake.count("400") == 4 and fake.count("500") == 16
    assert (summary["labelled"], summary["failed_pairs"]) == (2, 2)
    reasons = sorted(r["reason"].split(":")[0] for r in read(tmp_path / "run" / "unlabelled.jsonl"))
    assert reasons == ["failed", "failed"]


def test_api_key_comes_from_the_environment_and_is_never_written(tmp_path, monkeypatch):
    data = pairs_file(tmp_path, ["p0", "p1"])
    secret = "sk-test-a1b2c3d4e5"
    with FakeOpenAI(api_key=secret) as fake:
        with pytest.raises(ConfigError, match=r"\$RLXF_TEST_KEY, which is not set"):
            label.run(label_config(tmp_path, fake.url, data, "judge.api_key_env=RLXF_TEST_KEY"))
        monkeypatch.setenv("RLXF_TEST_KEY", secret)
        summary = label.run(label_config(tmp_path, fake.url, data, "judge.api_key_env=RLXF_TEST_KEY",
                                         f"out={tmp_path / 'ok'}"))
        assert summary["labelled"] == 2 and set(fake.auth_headers) == {f"Bearer {secret}"}
    for path in (tmp_path / "ok").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_chat_endpoint_and_http_direct_scoring(tmp_path):
    t = load_template("helpful")
    pairs = [("User: q0", "a good answer", "a bad answer"), ("User: case-text", "a bad answer", "a good answer")]
    with FakeOpenAI({"case-text": ["text:**Response 2**"]}) as fake:
        chat = OpenAIJudge(fake.url, "fake", endpoint="chat", backoff=0.01)
        first, second = judge_pairs(chat, pairs, JudgeSettings(template=t))
        assert first.methods == ("logprobs", "logprobs") and first.prob_a == pytest.approx(SIGMA2)
        # both orders answer "**Response 2**" (parsed: position 2), i.e. B, then A: a flip, P(A) = 0.5
        assert second.methods == ("text", "text") and second.prob_a == 0.5 and second.flipped

        judge = OpenAIJudge(fake.url, "fake", backoff=0.01)
        # The fake puts P(rating) = {7: .2, 8: .5, 9: .2, 10: .1} on good answers and {2: .3, 3: .5, 4: .2}
        # on bad ones, echoing "10" as "1" + "0" (so P("1") includes P("10")):
        # good: 7*.2 + 8*.5 + 9*.2 + 10*.1 = 8.2;  bad: 2*.3 + 3*.5 + 4*.2 = 2.9
        good, bad = DirectScoreReward(judge, t)(["User: q", "User: q"], ["a good answer", "a bad answer"])
        assert good == pytest.approx(8.2, abs=1e-4) and bad == pytest.approx(2.9, abs=1e-4)
