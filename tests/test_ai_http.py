"""The OpenAI-compatible judge against a real HTTP server on loopback (tests/fake_openai_server.py).

Faults are scripted per request: timeouts, 500s, 429 with Retry-After, malformed JSON,
dropped connections, missing log-probs, ambiguous text. Every pair must end up either
labelled or counted, retries must happen (the server counts requests), a re-run must
cost zero requests, and a crash -- an abort, or the process killed -- must lose no
finished judgement.
"""

from __future__ import annotations

import json
import logging
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
    cases[6] = "case-400"  # refused once per request body, then answered
    data = pairs_file(tmp_path, cases)
    with FakeOpenAI({"case-400": ["400"]}) as fake:
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


@pytest.fixture
def cli_logging():
    """``rlxf.cli.main`` points the rlxf logger at the (captured) stderr; put it back afterwards."""
    log = logging.getLogger("rlxf")
    saved = (log.handlers[:], log.propagate, log.level)
    yield
    log.handlers[:], log.propagate = saved[:2]
    log.setLevel(saved[2])


def test_a_failed_pair_leaves_the_run_incomplete_and_a_rerun_retries_only_it(tmp_path, capsys, cli_logging):
    from rlxf.cli import main

    data = pairs_file(tmp_path, ["p0", "case-400", "case-down"])
    args = ["label", f"out={tmp_path / 'run'}", f"data={data}", "judge.backend=openai", "judge.model=fake-judge",
            "judge.timeout=0.5", "judge.backoff=0.01", "judge.max_retries=2", "chunk_size=3", "progress=false"]
    with FakeOpenAI({"case-400": ["400*"], "case-down": ["500*"]}) as fake:
        args.append(f"judge.base_url={fake.url}")
        assert main(args) == 2  # the command fails ...
        err = capsys.readouterr().err
        assert "1 of 3 pairs failed after all retries" in err and "Re-run the same command to retry only those" in err
        # ... having asked each failing request max_retries + 1 = 3 times in all (not again "pair by pair"),
        # and a refused one (HTTP 400: the server would repeat it) once: 2 orders each
        assert fake.count("500") == 2 * 3 and fake.count("400") == 2
        run = tmp_path / "run"
        assert not (run / "summary.json").exists()  # not complete
        reasons = sorted(r["reason"].split(":")[0] for r in read(run / "unlabelled.jsonl"))
        assert reasons == ["failed", "refused"] and len(read(run / "preferences.jsonl")) == 1

        fake.script = {"case-400": ["400*"]}  # the server is back up; the 400 stays
        fake.reset_log()
        assert main(args) == 0
        summary = json.loads((run / "summary.json").read_text())
        # only the failed pair's two requests (and the two refused ones, never cached) were sent again
        assert sorted(e["prompt"].split("question 2 ")[-1][:9] for e in fake.log if "question 2" in e["prompt"]) \
            == ["case-down", "case-down"]
        assert fake.requests == 4
    assert (summary["labelled"], summary["refused_pairs"], summary["failed_pairs"]) == (2, 1, 0)
    assert main(args) == 0  # complete now: not redone


def test_retry_waits_are_logged_and_retry_after_is_capped(tmp_path, monkeypatch, caplog):
    from types import SimpleNamespace

    from rlxf.feedback.ai import http_judge

    slept = []
    monkeypatch.setattr(http_judge, "time", SimpleNamespace(sleep=slept.append, time=time.time))
    monkeypatch.setattr(logging.getLogger("rlxf"), "propagate", True)  # the CLI's setup turns it off
    monkeypatch.setattr(logging.getLogger("rlxf"), "handlers", [])  # and earlier tests' handlers would repeat lines
    t = load_template("helpful")
    with FakeOpenAI({"case-slow": ["429", "429"]}, retry_after="3600") as fake:
        judge = OpenAIJudge(fake.url, "fake", backoff=0.01, max_retries=2)
        with caplog.at_level(logging.INFO, logger="rlxf"):
            [verdict] = judge_pairs(judge, [("User: case-slow", "a good answer", "a bad answer")],
                                    JudgeSettings(template=t, both_orders=False))
        assert fake.count("429") == 2 and fake.requests == 3 and verdict.prob_a == pytest.approx(SIGMA2)
    # an hour asked for, RETRY_AFTER_CAP = 60 s waited, each time said
    assert slept == [60.0, 60.0]
    waits = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert waits == ["judge request: HTTP 429; retrying in 60.0 s (attempt 2 of 3)",
                     "judge request: HTTP 429; retrying in 60.0 s (attempt 3 of 3)"]


