"""`rlxf STAGE ...` for `accelerate launch`, counting each DDP model's gradient all-reduces.

Every model accelerate wraps in DDP gets a communication hook that all-reduces as DDP
does by default (the mean over processes) and counts: ``all_reduces``, one per gradient
bucket, and ``synced_backwards``, the backward passes that all-reduced (their last
bucket, ``GradBucket.is_last``). Each process writes its counts, by the wrapped module's
class name, to ``$RLXF_DDP_COUNTS/rank-R.json`` when the stage returns. `ppo` samples
with the seeded row backend (rollout_doubles.py).
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

COUNTS: dict[str, dict[str, int]] = {}


def _counting_all_reduce(counts: dict[str, int], bucket):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    counts["all_reduces"] += 1
    counts["synced_backwards"] += bucket.is_last()
    return allreduce_hook(None, bucket)  # None: the default process group


def install_counters() -> None:
    from accelerate import Accelerator
    from torch.nn.parallel import DistributedDataParallel

    prepare_model = Accelerator.prepare_model

    def counted(self, model, *args, **kwargs):
        model = prepare_model(self, model, *args, **kwargs)
        if isinstance(model, DistributedDataParallel):
            counts = COUNTS.setdefault(type(model.module).__name__, {"all_reduces": 0, "synced_backwards": 0})
            model.register_comm_hook(counts, _counting_all_reduce)
        return model

    Accelerator.prepare_model = counted


if __name__ == "__main__":
    import rollout_doubles

    from rlxf.cli import main

    install_counters()
    if sys.argv[1] == "ppo":
        rollout_doubles.install()
    code = main(sys.argv[1:])
    out = Path(os.environ["RLXF_DDP_COUNTS"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank-{os.environ['RANK']}.json").write_text(json.dumps(COUNTS))
    sys.exit(code)
