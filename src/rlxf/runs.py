"""The run directory: the files every stage leaves behind, and resuming from them.

    OUT/
      config.yaml       the resolved config (re-running with a different one is refused)
      metrics.jsonl     one JSON object per logged step: {"step": 10, "loss": ..., ...}
      checkpoints/      step-000100/ ... the newest ``keep`` of them, written atomically
      final/            Hugging Face ``save_pretrained`` format, safetensors
      summary.json      headline numbers; its presence marks the run complete

Re-running the same command on the same ``OUT`` resumes from the newest checkpoint:
``metrics.jsonl`` is cut back to that step, so a resumed run's log reads exactly like
an uninterrupted one. A re-run may change only the keys that cannot change a result
(:data:`NO_EFFECT`: progress bars, checkpoint spacing, a judge server's concurrency,
timeouts and retries); a run that stopped before it saved anything (a data error at the
first row, say) takes any new config.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from rlxf.config import to_dict
from rlxf.errors import ConfigError, DataError

log = logging.getLogger("rlxf")

_STEP_DIR = "step-{:06d}"

NO_EFFECT = frozenset({"out", "progress", "save_every", "keep_checkpoints", "concurrency", "timeout", "max_retries",
                       "backoff", "max_backoff", "api_key_env"})
"""Config keys (the last part of a dotted key) that change how a run goes, never what
it computes (resuming is exact wherever the checkpoints fall; ``out`` may be written
relative or absolute): a resumed run may set them differently."""


class Run:
    """One run directory. Create it with :meth:`open`."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.checkpoints = out / "checkpoints"
        self.final = out / "final"
        self.metrics_path = out / "metrics.jsonl"
        self.summary_path = out / "summary.json"

    @classmethod
    def open(cls, out: str | Path, config: Any) -> "Run":
        """Create ``out`` for ``config``, or reopen it if it holds a run of the same config.

        The directory is locked for as long as this process lives: a second process given
        the same ``out`` (the same command started twice, or orphaned workers of a killed
        launch still training) is refused instead of interleaving its writes."""
        if not str(out).strip():
            raise ConfigError("out is empty; name the folder the run writes to (out=runs/NAME)")
        run = cls(Path(out))
        config_path = run.out / "config.yaml"
        if run.summary_path.exists() and not config_path.exists():
            raise ConfigError(f"{run.out} holds a summary.json but no config.yaml: it is not an rlxf run directory; "
                              "pass a new out=DIR")
        run.out.mkdir(parents=True, exist_ok=True)
        _lock(run.out)
        resolved = to_dict(config)
        if config_path.exists() and run.started:
            previous = yaml.safe_load(config_path.read_text()) or {}
            changed = [k for k in _diff(previous, resolved, _defaults(config)) if k.rpartition(".")[2] not in NO_EFFECT]
            if changed:
                raise ConfigError(
                    f"{run.out} holds a run with a different config ({', '.join(changed[:5])} changed); "
                    f"pass a new out=DIR, or delete {run.out} to start over")
        _atomic_write(config_path, yaml.safe_dump(resolved, sort_keys=False))
        return run

    # -- completion ---------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """Whether the run saved anything a resume would keep: a checkpoint, or an output.
        Metrics without a checkpoint do not count (a resume starts from step 0 and drops
        them), nor does a cache: it is keyed by what it holds (a judge's prompt), so it
        serves a changed config rightly."""
        if self.checkpoints.exists() and any(self.checkpoints.iterdir()):
            return True
        return any(p.name not in ("config.yaml", "checkpoints", _LOCK, self.metrics_path.name)
                   and ".sqlite" not in p.name for p in self.out.iterdir())

    @property
    def complete(self) -> bool:
        return self.summary_path.exists()

    def summary(self) -> dict[str, Any]:
        try:
            return json.loads(self.summary_path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"not valid JSON ({err}); delete it to finish the run again",
                            path=str(self.summary_path)) from None

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json`` (NaN and infinities as ``null``, as in metrics)."""
        plain = json.loads(json.dumps(summary, default=float))
        _atomic_write(self.summary_path, json.dumps(_json_safe(plain), indent=2, allow_nan=False) + "\n")

    # -- metrics ------------------------------------------------------------------------

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Append one step's metrics (plain numbers) to ``metrics.jsonl``. A NaN or infinite
        value is written as ``null`` (JSON has no NaN; strict readers refuse it) and warned
        of: the run has diverged."""
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            log.warning("step %d: %s not a finite number (written as null): training has diverged; lower lr, or "
                        "check the data and max_grad_norm", step, ", ".join(f"{k}={row[k]}" for k in bad))
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(_json_safe(row), allow_nan=False) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics_rows(self.metrics_path)

    def truncate_metrics(self, after_step: int) -> None:
        """Drop rows logged after ``after_step`` (they were written after the checkpoint we resume from)."""
        kept = [row for row in self.metrics() if row["step"] <= after_step]
        if kept:
            _atomic_write(self.metrics_path, "".join(json.dumps(row) + "\n" for row in kept))
        else:
            self.metrics_path.unlink(missing_ok=True)

    # -- checkpoints --------------------------------------------------------------------

    def latest_checkpoint(self) -> Path | None:
        done = sorted(p for p in self.checkpoints.glob("step-*") if not p.name.endswith(".tmp"))
        return done[-1] if done else None

    def new_checkpoint_dir(self, step: int) -> Path:
        """A fresh temporary directory; :meth:`commit_checkpoint` makes it visible."""
        tmp = self.checkpoints / (_STEP_DIR.format(step) + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def commit_checkpoint(self, tmp: Path, keep: int) -> Path:
        """Rename the finished checkpoint into place, then prune all but the newest ``keep``."""
        final = tmp.with_name(tmp.name.removesuffix(".tmp"))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        done = sorted(p for p in self.checkpoints.glob("step-*") if not p.name.endswith(".tmp"))
        for old in done[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        return final


_LOCK = ".rlxf.lock"
_held: dict[Path, Any] = {}  # the lock files this process holds open, by run directory


@atexit.register
def _release() -> None:
    """Close the lock files at exit (the locks go with the process anyway; closing them
    says so, instead of leaving the interpreter to warn of unclosed files)."""
    for handle in _held.values():
        handle.close()
    _held.clear()


def _lock(out: Path) -> None:
    """Hold an exclusive lock on ``out`` until this process exits (see :meth:`Run.open`)."""
    import fcntl

    key = out.resolve()
    if key in _held:
        return
    handle = open(out / _LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "?"
        handle.close()
        raise ConfigError(f"{out} is in use by another rlxf process (pid {owner}); wait for it to end or stop it "
                          "(after a killed accelerate launch, its workers may still run), or pass a new out=DIR"
                          ) from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held[key] = handle


def completed_setting(out: str | Path, key: str, default: Any) -> Any:
    """The value of top-level ``key`` in the config.yaml of the complete run in ``out``;
    ``default`` where ``out`` holds no complete run or its config lacks the key."""
    run = Run(Path(out))
    config_path = run.out / "config.yaml"
    if not (run.complete and config_path.exists()):
        return default
    saved = yaml.safe_load(config_path.read_text()) or {}
    return saved.get(key, default) if isinstance(saved, dict) else default


def read_metrics_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (``[]`` if there is none). A last line cut short
    (the process was killed while writing it) is left out with a warning; a bad line
    anywhere else is a :class:`DataError` naming it."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines):
                log.warning("%s:%d: the last line is cut short (a run killed while writing it); left out",
                            path, number)
                break
            raise DataError(f"not valid JSON: {e}; each line of metrics.jsonl is one step's JSON object",
                            path=str(path), line=number) from None
    return rows


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[1])


def _diff(old: dict, new: dict, defaults: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ. A key the old config lacks is no change when
    the new value is that key's default: the key was added to rlxf after the run began,
    and the run was made with the behaviour the default keeps."""
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _diff(a, b, defaults.get(key) or {}, f"{prefix}{key}.")
        elif key not in old and key in defaults and b == defaults[key]:
            continue
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def _defaults(config: Any) -> dict[str, Any]:
    """The default of every field of ``config`` that has one, nested like :func:`to_dict`."""
    import dataclasses

    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = _defaults(value)
        elif f.default is not dataclasses.MISSING:
            out[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value


def _json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float, however deep, replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Timer:
    """Wall-clock seconds since creation, plus ``before`` (the seconds a resumed run had
    already trained, from its checkpoint)."""

    def __init__(self, before: float = 0.0) -> None:
        self.start = time.perf_counter() - before

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
