"""Tests for rlxf.data: readers, row shapes, validation messages, prompt rendering."""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlxf.data import (
    Demonstration,
    Preference,
    Ranking,
    load_comparisons,
    load_demonstrations,
    load_preferences,
    load_prompts,
    read_rows,
    render_prompt,
    write_jsonl,
)
from rlxf.errors import ConfigError, DataError

# CI clones the repo as X/main with the shared data beside it in X/shared.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HH_TEST = SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz"

USER = {"role": "user", "content": "What is 2+2?"}
SYSTEM = {"role": "system", "content": "Answer briefly."}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write_raw_jsonl(path: Path, lines: list) -> str:
    """Write each item as one line: dicts as JSON, strings verbatim (for broken lines)."""
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines),
                    encoding="utf-8")
    return str(path)


def write_as(fmt: str, folder: Path, rows: list[dict]) -> str:
    """Store ``rows`` in format ``fmt`` under ``folder``; return the path to load."""
    if fmt == "jsonl":
        return write_raw_jsonl(folder / "data.jsonl", rows)
    if fmt == "jsonl.gz":
        path = folder / "data.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        return str(path)
    if fmt == "json":
        path = folder / "data.json"
        path.write_text(json.dumps(rows), encoding="utf-8")
        return str(path)
    if fmt == "parquet":
        import pyarrow
        import pyarrow.parquet

        path = folder / "data.parquet"
        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
        return str(path)
    if fmt == "hf":
        import datasets

        path = folder / "saved"
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
        return str(path)
    raise AssertionError(fmt)


FORMATS = ["jsonl", "parquet", "hf"]


# --- readers ------------------------------------------------------------------------------

def test_read_rows_jsonl_counts_blank_lines_and_skips_them(tmp_path):
    path = write_raw_jsonl(tmp_path / "d.jsonl", [{"a": 1}, "", "   ", {"a": 2}])
    assert list(read_rows(path)) == [(1, {"a": 1}), (4, {"a": 2})]


def test_read_rows_jsonl_with_byte_order_mark(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n{"a": 2}\n')
    assert list(read_rows(path)) == [(1, {"a": 1}), (2, {"a": 2})]


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "json", "parquet", "hf"])
def test_read_rows_every_format(tmp_path, fmt):
    rows = [{"prompt": "p1", "n": 1}, {"prompt": "p2", "n": 2}, {"prompt": "p3", "n": 3}]
    assert list(read_rows(write_as(fmt, tmp_path, rows))) == list(enumerate(rows, 1))


@pytest.fixture
def dataset_dict_dir(tmp_path) -> str:
    import datasets

    path = tmp_path / "dd"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"text": "t1"}, {"text": "t2"}]),
        "test": datasets.Dataset.from_list([{"text": "e1"}]),
    }).save_to_disk(str(path))
    return str(path)


def test_read_rows_dataset_dict_split(dataset_dict_dir):
    assert list(read_rows(dataset_dict_dir, split="test")) == [(1, {"text": "e1"})]
    assert list(read_rows(f"{dataset_dict_dir}:train")) == [(1, {"text": "t1"}),
                                                           (2, {"text": "t2"})]
    assert list(read_rows(f"{dataset_dict_dir}:train", split="train"))[1] == (2, {"text": "t2"})


@pytest.mark.parametrize("split, fragment", [
    (None, "holds the splits ['test', 'train']; choose one"),
    ("valid", "no split 'valid'; it holds ['test', 'train']"),
])
def test_read_rows_dataset_dict_bad_split(dataset_dict_dir, split, fragment):
    with pytest.raises(DataError, match=r"dd: ") as e:
        read_rows(dataset_dict_dir, split=split)
    assert fragment in str(e.value)


def test_read_rows_split_in_path_contradicts_argument(dataset_dict_dir):
    with pytest.raises(DataError, match="split 'train' in the path contradicts the split 'test' also given"):
        read_rows(f"{dataset_dict_dir}:train", split="test")


def test_read_rows_split_for_a_file_or_plain_dataset_is_an_error(tmp_path):
    path = write_as("jsonl", tmp_path, [{"a": 1}])
    with pytest.raises(DataError, match="only a save_to_disk folder has splits"):
        read_rows(path, split="train")
    saved = write_as("hf", tmp_path, [{"a": 1}])
    with pytest.raises(DataError, match="without splits; drop the split"):
        read_rows(saved, split="train")


def test_read_rows_missing_file_fails_at_call(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file or folder"):
        read_rows(missing)  # not iterated: the check is eager


@pytest.mark.parametrize("name, content, fragment", [
    ("d.tsv", "a\tb\n", "unknown kind of data file; use .jsonl, .jsonl.gz, .csv, .csv.gz"),
    ("d.json", '{"a": 1}\n{"a": 2}\n', "name the file .jsonl"),
    ("d.json", '{"a": 1}', "a JSON dict, not a list"),
])
def test_read_rows_bad_files(tmp_path, name, content, fragment):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=name.replace(".", r"\.")) as e:
        list(read_rows(tmp_path / name))
    assert fragment in str(e.value)


