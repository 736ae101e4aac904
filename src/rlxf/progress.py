"""Progress bars and log output for long work (tqdm; quiet when not wanted)."""

from __future__ import annotations

import logging
import os
import sys


def progress(iterable, *, desc: str, total: int | None = None, initial: int = 0, enabled: bool = True):
    """A tqdm bar over ``iterable`` on stderr; a silent pass-through when disabled."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, initial=initial, disable=not enabled,
                dynamic_ncols=True, leave=False, file=sys.stderr)


def setup_logging(verbose: bool = False) -> None:
    """``rlxf: message`` lines on stderr; third-party chatter kept at warnings. Under
    ``accelerate launch`` only process 0 logs below ERROR: every process reads the same
    config and data, so the others would repeat its every line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("rlxf: %(message)s"))
    root = logging.getLogger("rlxf")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if os.environ.get("RANK", "0") != "0" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        root.setLevel(logging.ERROR)
    root.propagate = False
    for noisy in ("transformers", "datasets", "httpx", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    quiet_libraries()


def quiet_libraries() -> None:
    """Hide transformers' per-file progress bars and info logs (our own bars say enough)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
