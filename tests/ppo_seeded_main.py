"""`rlxf ppo` with the seeded row backend (tests/rollout_doubles.py), for `accelerate launch`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import rollout_doubles  # noqa: E402

from rlxf.cli import main  # noqa: E402

if __name__ == "__main__":
    rollout_doubles.install()
    sys.exit(main(["ppo", *sys.argv[1:]]))
