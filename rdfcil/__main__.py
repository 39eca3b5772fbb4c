"""Command line: ``python -m rdfcil run|list|bench-accuracy|bench-speed|check ...``.

Any config key can be given as ``--key value`` (``--tasks 5``, ``--lr-incremental 0.01``);
``--config file.yaml`` reads a file first; ``--preset quick|paper`` picks a budget.
``run --help`` and ``list`` show every config key with its meaning, unit and published value.
Errors print one line (``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from .config import (ALIASES, PRESETS, SWITCHES, canonical_key, dataset_names, key_lines, method_names,
                     resolve)
from .errors import RdfcilError


def split_overrides(tokens: list[str]) -> dict:
    """``['--tasks', '5', '--no-progress']`` -> ``{'num_tasks': '5', 'progress': 'false'}``."""
    overrides, i = {}, 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise RdfcilError(f"unexpected argument '{token}'; options are written --key value")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif key.startswith("no-") and canonical_key(key[3:]) in SWITCHES:
            key, value = key[3:], "false"
            i += 1
        else:
            if i + 1 >= len(tokens):
                raise RdfcilError(f"option --{key} needs a value")
            value = tokens[i + 1]
            i += 2
        overrides[canonical_key(key)] = value
    return overrides


def command_list() -> None:
    from .data import SPECS
    print("datasets:")
    for name, s in SPECS.items():
        print(f"  {name:17s} {s.num_classes:4d} classes, {s.channels}x{s.image_size}x{s.image_size}, "
              f"default preset {s.default_preset}")
    print("methods:  " + ", ".join(method_names()))
    print("presets:  " + ", ".join(PRESETS))
    print("config keys: --key default [unit; published value], then its meaning:")
    print("\n".join(key_lines()))
    print("aliases:  " + ", ".join(f"--{a} = --{b.replace('_', '-')}" for a, b in ALIASES.items()))


def close_process_group() -> None:
    """Under torchrun, leave the process group before the interpreter exits: left to teardown,
    gloo's threads can abort a finished process ("terminate called without an active
    exception", SIGABRT)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def command_run(args, extra) -> None:
    from .engine import run
    config = resolve(split_overrides(extra), args.config)
    try:
        results = run(config, resume=not args.no_resume, force=args.force)
    finally:
        close_process_group()
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return
    print(f"{results.method} on {results.dataset}, {results.num_tasks} tasks, seed {results.seed}: "
          f"final {results.final_accuracy:.2f} %, average incremental "
          f"{results.average_incremental_accuracy:.2f} %  ({results.config['out']})")


def command_bench_accuracy(args, extra) -> None:
    from .bench import bench_accuracy
    from .paper import check_protocol
    check_protocol(args.protocol)
    overrides = split_overrides(extra)
    overrides.setdefault("preset", args.preset)
    cold = "-cold-start" if args.protocol == "cold-start" else ""
    out = args.out or f"runs/bench-accuracy/{args.dataset}-{args.preset}{cold}"
    methods = args.methods or list(method_names())
    for m in methods:
        if m not in method_names():
            raise RdfcilError(f"unknown method '{m}'; valid methods: {', '.join(method_names())}")
    table, paths = bench_accuracy(args.dataset, args.seeds, out, methods, overrides, args.force, args.jobs,
                                  args.protocol)
    print(table)
    print("written: " + ", ".join(str(p) for p in paths.values()))


def command_bench_speed(args, extra) -> None:
    from .speed import bench_speed
    bench_speed(args.dataset, split_overrides(extra), args.out, args.steps, args.workers, args.jobs, args.pick_precision)


def command_check(args, extra) -> int:
    if extra:
        raise RdfcilError(f"check takes --device, --budget and --out, got {' '.join(extra)}")
    from .check import command
    return command(args.device, args.budget, args.out)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m rdfcil", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True)
    keys = "config keys (--key value; --no-<key> for a switch):\n" + "\n".join(key_lines(90))
    r = sub.add_parser("run", help="run one configuration (any config key as --key value)", epilog=keys,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--config", help="a YAML file of config keys")
    r.add_argument("--force", action="store_true", help="retrain even if the run folder holds a finished run")
    r.add_argument("--no-resume", action="store_true", help="start over instead of continuing")
    r.add_argument("--resume", action="store_true", help="continue after the last finished task (default)")
    sub.add_parser("list", help="datasets, methods, presets and config keys")
    b = sub.add_parser("bench-accuracy", help="every method x seed on a dataset; a mean +- std table")
    b.add_argument("--dataset", default="digits", choices=dataset_names())
    b.add_argument("--preset", default="quick", choices=PRESETS)
    b.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    b.add_argument("--methods", nargs="+")
    b.add_argument("--out")
    b.add_argument("--force", action="store_true")
    b.add_argument("--protocol", default="half-base",
                   help="half-base (the runs as configured, the default) or cold-start (the dataset's cold-start "
                        "plan: equal tasks, 10 and 20 on cifar100 with the published comparison's backbone and "
                        "schedule, 5 on digits and fashion-mnist)")
    b.add_argument("--jobs", type=int, help="runs at a time per device, each its own process (default: on the "
                                            "CPU as many as the cores hold at each run's thread count, --threads "
                                            "or 1; 4 per GPU; 0: one after another in this process); the numbers "
                                            "do not depend on it")
    s = sub.add_parser("bench-speed", help="throughput of each phase against the bare model and a DataLoader")
    s.add_argument("--dataset", default="fashion-mnist", choices=dataset_names())
    s.add_argument("--steps", type=int, default=10, help="timed steps per measure")
    s.add_argument("--workers", type=int, default=2, help="DataLoader workers of the conventional pipeline")
    s.add_argument("--out")
    s.add_argument("--pick-precision", action="store_true",
                   help="also time every phase in fp32 and bf16 and print the faster of each (phase_precision)")
    s.add_argument("--jobs", type=int, help="runs at a time for the projected whole table (default: 1 on the "
                                            "CPU, 4 per GPU)")
    c = sub.add_parser("check", help="every method, resume, bench-speed and the reproduce notebook on a device, "
                                     "on stand-in data; one pass/fail table")
    c.add_argument("--device", default="auto", help="cuda, cuda:1, cpu or auto (default)")
    c.add_argument("--budget", choices=("small", "full"), help="default: full on CUDA, small elsewhere")
    c.add_argument("--out", help="keep the stand-ins, runs and check.json here (default: a temporary folder)")
    return top


def main(argv=None) -> int:
    # Ctrl-C stops a run even when the shell started it with SIGINT ignored (background jobs).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args, extra = parser().parse_known_args(argv)
    try:
        if args.command == "list":
            if extra:
                raise RdfcilError(f"list takes no options, got {' '.join(extra)}")
            command_list()
        elif args.command == "run":
            command_run(args, extra)
        elif args.command == "bench-accuracy":
            command_bench_accuracy(args, extra)
        elif args.command == "bench-speed":
            command_bench_speed(args, extra)
        elif args.command == "check":
            return command_check(args, extra)
    except RdfcilError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the finished tasks are saved in the run folder; run the same command "
              "again to resume after the last finished task", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
