"""Data: read files, normalise rows into records, render prompts.

    from rlxf.data import load_preferences
    pairs = load_preferences("prefs.jsonl")   # or .jsonl.gz, .json, .parquet, "DIR:train"

See :mod:`rlxf.data.formats` for the accepted row shapes.
"""

from rlxf.data.formats import (
    Loaded,
    load_comparisons,
    load_demonstrations,
    load_preferences,
    load_prompts,
    render_prompt,
)
from rlxf.data.readers import read_rows, write_jsonl
from rlxf.data.records import Demonstration, Message, Preference, Prompt, Ranking

__all__ = [
    "Demonstration", "Loaded", "Message", "Preference", "Prompt", "Ranking",
    "load_comparisons", "load_demonstrations", "load_preferences", "load_prompts",
    "read_rows", "render_prompt", "write_jsonl",
]