def test_an_answer_missing_from_the_top_logprobs_gets_the_smaller_bound():
    from rlxf.feedback.ai.http_judge import TINY_PROB, _answer_logprobs

    def p_first(top: dict[str, float]) -> float:
        lp1, lp2 = _answer_logprobs({k: math.log(v) for k, v in top.items()}, ["1", "2"])
        return math.exp(lp1) / (math.exp(lp1) + math.exp(lp2))

    # top-1 "1" at 0.9: "2" has at most min(0.9, 1 - 0.9) = 0.1, so P(first) = 0.9 / (0.9 + 0.1) = 0.9
    assert p_first({"1": 0.9}) == pytest.approx(0.9, abs=1e-12)
    # " 1" + "1" = 0.7; listed 0.5 + 0.2 + 0.25 = 0.95, so "2" <= min(0.2, 0.05) = 0.05: 0.7 / 0.75
    assert p_first({" 1": 0.5, "1": 0.2, " The": 0.25}) == pytest.approx(0.7 / 0.75, abs=1e-12)
    # "2" at 0.6 and " The" at 0.39 leave 0.01 < 0.39 for "1": P(first) = 0.01 / 0.61
    assert p_first({"2": 0.6, " The": 0.39}) == pytest.approx(0.01 / 0.61, abs=1e-12)
    # the listed tokens hold all the mass: the missing answer gets the tiny floor
    assert _answer_logprobs({"1": 0.0}, ["1", "2"]) == (0.0, math.log(TINY_PROB))
    assert _answer_logprobs({" The": math.log(0.9)}, ["1", "2"]) is None  # no answer listed: no verdict


def test_top_logprobs_1_gives_real_preferences(tmp_path):
    # The fake lists only the top-1 token. Good answer first: P(first) = σ(2) split 3:1 over " 1" and "1",
    # top-1 " 1" at 0.75 σ(2) = 0.6606; "2" <= 1 - 0.6606, so P(first) = 0.75 σ(2).
    # Good answer second: P(first) = σ(-2); top-1 " 2" at σ(2) = 0.8808; "1" <= 1 - 0.8808 = σ(-2), so
    # P(first) = σ(-2) / (σ(-2) + σ(2)) = 1 - σ(2). Swap-averaged: P(good) = (0.75 σ(2) + σ(2)) / 2 = 0.875 σ(2).
    data = pairs_file(tmp_path, ["p0", "p1"])
    with FakeOpenAI() as fake:
        label.run(label_config(tmp_path, fake.url, data, "judge.top_logprobs=1"))
    prefs = read(tmp_path / "run" / "preferences.jsonl")
    assert [p["chosen"][:6] for p in prefs] == ["a good", "a good"]
    assert [p["prob_chosen"] for p in prefs] == pytest.approx([0.875 * SIGMA2] * 2, abs=1e-9)


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


def test_a_chat_judge_that_explains_its_rating_is_read_with_its_answer_tokens():
    t = load_template("helpful")
    script = {"case-explained": ["text:**Rating:** 8/10 - clear and correct, though it could*"],
              "case-buried": ["text:I would rate this response an 8*"]}
    with FakeOpenAI(script) as fake:
        judge = OpenAIJudge(fake.url, "fake", endpoint="chat", backoff=0.01, answer_max_tokens=24)
        asked, generate = [], judge.generate
        judge.generate = lambda prompts, **kw: asked.append(kw["max_tokens"]) or generate(prompts, **kw)
        reward = DirectScoreReward(judge, t)
        explained, buried = reward(["User: case-explained", "User: case-buried"], ["an answer", "an answer"])
    # the chat endpoint echoes no log-probs, so the rating is parsed from the text, written in the
    # judge's answer_max_tokens; a rating not at the start of the line is counted, never guessed
    assert asked == [24]
    assert explained == 8.0 and math.isnan(buried) and reward.unparseable == 1


def test_a_known_context_length_shortens_samples_instead_of_being_refused(tmp_path):
    from rlxf.models.loading import load_tokenizer
    from rlxf.tinyworld.build import SHIPPED

    tok = load_tokenizer(str(SHIPPED))
    tok.model_max_length = 1024
    story = " ".join(["the fox is red and the hill is green ."] * 40)  # 800 tokens of conversation
    rows = [{"prompt": f"User: {story} question {i}", "chosen": "a good answer" if i % 2 else "a bad answer",
             "rejected": "a bad answer" if i % 2 else "a good answer"} for i in range(4)]
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    with FakeOpenAI(context_tokens=512, tokenizer=tok) as fake:
        # unknown to the client, the server refuses every over-long prompt; the refusal says how to fix it
        with pytest.raises(RlxfError) as err:
            label.run(label_config(tmp_path, fake.url, data, f"out={tmp_path / 'blind'}"))
        assert "set judge.context_length" in str(err.value) and fake.prompt_tokens == []

        # told the context length, the client shortens the conversation: every pair fits, in both
        # orders, with no refusal, and the answers still decide
        summary = label.run(label_config(tmp_path, fake.url, data, f"out={tmp_path / 'fits'}",
                                         "judge.context_length=512", f"judge.tokenizer={SHIPPED}"))
        assert (summary["labelled"], summary["refused_pairs"]) == (4, 0)
        assert len(fake.prompt_tokens) == 8 and max(fake.prompt_tokens) <= 512 - 8  # 8: answer_max_tokens
        assert max(fake.prompt_tokens) > 512 - 8 - 20  # shortened only as far as needed
        prefs = read(tmp_path / "fits" / "preferences.jsonl")
        assert all(("good" in r["chosen"]) for r in prefs)


