"""The ``rlxf`` command: parse, then hand a validated config to a command's ``run``.

    rlxf <command> [--config FILE.yaml] [dotted.key=value ...] [--key value] [--flag]

Every command is a module with a ``Config`` dataclass and ``run(config)``; this file
only finds the module, builds its config and reports errors on one line.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
import sys

from rlxf.errors import RlxfError

# command words -> module; the module's docstring's first line is its help line
COMMANDS = {
    ("sft",): "rlxf.stages.sft",
    ("reward",): "rlxf.stages.reward",
    ("ppo",): "rlxf.stages.ppo",
    ("label",): "rlxf.feedback.ai.label",
    ("label-eval",): "rlxf.feedback.ai.label_eval",
    ("critique",): "rlxf.feedback.ai.critique",
    ("tinyworld", "preferences"): "rlxf.tinyworld.preferences",
    ("tinyworld", "judge"): "rlxf.tinyworld.judge",
    ("tinyworld", "build"): "rlxf.tinyworld.build",
    ("sxs",): "rlxf.evaluate.sxs",
    ("autosxs",): "rlxf.evaluate.autosxs",
    ("report",): "rlxf.evaluate.report",
    ("pipeline",): "rlxf.pipeline",
    ("demo",): "rlxf.tinyworld.demo",
    ("annotate", "users"): "rlxf.feedback.human.users",
    ("annotate", "import"): "rlxf.feedback.human.importer",
    ("annotate", "serve"): "rlxf.feedback.human.server",
    ("annotate", "export"): "rlxf.feedback.human.export",
}


def keep_freed_memory() -> bool:
    """Let this process's heap keep the memory PyTorch frees, for its next tensors (Linux,
    glibc). By default glibc serves every block over 32 MB with its own mmap and unmaps
    it when freed, so each training step faults the pages of its large tensors in again
    (a GPT-2 124M's token-embedding gradient alone is 154 MB). ``rlxf ppo`` at that shape
    (PPO-M's, 4 rollouts of 64 + 8 tokens) on 2 CPU cores: 7.2-7.5M page faults in 5 steps,
    1.1M with this; system time 57-63 s -> 25-28 s, wall 139-143 s -> 114-118 s, the same
    peak memory; PPO-S's small tensors: no change beyond noise.
    The cost: a tensor that grows by concatenation (a KV cache while sampling long
    answers) leaves holes the next, larger one does not fit, so sampling can peak higher
    (GPT-2 4×256 ``generate``, 64 × 420 + 120 tokens: 1.84 GB instead of 1.23 GB, in 20 s
    instead of 53 s).
    Skipped when the environment sets glibc's own tunables (``MALLOC_*``, or ``glibc.malloc.``
    in ``GLIBC_TUNABLES``) or ``RLXF_MALLOC=default``. Returns whether it applied."""
    if sys.platform != "linux" or os.environ.get("RLXF_MALLOC") == "default" or \
            any(key.startswith("MALLOC_") for key in os.environ) or \
            "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
    # no block gets its own mapping, and the heap's free top is kept up to 2 GiB
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(_usage(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from importlib.metadata import version

        print(version("rlxf"))
        return 0
    words, module_name = _find_command(argv)
    group = sorted(w[1] for w in COMMANDS if len(w) == 2 and w[0] == argv[0])
    if module_name is None and group:  # `rlxf tinyworld`, `rlxf annotate --help`: name the group's commands
        asked = len(argv) > 1 and argv[1] in ("-h", "--help", "help")
        close = difflib.get_close_matches(argv[1], group, n=1) if len(argv) > 1 and not asked else []
        hint = f"rlxf: error: unknown command '{argv[0]} {argv[1]}'; " if len(argv) > 1 and not asked else ""
        hint += f"did you mean 'rlxf {argv[0]} {close[0]}'? " if close else ""
        print(f"{hint}rlxf {argv[0]} has the commands: {', '.join(group)}; `rlxf {argv[0]} <command> --help` "
              "describes one", file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    if module_name is None:
        names = [" ".join(w) for w in COMMANDS]
        close = difflib.get_close_matches(" ".join(argv[:2]), names, n=1) or difflib.get_close_matches(argv[0], names,
                                                                                                       n=1)
        hint = f"; did you mean 'rlxf {close[0]}'?" if close else ""
        print(f"rlxf: error: unknown command '{' '.join(argv[:2])}'{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    rest = argv[len(words):]
    keep_freed_memory()  # before the command's module imports torch
    from rlxf.config import dump_yaml, help_text, load_config
    from rlxf.progress import setup_logging

    module = importlib.import_module(module_name)
    if any(a in ("-h", "--help") for a in rest):
        print(f"usage: rlxf {' '.join(words)} [--config FILE.yaml] [key=value ...]\n\n"
              f"{(module.__doc__ or '').strip()}\n\nkeys:\n{help_text(module.Config)}")
        return 0
    try:
        _check_options(rest, module.Config, words)
        config_path, overrides, flags = _split_args(rest)
        setup_logging(verbose="verbose" in flags)
        cfg = load_config(module.Config, config_path, overrides)
        if "print-config" in flags:
            print(dump_yaml(cfg), end="")
            return 0
        result = module.run(cfg)
        _close_process_group()
    except RlxfError as err:
        _report_error(f"rlxf: error: {err}")
        return 2
    except KeyboardInterrupt:
        print("rlxf: interrupted; re-run the same command to resume (what it saved is kept: checkpoints, "
              "sampled answers, judgements)", file=sys.stderr)
        return 130
    if isinstance(result, dict) and os.environ.get("RANK", "0") == "0":  # under accelerate launch: once
        print(json.dumps(result, indent=2, default=str))
    return 0


ERROR_WAIT_S = 5.0
"""How long a process other than process 0 of a launch waits before it prints its error (_report_error)."""


def _report_error(message: str) -> None:
    """Print ``message`` (a user error) on stderr; under ``accelerate launch``, once.

    Every process of a launch reads the same config and data, so a config or data error
    is raised by all of them alike. The launcher (torchrun's agent) stops every process
    as soon as one exits with an error: process 0 prints and exits at once, and another
    process waits ``ERROR_WAIT_S`` seconds first, in which the launcher stops it if
    process 0 failed too. Still running after that, it prints: the error was its own.
    """
    if os.environ.get("RANK", "0") != "0" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import time

        sys.stderr.flush()
        time.sleep(ERROR_WAIT_S)
    print(message, file=sys.stderr)


def _close_process_group() -> None:
    """Under ``accelerate launch``: wait for every process, then close the process group.
    A process that exits while gloo's threads still run can abort ("terminate called
    without an active exception") and fail the whole launch."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _find_command(argv: list[str]) -> tuple[tuple[str, ...], str | None]:
    for n in (2, 1):
        words = tuple(argv[:n])
        if words in COMMANDS:
            return words, COMMANDS[words]
    return (), None


OPTIONS = ("config", "print-config", "verbose", "help")  # the CLI's own --options; any other names a config key


def _check_options(args: list[str], config_cls: type, words: tuple[str, ...]) -> None:
    """Refuse a ``--name`` that is neither one of :data:`OPTIONS` nor a config key of the
    command, suggesting the closest of both (as a misspelt command or config key is)."""
    import dataclasses

    keys = [f.name for f in dataclasses.fields(config_cls)]
    for arg in args:
        if not arg.startswith("--"):
            continue
        name = arg[2:].partition("=")[0]
        top = name.split(".")[0].replace("-", "_")  # a section's keys are checked by load_config
        if name in OPTIONS or top in keys:
            continue
        choices = [*OPTIONS, *(k.replace("_", "-") for k in keys)]
        close = difflib.get_close_matches(name.replace("_", "-"), choices, n=1)
        hint = (f"; did you mean '--{close[0]}'?" if close else
                f"; the options are {', '.join('--' + o for o in OPTIONS)}, and --KEY for any config key "
                f"('rlxf {' '.join(words)} --help' lists them)")
        raise RlxfError(f"unknown option '--{name}'{hint}")


def _split_args(args: list[str]) -> tuple[str | None, list[str], set[str]]:
    """``--config F``, ``key=value`` overrides, ``--key value`` / ``--flag`` (= ``key=true``).

    ``--print-config`` and ``--verbose`` are the CLI's own flags.
    """
    config_path, overrides, flags = None, [], set()
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if name in ("print-config", "verbose"):
                flags.add(name)
            elif not eq and i + 1 < len(args) and not args[i + 1].startswith("--") and "=" not in args[i + 1]:
                value, i = args[i + 1], i + 1
                eq = "="
            if name == "config":
                if not eq:
                    raise RlxfError("--config needs a file: --config FILE.yaml")
                config_path = value
            elif name not in ("print-config", "verbose"):
                overrides.append(f"{name.replace('-', '_')}={value if eq else 'true'}")
        elif "=" in arg:
            overrides.append(arg)
        else:
            raise RlxfError(f"unexpected argument '{arg}': use key=value, --key value or --config FILE.yaml")
        i += 1
    return config_path, overrides, flags


def _usage() -> str:
    lines = ["usage: rlxf <command> [--config FILE.yaml] [key=value ...]", "", "commands:"]
    for words, module_name in COMMANDS.items():
        lines.append(f"  {' '.join(words):<22} {_summary(module_name)}")
    lines += ["", "'rlxf <command> --help' lists the command's config keys."]
    return "\n".join(lines)


def _summary(module_name: str) -> str:
    """The module docstring's first line, read without importing the module (imports are heavy)."""
    import ast
    from importlib.util import find_spec

    spec = find_spec(module_name)
    if spec is None or spec.origin is None:
        return ""
    with open(spec.origin) as fh:
        doc = ast.get_docstring(ast.parse(fh.read())) or ""
    return doc.splitlines()[0] if doc else ""


if __name__ == "__main__":
    sys.exit(main())