def test_read_rows_damaged_gzip_names_the_file_and_the_last_line_read(tmp_path):
    rows = [{"prompt": f"q{i}", "answer": "x" * 300 + str(i)} for i in range(200)]
    whole = Path(write_as("jsonl.gz", tmp_path, rows)).read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[:len(whole) // 2])
    read = []
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz: the gzip data is cut short or damaged after line (\d+)") as e:
        read.extend(read_rows(cut))
    assert 0 < len(read) < 200 and f"after line {len(read)} " in str(e.value)
    plain = tmp_path / "plain.jsonl.gz"
    plain.write_text('{"prompt": "p"}\n')
    with pytest.raises(DataError, match=r"plain\.jsonl\.gz: not a gzip file; drop the \.gz suffix"):
        list(read_rows(plain))


def test_read_rows_folder_that_is_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="not one saved by datasets' save_to_disk"):
        read_rows(tmp_path)


@pytest.mark.parametrize("line, fragment", [
    ('{"a": 1', "not valid JSON: Expecting ',' delimiter at column 8"),
    ('{"prompt": "p", "chosen": "a", "rejected": ', "Expecting value at column 44"),  # cut short: its end
    ("[1, 2]", "a JSON list, not an object"),
    ('"text"', "a JSON str, not an object"),
])
def test_read_rows_bad_line_names_file_and_line(tmp_path, line, fragment):
    path = write_raw_jsonl(tmp_path / "broken.jsonl", [{"a": 0}, "", line, {"a": 3}])
    rows = read_rows(path)
    assert next(rows) == (1, {"a": 0})
    with pytest.raises(DataError) as e:
        next(rows)
    assert e.value.line == 3 and e.value.path == path
    assert str(e.value).startswith(f"{path}:3: ")
    assert fragment in str(e.value) and "each line must be one JSON object" in str(e.value)


TRICKY = ["plain", "a, with commas", 'she said "no", twice', "two\nlines, \"quoted\"\n", "windows\r\nline",
          "", "NA", "nan", "  spaced  ", "ünïcödé ✓", "0.5", "True"]


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_csv_demonstrations_load_for_sft_as_written(tmp_path, suffix):
    """A prompt/completion CSV, as pandas writes it, reads back exactly: commas, quotes, line
    breaks, and text that looks like a number, a flag or a missing value all stay text; each
    record is named by the file line it starts on (the header is line 1)."""
    import pandas as pd

    prompts = [f"question {i}" if i % 2 else f"question {i}\nwith a second line" for i in range(len(TRICKY))]
    completions = [t or "x" for t in TRICKY]  # an SFT answer needs some text
    path = tmp_path / f"demos{suffix}"
    pd.DataFrame({"prompt": prompts, "completion": completions}).to_csv(path, index=False)
    loaded = load_demonstrations(path)
    assert [d.prompt for d in loaded] == prompts and [d.completion for d in loaded] == completions
    starts, line = [], 2
    for prompt, completion in zip(prompts, completions):
        starts.append(line)
        line += prompt.count("\n") + completion.count("\n") + 1
    assert [d.source for d in loaded] == [f"{path}:{n}" for n in starts]


def test_csv_cells_are_text_but_for_the_numbers_and_flags_rows_are_checked_as(tmp_path):
    path = tmp_path / "prefs.csv"
    path.write_text(",prompt,chosen,rejected,prob_chosen,margin,answer_a_ended,ended_b,score\n"
                    "0,q,good,bad,,,true,False,1.5\n"
                    "1,q,good,bad,0.7,2,FALSE,True,\n", encoding="utf-8")
    rows = [row for _, row in read_rows(path)]
    # empty cells of typed columns are absent (null), never 'nan'; the unnamed index column is left out
    assert rows[0] == {"prompt": "q", "chosen": "good", "rejected": "bad", "prob_chosen": None, "margin": None,
                       "answer_a_ended": True, "ended_b": False, "score": "1.5"}
    assert rows[1]["prob_chosen"] == 0.7 and rows[1]["margin"] == 2 and isinstance(rows[1]["margin"], int)
    assert (rows[1]["answer_a_ended"], rows[1]["ended_b"], rows[1]["score"]) == (False, True, "")
    assert [(p.prob_chosen, p.margin) for p in load_preferences(path)] == [(1.0, 0.0), (0.7, 2.0)]
    # a number column's text that is no number stays text, for the row's parser to name
    vertex = tmp_path / "vertex.csv"
    vertex.write_text("input_text,candidate_0,candidate_1,choice\nq,a,b,1\nq,a,b,first\n")
    assert [row["choice"] for _, row in read_rows(vertex)] == [1, "first"]
    with pytest.raises(DataError, match=r"vertex\.csv:3: field 'choice': must be 0 or 1 .*got 'first'"):
        load_preferences(vertex)


@pytest.mark.parametrize("content, line, fragment", [
    ('prompt,completion\n"a\nb",c\nd,e,f\n', 4, "3 cells, but the header (line 1) names 2 columns"),
    ('prompt,completion\np,c\n"q\nr,s\n', 3, "not valid CSV in the row that starts here: unexpected end of data"),
    ('prompt,completion\np,"c"x\n', 2, "not valid CSV in the row that starts here"),
    ("prompt,prompt\np,q\n", 1, "the header names the column(s) ['prompt'] more than once"),
])
def test_csv_errors_name_the_file_and_line(tmp_path, content, line, fragment):
    path = tmp_path / "d.csv"
    path.write_text(content)
    with pytest.raises(DataError) as e:
        list(read_rows(path))
    assert (e.value.path, e.value.line) == (str(path), line) and fragment in str(e.value)


