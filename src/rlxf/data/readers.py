"""Read rows from data files, and write JSONL atomically.

:func:`read_rows` turns any supported source into ``(line, row)`` pairs, where ``row``
is a plain ``dict`` and ``line`` is 1-based, so every later error can say where the
row came from:

- ``.jsonl`` / ``.jsonl.gz``: the line in the file. Blank lines are skipped but still
  counted, so the number is the one an editor shows.
- ``.csv`` / ``.csv.gz`` (a header row naming the fields): the line the row starts on,
  counting the header as line 1 (a quoted cell may hold line breaks, so a row may span
  lines). Cells are text, an empty one too, except in the columns a row parser reads
  as numbers or true/false (:data:`_CSV_NUMBERS`, :func:`_csv_flag_column`), where a cell
  that reads as one becomes one and an empty cell is null (absent).
- ``.json`` (one list of objects): the object's position in the list.
- ``.parquet``: the row number.
- a folder saved by ``datasets``' ``save_to_disk``: the row number in the split.

A folder written by ``datasets.DatasetDict.save_to_disk`` holds several splits; pick
one with ``split="train"`` or the ``"FOLDER:train"`` shorthand, which fits in a
config file. pyarrow and ``datasets`` are imported only when such a file is read.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import os
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from rlxf.errors import DataError

SUPPORTED = ".jsonl, .jsonl.gz, .csv, .csv.gz, .json (a list of objects), .parquet, " \
            "or a folder saved by datasets' save_to_disk"
_ONE_OBJECT = "each line must be one JSON object"

_CSV_NUMBERS = frozenset({"prob_chosen", "margin", "choice"})
"""CSV columns whose cells are read as numbers when they hold one: the fields
:mod:`rlxf.data.formats` checks are numbers. Other text in them stays text (an autosxs
``choice`` is "A" or "B"), for the row parser to accept or refuse, naming its line."""


def _csv_flag_column(name: str) -> bool:
    """Whether a CSV column holds true/false flags read as booleans: ``<answer>_ended``
    (what ``rlxf sxs`` and ``rlxf autosxs`` read) and the ``ended_a``/``ended_b`` columns
    of the sxs.csv that ``rlxf sxs`` writes."""
    return name.endswith("_ended") or name.startswith("ended_")


def read_rows(path: str | os.PathLike, *, split: str | None = None
              ) -> Iterator[tuple[int, dict]]:
    """Yield ``(line, row)`` for every row of ``path``, ``line`` 1-based (see module doc).

    ``split`` names the split of a ``DatasetDict`` folder; ``"FOLDER:SPLIT"`` is the
    same thing written in the path. The path is checked before this returns, so a
    missing file raises here, not at the first ``next()``.

    Raises:
        DataError: the file is missing or of an unknown kind, the split is wrong, or
            a row is not a JSON object.
    """
    rows = iter_rows(path, split=split)
    return (_raise_bad(line, row) for line, row in rows)


def iter_rows(path: str | os.PathLike, *, split: str | None = None
              ) -> Iterator[tuple[int, dict | DataError]]:
    """Like :func:`read_rows`, but a row that is not a JSON object comes back as its
    :class:`DataError` instead of ending the read, so a caller can skip it and go on.

    Problems with the file as a whole (missing, unreadable, wrong split) still raise.
    """
    path, split = _parse_split(str(path), split)
    name = path if split is None else f"{path}:{split}"
    if os.path.isdir(path):
        return _read_saved_dataset(path, split)
    if not os.path.exists(path):
        raise DataError(f"no such file or folder (current folder: {os.getcwd()})", path=name)
    if split is not None:
        raise DataError(f"split {split!r} given, but only a save_to_disk folder has splits",
                        path=path)
    lower = path.lower()
    if lower.endswith((".jsonl", ".jsonl.gz")):
        return _read_jsonl(path)
    if lower.endswith((".csv", ".csv.gz")):
        return _read_csv(path)
    if lower.endswith(".json"):
        return _read_json_list(path)
    if lower.endswith(".parquet"):
        return _read_parquet(path)
    raise DataError(f"unknown kind of data file; use {SUPPORTED}", path=path)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write ``rows`` to ``path`` as JSONL (gzipped if it ends in ``.gz``); return the count.

    Rows are dicts or record dataclasses (written with ``dataclasses.asdict``, which the
    loaders in :mod:`rlxf.data.formats` read back). Parent folders are created. The
    file is written to a temporary name beside it and renamed into place, so readers
    never see half a file and an error leaves any old file untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    count = 0
    try:
        with os.fdopen(fd, "wb") as raw:
            out = gzip.GzipFile(fileobj=raw, mode="wb") if path.name.endswith(".gz") else raw
            for row in rows:
                if dataclasses.is_dataclass(row) and not isinstance(row, type):
                    row = dataclasses.asdict(row)
                out.write(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
                count += 1
            if out is not raw:
                out.close()  # writes the gzip trailer; ``raw`` stays open until the with ends
        share_as_new(tmp)  # mkstemp made the file for its owner only
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return count


def _raise_bad(line: int, row: dict | DataError) -> tuple[int, dict]:
    if isinstance(row, DataError):
        raise row
    return line, row


def share_as_new(path: str | os.PathLike) -> None:
    """Give ``path`` the permissions the umask gives any new file (tools that write through
    a temporary file, mkstemp or transformers' safetensors, leave it readable by its owner
    only, so a teammate could not read a run's outputs)."""
    mask = os.umask(0)  # read the umask, then put it back
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _parse_split(path: str, split: str | None) -> tuple[str, str | None]:
    """Take a ``FOLDER:SPLIT`` suffix off ``path`` when FOLDER is an existing folder."""
    if os.path.exists(path) or ":" not in path:
        return path, split
    folder, _, suffix = path.rpartition(":")
    if not suffix or not os.path.isdir(folder) or any(c in suffix for c in "/\\"):
        return path, split
    if split is not None and split != suffix:
        raise DataError(f"split {suffix!r} in the path contradicts the split {split!r} also given; give one",
                        path=path)
    return folder, suffix


def _read_jsonl(path: str) -> Iterator[tuple[int, dict | DataError]]:
    gzipped = path.lower().endswith(".gz")
    opener = gzip.open if gzipped else open
    # Read bytes and decode line by line, so bad UTF-8 is reported with its line too.
    with opener(path, "rb") as f:
        for line, raw in enumerate(_gzip_checked(f, path) if gzipped else f, 1):
            try:
                text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield line, DataError(f"not UTF-8 text: {e}", path=path, line=line)
                continue
            if not text.strip():
                continue
            try:
                row = json.loads(text.rstrip("\r\n"))  # without its newline: a line cut short fails at its end
            except json.JSONDecodeError as e:
                yield line, DataError(f"not valid JSON: {e.msg} at column {e.colno}; {_ONE_OBJECT}", path=path,
                                      line=line)
                continue
            if not isinstance(row, dict):
                row = DataError(f"a JSON {type(row).__name__}, not an object; {_ONE_OBJECT}",
                                path=path, line=line)
            yield line, row


def _gzip_checked(f, path: str) -> Iterator[bytes]:
    """The lines of the gzip file ``f``; a file that is not gzip, or is cut short, is a
    :class:`DataError` (naming the last line read), not a bare ``EOFError``."""
    line = 0
    while True:
        try:
            raw = f.readline()
        except gzip.BadGzipFile:
            raise DataError("not a gzip file; drop the .gz suffix if it is plain JSONL", path=path) from None
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(f"the gzip data is cut short or damaged after line {line} ({e}); download or "
                            "compress the file again", path=path) from None
        if not raw:
            return
        line += 1
        yield raw


def _read_csv(path: str) -> Iterator[tuple[int, dict | DataError]]:
    """The rows of a CSV file, each with the line it starts on (module doc). The stdlib
    reader, not pandas: pandas cannot say on which line of the file a row began."""
    gzipped = path.lower().endswith(".gz")
    # a long answer is one cell; the stdlib's default limit (128 KiB) would refuse it
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    with (gzip.open if gzipped else open)(path, "rb") as f:
        reader = csv.reader(_decoded_lines(_gzip_checked(f, path) if gzipped else f, path), strict=True)
        header = None
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as e:  # an unclosed quote is found only where the file ends: name where it opened
                raise DataError(f"not valid CSV in the row that starts here: {e}", path=path, line=start) from None
            if not cells:
                continue  # a blank line
            if header is None:
                header = _csv_header(cells, path, start)
            elif len(cells) != len(header):
                yield start, DataError(f"{len(cells)} cells, but the header (line 1) names {len(header)} columns",
                                       path=path, line=start)
            else:
                yield start, _csv_row(header, cells)


def _decoded_lines(lines: Iterable[bytes], path: str) -> Iterator[str]:
    """``lines`` as text, line breaks kept (the csv reader needs them inside quoted cells)."""
    for line, raw in enumerate(lines, 1):
        try:
            yield raw.decode("utf-8-sig" if line == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"not UTF-8 text: {e}; save the CSV as UTF-8", path=path, line=line) from None


def _csv_header(cells: list[str], path: str, line: int) -> list[str]:
    names = [c.strip() for c in cells]
    repeated = sorted({n for n in names if n and names.count(n) > 1})
    if repeated:
        raise DataError(f"the header names the column(s) {repeated} more than once", path=path, line=line)
    return names


def _csv_row(header: list[str], cells: list[str]) -> dict:
    row: dict = {}
    for name, cell in zip(header, cells):
        if not name:
            continue  # an unnamed column: the index pandas' to_csv writes by default
        typed = name in _CSV_NUMBERS or _csv_flag_column(name)
        row[name] = None if typed and not cell.strip() else _csv_value(name, cell) if typed else cell
    return row


def _csv_value(name: str, cell: str):
    """A typed column's cell as the number or flag it reads as, else the text itself."""
    text = cell.strip()
    if _csv_flag_column(name):
        return {"true": True, "false": False}.get(text.lower(), cell)
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return cell


def _read_json_list(path: str) -> Iterator[tuple[int, dict | DataError]]:
    with open(path, encoding="utf-8-sig") as f:
        try:
            rows = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"not valid JSON: {e}; a .json file holds one list of objects "
                            "(for one object per line, name the file .jsonl)", path=path) from None
    if not isinstance(rows, list):
        raise DataError(f"a JSON {type(rows).__name__}, not a list; a .json file holds one "
                        "list of objects", path=path)
    return _enumerate_objects(rows, path)


