"""`rlxf fail rank=R` for `accelerate launch`: a command that raises a ConfigError on
process R only (R = -1: on every process, as a config or data error is raised), while
the others wait as if in a collective until the launcher stops them."""

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rlxf.errors import ConfigError


@dataclass(kw_only=True)
class Config:
    rank: int = -1
    """The process that fails; -1: every process, with the same message."""


def run(cfg: Config) -> dict:
    rank = int(os.environ["RANK"])
    logging.getLogger("rlxf").warning("a warning every process logs")
    if cfg.rank == -1:
        raise ConfigError("bad key on every process")
    if cfg.rank == rank:
        raise ConfigError(f"bad row on process {rank} only")
    time.sleep(120)  # the launcher stops this process once the other has failed
    return {}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from rlxf import cli

    cli.COMMANDS[("fail",)] = "ddp_error_main"
    sys.exit(cli.main(["fail", *sys.argv[1:]]))