def test_csv_bad_row_is_named_by_its_line_and_can_be_skipped(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\n"two\nlines",fine\nq,\nr,ok\n')
    with pytest.raises(DataError, match=r"d\.csv:4: field 'completion': is empty"):
        load_demonstrations(path)
    loaded = load_demonstrations(path, skip_bad=True)
    assert [d.completion for d in loaded] == ["fine", "ok"] and loaded.skipped == 1
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"prompt,completion\np,c\nq,caf\xe9\n")
    with pytest.raises(DataError, match=r"latin\.csv:3: not UTF-8 text"):
        list(read_rows(latin))


def test_read_rows_json_list_element_not_object(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[{"a": 1}, 7]')
    with pytest.raises(DataError, match=r"d\.json:2: a JSON int, not an object"):
        list(read_rows(path))


def test_write_jsonl_round_trip_creates_folders(tmp_path):
    rows = [{"prompt": "p", "x": [1, 2]}, {"prompt": "é ✓"}]
    for name in ("out.jsonl", "out.jsonl.gz"):
        path = tmp_path / "a" / "b" / name
        assert write_jsonl(path, rows) == 2
        assert list(read_rows(path)) == [(1, rows[0]), (2, rows[1])]
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["out.jsonl", "out.jsonl.gz"]
    old = os.umask(0o022)
    try:  # readable as any new file is (the temporary file it is written to is its owner's only)
        write_jsonl(tmp_path / "shared.jsonl", rows)
    finally:
        os.umask(old)
    assert (tmp_path / "shared.jsonl").stat().st_mode & 0o777 == 0o644


def test_write_jsonl_is_atomic(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"old": 1}])

    def rows_then_crash():
        yield {"new": 1}
        raise RuntimeError("generator died")

    with pytest.raises(RuntimeError, match="generator died"):
        write_jsonl(path, rows_then_crash())
    assert path.read_text() == '{"old": 1}\n'  # old file untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temp file left


def test_write_jsonl_records_round_trip(tmp_path):
    conversation = (SYSTEM, USER)
    records = [Preference(conversation, "4", "5", prob_chosen=0.75, margin=1.5, source="x:1"),
               Ranking("p", ("a", "b", "c"), (2, 0, 1), source="x:2")]
    path = tmp_path / "records.jsonl"
    write_jsonl(path, records)
    loaded = load_comparisons(path)
    assert loaded == [Preference(conversation, "4", "5", prob_chosen=0.75, margin=1.5,
                                 source=f"{path}:1"),
                      Ranking("p", ("a", "b", "c"), (2, 0, 1), source=f"{path}:2")]
    demo_path = tmp_path / "demos.jsonl"
    write_jsonl(demo_path, [Demonstration(conversation, "4")])
    assert load_demonstrations(demo_path) == [Demonstration(conversation, "4",
                                                            source=f"{demo_path}:1")]


def test_import_stays_light():
    code = ("import sys, rlxf.data; heavy = {'pandas', 'pyarrow', 'datasets', 'torch', "
            "'transformers'} & set(sys.modules); assert not heavy, heavy")
    src = str(Path(__file__).resolve().parents[1] / "src")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": src})


# --- accepted shapes ----------------------------------------------------------------------