def _enumerate_objects(rows: list, path: str) -> Iterator[tuple[int, dict | DataError]]:
    for line, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            row = DataError(f"a JSON {type(row).__name__}, not an object; the list must hold "
                            "only objects", path=path, line=line)
        yield line, row


def _read_parquet(path: str) -> Iterator[tuple[int, dict]]:
    import pyarrow
    import pyarrow.parquet

    try:
        batches = pyarrow.parquet.ParquetFile(path).iter_batches(batch_size=1024)
        line = 0
        for batch in batches:
            for row in batch.to_pylist():
                line += 1
                yield line, row
    except pyarrow.ArrowException as e:
        raise DataError(f"cannot read Parquet: {e}", path=path) from None


def _read_saved_dataset(folder: str, split: str | None) -> Iterator[tuple[int, dict]]:
    is_dict = os.path.exists(os.path.join(folder, "dataset_dict.json"))
    if not is_dict and not os.path.exists(os.path.join(folder, "state.json")):
        raise DataError(f"a folder, but not one saved by datasets' save_to_disk; use {SUPPORTED}",
                        path=folder)
    if not is_dict and split is not None:
        raise DataError(f"split {split!r} given, but this folder holds one dataset without "
                        "splits; drop the split", path=folder)
    import datasets

    dataset = datasets.load_from_disk(folder)
    if is_dict:
        splits = sorted(dataset)
        if split is None and len(splits) != 1:
            # the path form works in every command (their split keys differ: split, data.split)
            raise DataError(f"holds the splits {splits}; choose one by ending the path with it: "
                            f"'{folder}:{splits[0]}'", path=folder)
        if split is not None and split not in dataset:
            raise DataError(f"no split {split!r}; it holds {splits}", path=folder)
        dataset = dataset[split if split is not None else splits[0]]
    return _enumerate_rows(dataset)


def _enumerate_rows(dataset) -> Iterator[tuple[int, dict]]:
    for line, row in enumerate(dataset, 1):
        yield line, dict(row)