def test_the_room_on_a_server_keeps_what_the_server_adds_and_writes():
    from rlxf.models.loading import load_tokenizer
    from rlxf.tinyworld.build import SHIPPED

    tok = load_tokenizer(str(SHIPPED))
    assert OpenAIJudge("http://x/v1", "m").room(answers=["1", "2"]) is None  # no context_length: unknown
    judge = OpenAIJudge("http://x/v1", "m", context_length=512, tokenizer=tok, answer_max_tokens=8)
    bos = len(tok("")["input_ids"])  # what the tokenizer adds to a prompt on its own
    assert judge.room(answers=["1", "2"]).reserved == 8 + bos  # the answer is generated: answer_max_tokens
    assert judge.room(new_tokens=100).reserved == 100 + bos
    long = "the fox is red and the hill is green ."
    assert judge.room(answers=[long]).reserved == len(tok(long, add_special_tokens=False)["input_ids"]) + bos
    # on the chat endpoint the template's tokens around the message are kept free too
    tok.chat_template = "{% for m in messages %}User: {{ m.content }}\n{% endfor %}Assistant:"
    chat = OpenAIJudge("http://x/v1", "m", endpoint="chat", context_length=512, tokenizer=tok, answer_max_tokens=8)
    around = len(tok("User: \nAssistant:", add_special_tokens=False)["input_ids"])
    assert around >= 3 and chat.room(answers=["1", "2"]).reserved == 8 + around
    with pytest.raises(ValueError, match="tokenizer"):
        OpenAIJudge("http://x/v1", "m", context_length=512)


def test_context_length_is_for_server_judges(tmp_path):
    data = pairs_file(tmp_path, ["p0"])
    with pytest.raises(ConfigError, match=r"judge.context_length is set but judge.backend is 'hf'"):
        load_config(label.Config, None, [f"out={tmp_path / 'run'}", f"data={data}", "judge.model=m",
                                         "judge.context_length=512"])
    with pytest.raises(ConfigError, match=r"judge.context_length must be ≥ 2"):
        label_config(tmp_path, "http://x/v1", data, "judge.context_length=1")
    # a tokenizer that cannot load fails before any request, naming the key to set
    with pytest.raises(ConfigError, match=r"judge.tokenizer .null: judge.model., which did not load"):
        label.run(label_config(tmp_path, "http://x/v1", data, "judge.context_length=512",
                               f"judge.model={tmp_path / 'nothing'}"))


def test_a_completion_the_server_stopped_for_its_length_did_not_end():
    """finish_reason "length" is a text cut at max_tokens; "stop" (EOS or a stop string) ended,
    and so did a "length" text in which the client finds a stop string the server ignored."""
    import httpx

    from rlxf.feedback.ai.http_judge import OpenAIJudge
    from rlxf.feedback.ai.judge import Completion

    replies = {"a": [("the fox is red .", "stop")], "b": [("the fox is", "length")],
               "c": [("the fox is red .\nHuman: hi", "length")], "d": [("red", "length"), ("red .", "stop")]}

    def serve(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        choices = [{"index": i, "text": text, "finish_reason": reason}
                   for i, (text, reason) in enumerate(replies[body["prompt"]])]
        return httpx.Response(200, json={"choices": choices})

    judge = OpenAIJudge("http://judge.invalid/v1", "fake", transport=httpx.MockTransport(serve), concurrency=1)
    got = judge.complete(["a", "b", "c"], max_tokens=4, temperature=1.0, stop=["\nHuman:"])
    assert got == [[Completion("the fox is red .", True)], [Completion("the fox is", False)],
                   [Completion("the fox is red .", True)]]
    assert judge.complete(["d"], max_tokens=4, temperature=1.0, n=2) == [[Completion("red", False),
                                                                          Completion("red .", True)]]
    assert judge.generate(["b"], max_tokens=4, temperature=1.0) == [["the fox is"]]
    # other servers' names: TGI's eos_token and Anthropic-style end_turn ended; max_tokens and no reason did not
    replies.update(e=[("red .", "eos_token"), ("red .", "end_turn")], f=[("the", "max_tokens"), ("the", None)])
    assert judge.complete(["e", "f"], max_tokens=4, temperature=1.0, n=2) == [
        [Completion("red .", True), Completion("red .", True)], [Completion("the", False), Completion("the", False)]]