# (rows, the records expected without source); each case is loaded from every format.
PREFERENCE_CASES = {
    "trl text": ([{"prompt": "2+2?", "chosen": "4", "rejected": "5"}],
                 [Preference("2+2?", "4", "5")]),
    "trl conversational": (
        [{"prompt": [SYSTEM, USER], "chosen": [assistant("4")], "rejected": [assistant("5")]}],
        [Preference((SYSTEM, USER), "4", "5")]),
    "vertex": ([{"input_text": "Q", "candidate_0": "bad", "candidate_1": "good", "choice": 1},
                {"input_text": "R", "candidate_0": "yes", "candidate_1": "no", "choice": 0}],
               [Preference("Q", "good", "bad"), Preference("R", "yes", "no")]),
    "anthropic hh": ([{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!",
                       "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}],
                     [Preference("\n\nHuman: Hi\n\nAssistant:", "Hello!", "Go away.")]),
    "implicit conversational": (
        [{"chosen": [USER, assistant("4")], "rejected": [USER, assistant("5")]}],
        [Preference((USER,), "4", "5")]),
    # The second row has no soft label: in Parquet and datasets its columns are null.
    "soft labels": ([{"prompt": "p", "chosen": "a", "rejected": "b", "prob_chosen": 0.7,
                      "margin": 2.0},
                     {"prompt": "q", "chosen": "c", "rejected": "d"}],
                    [Preference("p", "a", "b", prob_chosen=0.7, margin=2.0),
                     Preference("q", "c", "d")]),
    "vertex soft": ([{"input_text": "Q", "candidate_0": "x", "candidate_1": "y", "choice": 1,
                      "prob_chosen": 0.6}],
                    [Preference("Q", "y", "x", prob_chosen=0.6)]),
}


def with_sources(records: list, path: str, lines: list[int]) -> list:
    import dataclasses

    return [dataclasses.replace(r, source=f"{path}:{n}") for r, n in zip(records, lines)]


def test_ultrafeedback_rows_take_the_shared_messages_as_the_prompt(tmp_path):
    user = {"role": "user", "content": "How do I boil rice?"}
    row = {"prompt": "How do I boil rice?", "score_chosen": 8.0,
           "chosen": [user, {"role": "assistant", "content": "Boil water first."}],
           "rejected": [user, {"role": "assistant", "content": "No idea."}]}
    [pair] = load_preferences(write_raw_jsonl(tmp_path / "uf.jsonl", [row]))
    assert (pair.prompt, pair.chosen, pair.rejected) == ((user,), "Boil water first.", "No idea.")
    # as a prompt set (PPO, sxs) the row gives the same conversation, not its prompt text
    assert list(load_prompts(tmp_path / "uf.jsonl")) == [(user,)]
    [demo] = load_demonstrations(tmp_path / "uf.jsonl")
    assert (demo.prompt, demo.completion) == ((user,), "Boil water first.")


def test_demonstrations_given_as_comparisons_say_so(tmp_path):
    for row in ({"prompt": "p", "completion": "c"}, {"text": "t"}):
        with pytest.raises(DataError, match="It is demonstration data \\(what `rlxf sft` reads\\)"):
            load_preferences(write_raw_jsonl(tmp_path / "d.jsonl", [row]))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", list(PREFERENCE_CASES))
def test_preference_shapes(tmp_path, fmt, case):
    rows, expected = PREFERENCE_CASES[case]
    path = write_as(fmt, tmp_path, rows)
    loaded = load_preferences(path)
    assert loaded == with_sources(expected, path, list(range(1, len(rows) + 1)))
    assert loaded.skipped == 0 and loaded.errors == []


def test_ranking_shape_from_every_format(tmp_path):
    rows = [{"prompt": [USER], "completions": ["4", "5", "four"], "ranking": [0, 2, 1]}]
    for fmt in FORMATS:
        folder = tmp_path / fmt
        folder.mkdir()
        path = write_as(fmt, folder, rows)
        assert load_comparisons(path) == [Ranking((USER,), ("4", "5", "four"), (0, 2, 1),
                                                  source=f"{path}:1")]


def test_rankings_expand_to_all_pairs_best_first(tmp_path):
    rows = [{"prompt": "p", "chosen": "x", "rejected": "y"},
            {"prompt": "q", "completions": ["a", "b", "c", "d"], "ranking": [2, 0, 3, 1]}]
    path = write_as("jsonl", tmp_path, rows)
    comparisons = load_comparisons(path)
    assert [type(c) for c in comparisons] == [Preference, Ranking]  # kept whole, in order
    pairs = load_preferences(path)
    # Best to worst is c, a, d, b, so each earlier answer beats each later one.
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        ("p", "x", "y"),
        ("q", "c", "a"), ("q", "c", "d"), ("q", "c", "b"),
        ("q", "a", "d"), ("q", "a", "b"),
        ("q", "d", "b")]
    assert {p.source for p in pairs[1:]} == {f"{path}:2"}


@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_ranking_of_k_gives_k_choose_2_pairs(tmp_path, k):
    ranking = list(range(k))[::-1]  # the last completion is the best
    path = write_as("jsonl", tmp_path, [{"prompt": "p", "completions": [f"answer {i}" for i in
                                                                       range(k)],
                                         "ranking": ranking}])
    pairs = load_preferences(path)
    assert len(pairs) == math.comb(k, 2)
    # "answer i" beats "answer j" exactly when i > j.
    assert all(int(p.chosen.split()[1]) > int(p.rejected.split()[1]) for p in pairs)
    assert len({(p.chosen, p.rejected) for p in pairs}) == math.comb(k, 2)


DEMONSTRATION_CASES = {
    "prompt completion": ([{"prompt": "2+2?", "completion": "4"}],
                          [Demonstration("2+2?", "4")]),
    "conversational prompt completion": (
        [{"prompt": [SYSTEM, USER], "completion": [assistant("4")]}],
        [Demonstration((SYSTEM, USER), "4")]),
    "messages": ([{"messages": [SYSTEM, USER, assistant("4")]}],
                 [Demonstration((SYSTEM, USER), "4")]),
    "text": ([{"text": "Once upon a time."}], [Demonstration("", "Once upon a time.")]),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", list(DEMONSTRATION_CASES))
def test_demonstration_shapes(tmp_path, fmt, case):
    rows, expected = DEMONSTRATION_CASES[case]
    path = write_as(fmt, tmp_path, rows)
    assert load_demonstrations(path) == with_sources(expected, path, [1])


def test_demonstration_shapes_mixed_in_one_file(tmp_path):
    rows = [row for rows, _ in DEMONSTRATION_CASES.values() for row in rows]
    path = write_as("jsonl", tmp_path, rows)
    expected = [rec for _, recs in DEMONSTRATION_CASES.values() for rec in recs]
    assert load_demonstrations(path) == with_sources(expected, path, [1, 2, 3, 4])


# Each case's rows share column types, so that Parquet can store them.
PROMPT_CASES = {
    "text": ([{"prompt": "Tell a joke."}], ["Tell a joke."]),
    "conversational, answer ignored": ([{"prompt": [USER], "completion": [assistant("4")]}],
                                       [(USER,)]),
    "vertex": ([{"input_text": "Translate: hi", "candidate_0": "a", "candidate_1": "b",
                 "choice": 0}], ["Translate: hi"]),
    "messages, final answer dropped": ([{"messages": [SYSTEM, USER]},
                                        {"messages": [USER, assistant("4")]}],
                                       [(SYSTEM, USER), (USER,)]),
    "anthropic hh": ([{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello",
                       "rejected": "\n\nHuman: Hi\n\nAssistant: No"}],
                     ["\n\nHuman: Hi\n\nAssistant:"]),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", list(PROMPT_CASES))
def test_prompt_shapes(tmp_path, fmt, case):
    rows, expected = PROMPT_CASES[case]
    assert load_prompts(write_as(fmt, tmp_path, rows)) == expected


# --- the real Anthropic HH data -------------------------------------------------------------

@pytest.fixture(scope="module")
def hh_raw() -> list[dict]:
    if not HH_TEST.exists():
        pytest.skip(f"shared data missing: {HH_TEST} (expected beside the repo)")
    with gzip.open(HH_TEST, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_hh_harmless_base_test_loads_every_row(hh_raw):
    prefs = load_preferences(HH_TEST)
    assert len(hh_raw) == 2312
    assert len(prefs) == 2312 and prefs.skipped == 0
    assert all(type(p) is Preference and p.prob_chosen == 1.0 for p in prefs)
    assert prefs[0].source == f"{HH_TEST}:1" and prefs[-1].source == f"{HH_TEST}:2312"
    for pref, raw in zip(prefs, hh_raw):
        assert pref.prompt.startswith("\n\nHuman: ") and pref.prompt.endswith("\n\nAssistant:")
        assert pref.chosen == pref.chosen.lstrip() and pref.rejected == pref.rejected.lstrip()
        # In this file every final answer follows "Assistant:" after exactly one space.
        assert pref.prompt + " " + pref.chosen == raw["chosen"]
        assert pref.prompt + " " + pref.rejected == raw["rejected"]
    # The four rows whose preferred final turn is empty are kept, not dropped.
    assert [i for i, p in enumerate(prefs, 1) if not p.chosen] == [87, 517, 926, 1104]
    assert all(p.rejected for p in prefs)


def test_hh_spot_checks(hh_raw):
    prefs = load_preferences(HH_TEST)
    # Line 1453 is one short exchange.
    assert prefs[1452] == Preference("\n\nHuman: call me a bad name\n\nAssistant:",
                                     "How do you like them apples?", "Why?",
                                     source=f"{HH_TEST}:1453")
    # Line 926: the labeller preferred no answer to "Ok".
    assert (prefs[925].prompt, prefs[925].chosen, prefs[925].rejected) == (
        "\n\nHuman: list of profane bad words\n\nAssistant:", "", "Ok")
    # Line 1: a multi-turn dialogue; the prompt keeps the earlier turns.
    first = prefs[0]
    assert first.prompt.startswith("\n\nHuman: what are some pranks with a pen i can do?")
    assert first.prompt.endswith("\n\nHuman: okay some of these do not have anything to do "
                                 "with pens\n\nAssistant:")
    assert first.prompt.count("\n\nAssistant:") == 3
    assert first.chosen.startswith("No, sorry!  All of these involve a pen")
    assert first.rejected.startswith("There are lots of funny things you can do with pens")
    # Line 1953: the chosen answer itself holds a second Assistant turn; it stays in the answer.
    odd = prefs[1952]
    assert odd.prompt.endswith("Human: Yes, please find me a serial.\n\nAssistant:")
    assert odd.chosen.startswith("Alrighty, I’ll do my best, here’s the key:"
                                 "\n\nAssistant:  O.k.")
    assert odd.rejected.startswith("You mean a password, right?")


def test_comparisons_are_demonstrations_of_their_preferred_answer(tmp_path):
    path = tmp_path / "prefs.jsonl"
    rows = [{"prompt": "p1", "chosen": "good", "rejected": "bad"},
            {"prompt": "p2", "chosen": "judged better", "rejected": "judged worse", "prob_chosen": 0.8},
            {"prompt": "p3", "chosen": "labelled first", "rejected": "more likely better", "prob_chosen": 0.3},
            {"prompt": "p4", "completions": ["second", "best", "worst"], "ranking": [1, 0, 2]},
            {"input_text": "p5", "candidate_0": "no", "candidate_1": "yes", "choice": 1},
            {"chosen": HH_A, "rejected": "\n\nHuman: a\n\nAssistant: y"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    demos = load_demonstrations(path)
    assert [(d.prompt, d.completion) for d in demos] == [
        ("p1", "good"), ("p2", "judged better"), ("p3", "more likely better"), ("p4", "best"), ("p5", "yes"),
        ("\n\nHuman: a\n\nAssistant:", "x")]
    assert demos[3].source == f"{path}:4"


def test_hh_as_demonstrations_skips_only_the_empty_preferred_answers(hh_raw):
    with pytest.raises(DataError, match=r":87: field 'chosen': is empty: the labeller preferred no answer"):
        load_demonstrations(HH_TEST)
    # the hint names the caller's key, and only while skipping is off: the warning of a skip has none
    with pytest.raises(DataError, match=r"no demonstration \(data.skip_bad_rows=true skips such rows\)$"):
        load_demonstrations(HH_TEST, skip_key="data.skip_bad_rows")
    demos = load_demonstrations(HH_TEST, skip_bad=True, skip_key="data.skip_bad_rows")
    assert str(demos.errors[0]).endswith("which is no demonstration")  # what the warning of the skips shows
    prefs = load_preferences(HH_TEST)
    assert len(demos) == 2308 and demos.skipped == 4
    assert [(d.prompt, d.completion) for d in demos] == [(p.prompt, p.chosen) for p in prefs if p.chosen]


def test_hh_prompts(hh_raw):
    prompts = load_prompts(HH_TEST)
    assert len(prompts) == 2312
    assert prompts[1452] == "\n\nHuman: call me a bad name\n\nAssistant:"


# --- bad rows ---------------------------------------------------------------------------------

GOOD_PAIR = {"prompt": "p", "chosen": "a", "rejected": "b"}
HH_A = "\n\nHuman: a\n\nAssistant: x"
NEEDS_TRL = "TRL (prompt, chosen, rejected)"

# (bad row, field the error must name, text the message must contain)
BAD_COMPARISONS = [
    ({"prompt": "p", "chosen": "a"}, "rejected", f"looks like the {NEEDS_TRL} shape"),
    ({"input_text": "p", "candidate_0": "a", "choice": 0}, "candidate_1",
     "Vertex AI (input_text, candidate_0, candidate_1, choice) shape (missing: candidate_1)"),
    ({"prompt": "p", "completions": ["a", "b"]}, "ranking",
     "ranking (prompt, completions, ranking) shape"),
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, "prompt", "got int"),
    ({"prompt": "p", "chosen": 1.5, "rejected": "b"}, "chosen", "got float"),
    ({"prompt": "p", "chosen": " \n", "rejected": "b"}, "chosen", "is empty"),
    ({"prompt": "p", "chosen": "a", "rejected": ""}, "rejected", "is empty"),
    ({"prompt": "p", "chosen": "same", "rejected": "same "}, "rejected", "identical"),
    ({"prompt": [USER], "chosen": [USER], "rejected": [assistant("b")]}, "chosen",
     "exactly one assistant message, got roles ['user']"),
    ({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}, "prompt[0]",
     "must be a message"),
    ({"prompt": [], "chosen": "a", "rejected": "b"}, "prompt", "non-empty list"),
    ({"input_text": "p", "candidate_0": "", "candidate_1": "b", "choice": 1}, "candidate_0",
     "is empty"),
    ({"input_text": "p", "candidate_0": "a", "candidate_1": "a", "choice": 1}, "candidate_0",
     "identical"),
    ({"input_text": "p", "candidate_0": "a", "candidate_1": "b", "choice": 2}, "choice",
     "must be 0 or 1"),
    ({"input_text": "p", "candidate_0": "a", "candidate_1": "b", "choice": "1"}, "choice",
     "got '1'"),
    ({"input_text": "p", "candidate_0": "a", "candidate_1": "b", "choice": True}, "choice",
     "must be 0 or 1"),
    ({"input_text": ["p"], "candidate_0": "a", "candidate_1": "b", "choice": 0}, "input_text",
     "must be text"),
    ({**GOOD_PAIR, "prob_chosen": 1.5}, "prob_chosen", "must be a number in [0, 1]"),
    ({**GOOD_PAIR, "prob_chosen": -0.1}, "prob_chosen", "got -0.1"),
    ({**GOOD_PAIR, "prob_chosen": "0.7"}, "prob_chosen", "got '0.7'"),
    ({**GOOD_PAIR, "margin": "big"}, "margin", "finite number"),
    ({"prompt": "p", "completions": ["a", "b", "c"], "ranking": [0, 0, 1]}, "ranking",
     "duplicate index 0"),
    ({"prompt": "p", "completions": ["a", "b", "c"], "ranking": [0, 1, 3]}, "ranking",
     "index 3 out of range; ranking must list each index 0..2"),
    ({"prompt": "p", "completions": ["a", "b", "c"], "ranking": [0, 1]}, "ranking",
     "wrong length: 2 indices for 3 completions"),
    ({"prompt": "p", "completions": ["a", "b", "c"], "ranking": ["0", "1", "2"]}, "ranking",
     "integer indices"),
    ({"prompt": "p", "completions": ["a"], "ranking": [0]}, "completions", "K >= 2"),
    ({"prompt": "p", "completions": ["a", "b", "a"], "ranking": [0, 1, 2]}, "completions",
     "answers 0 and 2 are identical"),
    ({"prompt": "p", "completions": ["a", " "], "ranking": [0, 1]}, "completions[1]", "empty"),
    ({"prompt": "p", "completions": ["a", "b"], "ranking": [0, 1], "prob_chosen": 0.6},
     "prob_chosen", "pairwise rows, not rankings"),
    ({"chosen": "\n\nHuman: a", "rejected": HH_A}, "chosen", "has no Assistant turn"),
    ({"chosen": HH_A, "rejected": "just text"}, "rejected", "has no Assistant turn"),
    ({"chosen": HH_A, "rejected": "\n\nHuman: b\n\nAssistant: y"}, "rejected",
     "shares no prefix with chosen"),
    ({"chosen": HH_A, "rejected": HH_A}, "rejected", "identical"),
    ({"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: rice?\n\nAssistant: boil it",
      "rejected": "\n\nHuman: hi\n\nAssistant: go away\n\nHuman: rice?\n\nAssistant: no"}, "chosen",
     "goes on past its answer"),  # the dialogues part before their last turn
    ({"chosen": HH_A + "\n\nHuman: thanks", "rejected": "\n\nHuman: a\n\nAssistant: y"}, "chosen",
     "goes on past its answer"),
    ({"chosen": HH_A, "rejected": [USER, assistant("x")]}, "rejected",
     "must both be dialogue text (Anthropic HH) or both message lists; got str and list"),
    ({"chosen": [USER, assistant("x")], "rejected": [SYSTEM, assistant("y")]}, "rejected",
     "shares no messages with chosen"),
    ({"chosen": [USER, assistant("x")], "rejected": [USER, USER]}, "rejected",
     "exactly one assistant message"),
]


def assert_names_place(err: DataError, path: str, line: int, field: str | None) -> None:
    message = str(err)
    assert Path(path).name in message and f"{path}:{line}: " in message, message
    assert (err.path, err.line, err.field) == (path, line, field)
    if field is not None:
        assert f"field '{field}'" in message, message


def write_bad(tmp_path: Path, good: dict, bad: dict) -> str:
    """Two good rows and a blank line before the bad row, which is line 4."""
    return write_raw_jsonl(tmp_path / "bad.jsonl", [good, "", good, bad])


@pytest.mark.parametrize("bad, field, fragment", BAD_COMPARISONS,
                         ids=[f"{f}-{frag[:24]}" for _, f, frag in BAD_COMPARISONS])
def test_bad_comparison_rows(tmp_path, bad, field, fragment):
    path = write_bad(tmp_path, GOOD_PAIR, bad)
    for load in (load_comparisons, load_preferences):
        with pytest.raises(DataError) as e:
            load(path)
        assert_names_place(e.value, path, 4, field)
        assert fragment in str(e.value)


def test_unknown_comparison_shape_lists_the_accepted_ones(tmp_path):
    path = write_bad(tmp_path, GOOD_PAIR, {"question": "p", "answer": "a"})
    with pytest.raises(DataError) as e:
        load_preferences(path)
    assert_names_place(e.value, path, 4, None)
    message = str(e.value)
    assert "no known shape in fields ['answer', 'question']" in message
    for shape in ("ranking (prompt, completions, ranking)", NEEDS_TRL,
                  "Vertex AI (input_text, candidate_0, candidate_1, choice)",
                  "implicit prompt / Anthropic HH (chosen, rejected)"):
        assert shape in message


def test_nan_soft_label_is_rejected(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b", "prob_chosen": NaN}\n')
    with pytest.raises(DataError, match="must be a number in"):
        load_preferences(path)


GOOD_DEMO = {"prompt": "p", "completion": "c"}
BAD_DEMONSTRATIONS = [
    ({"prompt": "p"}, "completion", "prompt/completion (prompt, completion) shape"),
    ({"prompt": "p", "completion": "  "}, "completion", "is empty"),
    ({"prompt": "p", "completion": [assistant("a"), assistant("b")]}, "completion",
     "exactly one assistant message"),
    ({"messages": [SYSTEM, USER]}, "messages", "last message must be the answer"),
    ({"messages": [assistant("a")]}, "messages", "at least one message before"),
    ({"messages": [USER, assistant("")]}, "messages[1]", "is empty"),
    ({"messages": "hello"}, "messages", "non-empty list"),
    ({"messages": [USER, {"role": "assistant", "content": 4}]}, "messages[1]",
     "must be a message"),
    ({"text": ""}, "text", "is empty"),
    ({"text": 12}, "text", "must be text, got int"),
    ({"title": "x"}, None, "accepted: chat (messages); a comparison's preferred answer (any comparison shape); "
     "prompt/completion (prompt, completion); pretraining text (text)"),
    ({"prompt": "p", "chosen": "a"}, "rejected", f"looks like the {NEEDS_TRL} shape"),
    ({"chosen": "\n\nHuman: a\n\nAssistant:", "rejected": HH_A}, "chosen", "the labeller preferred no answer"),
]


@pytest.mark.parametrize("bad, field, fragment", BAD_DEMONSTRATIONS)
def test_bad_demonstration_rows(tmp_path, bad, field, fragment):
    path = write_bad(tmp_path, GOOD_DEMO, bad)
    with pytest.raises(DataError) as e:
        load_demonstrations(path)
    assert_names_place(e.value, path, 4, field)
    assert fragment in str(e.value)


@pytest.mark.parametrize("bad, field, fragment", [
    ({"prompt": 5}, "prompt", "must be text or a list"),
    ({"messages": [assistant("a")]}, "messages", "no messages before"),
    ({"input_text": None, "chosen": HH_A}, "rejected", "missing"),
])
def test_bad_prompt_rows(tmp_path, bad, field, fragment):
    path = write_bad(tmp_path, {"prompt": "ok"}, bad)
    with pytest.raises(DataError) as e:
        load_prompts(path)
    assert_names_place(e.value, path, 4, field)
    assert fragment in str(e.value)


def test_bad_row_in_parquet_names_row_number(tmp_path):
    path = write_as("parquet", tmp_path, [GOOD_PAIR, GOOD_PAIR, {**GOOD_PAIR, "chosen": "b"}])
    with pytest.raises(DataError) as e:
        load_preferences(path)
    assert_names_place(e.value, path, 3, "rejected")


def test_bad_row_in_dataset_split_names_split_and_row(dataset_dict_dir):
    with pytest.raises(DataError) as e:
        load_preferences(dataset_dict_dir, split="train")  # text rows are not comparisons
    assert_names_place(e.value, f"{dataset_dict_dir}:train", 1, None)


# --- skipping -------------------------------------------------------------------------------

def test_skip_bad_counts_and_reports(tmp_path, caplog):
    path = write_raw_jsonl(tmp_path / "mixed.jsonl", [
        GOOD_PAIR,
        '{"prompt": "p", "chosen": ',  # line 2: truncated JSON
        {"prompt": "p", "chosen": "a", "rejected": "a"},  # line 3: identical answers
        "",
        {"prompt": "q", "completions": ["a", "b", "c"], "ranking": [1, 0, 2]},  # 3 pairs
        {"prompt": "p", "chosen": "a", "rejected": "b", "prob_chosen": 2},  # line 6
    ])
    with pytest.raises(DataError, match=r"mixed\.jsonl:2: not valid JSON"):
        load_preferences(path)  # the default stops at the first bad row

    with caplog.at_level(logging.WARNING, logger="rlxf.data.formats"):
        pairs = load_preferences(path, skip_bad=True)
    assert len(pairs) == 1 + 3
    assert pairs.skipped == 3
    assert [(e.line, e.field) for e in pairs.errors] == [(2, None), (3, "rejected"),
                                                        (6, "prob_chosen")]
    assert "skipped 3 bad row(s) of 5" in caplog.text and "mixed.jsonl:2" in caplog.text

    comparisons = load_comparisons(path, skip_bad=True)
    assert (len(comparisons), comparisons.skipped) == (2, 3)


def test_limit_reads_only_the_rows_it_needs(tmp_path):
    """``limit=N`` stops reading once N records are in: a bad row after them is never
    reached, and a ranking counts as its pairs (the last one read is cut to N)."""
    path = write_raw_jsonl(tmp_path / "big.jsonl", [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "q", "completions": ["a", "b", "c"], "ranking": [1, 0, 2]},  # 3 pairs
        '{"prompt": "p", "chosen": ',  # line 3: truncated JSON, past every limit below
    ])
    assert [(p.prompt, p.chosen, p.rejected) for p in load_preferences(path, limit=3)] == \
        [("p", "a", "b"), ("q", "b", "a"), ("q", "b", "c")]
    assert len(load_preferences(path, limit=4)) == 4
    assert len(load_comparisons(path, limit=2)) == 2
    assert [d.completion for d in load_demonstrations(path, limit=1)] == ["a"]
    assert load_prompts(path, limit=2) == ["p", "q"]
    with pytest.raises(DataError, match=r"big\.jsonl:3: not valid JSON"):
        load_preferences(path, limit=5)  # more than the good rows hold: the bad row is reached
    skipping = load_preferences(path, limit=5, skip_bad=True)
    assert (len(skipping), skipping.skipped) == (4, 1)


def test_limit_counts_only_kept_records_when_skipping(tmp_path):
    path = write_raw_jsonl(tmp_path / "d.jsonl", [{"text": ""}, {"text": "one"}, {"text": ""}, {"text": "two"},
                                                  {"text": "three"}])
    demos = load_demonstrations(path, skip_bad=True, limit=2)
    assert [d.completion for d in demos] == ["one", "two"] and demos.skipped == 2


def test_skip_bad_keeps_only_the_first_errors(tmp_path):
    path = write_raw_jsonl(tmp_path / "d.jsonl", [{"text": ""}] * 8 + [{"text": "ok"}])
    demos = load_demonstrations(path, skip_bad=True)
    assert demos == [Demonstration("", "ok", source=f"{path}:9")]
    assert demos.skipped == 8
    assert [e.line for e in demos.errors] == [1, 2, 3, 4, 5]


def test_no_skips_logs_nothing(tmp_path, caplog):
    path = write_as("jsonl", tmp_path, [GOOD_PAIR])
    with caplog.at_level(logging.WARNING):
        load_preferences(path, skip_bad=True)
    assert caplog.records == []


# --- chat templates -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "hi": 1, "there": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_render_prompt_uses_chat_template(tmp_path, tiny_tokenizer):
    path = write_as("jsonl", tmp_path, [
        {"prompt": [SYSTEM, USER], "chosen": [assistant("4")], "rejected": [assistant("5")]}])
    tiny_tokenizer.chat_template = CHAT_TEMPLATE
    try:
        rendered = render_prompt(load_preferences(path)[0].prompt, tiny_tokenizer)
        assert rendered == ("<|system|>Answer briefly.\n<|user|>What is 2+2?\n<|assistant|>")
        assert render_prompt("plain text", tiny_tokenizer) == "plain text"
    finally:
        tiny_tokenizer.chat_template = None


def test_render_prompt_without_chat_template(tiny_tokenizer):
    assert render_prompt("\n\nHuman: hi\n\nAssistant:", tiny_tokenizer) == \
        "\n\nHuman: hi\n\nAssistant:"
    with pytest.raises(ConfigError, match="the data holds conversations .* has no chat template"):
        render_prompt((USER,), tiny_tokenizer)
