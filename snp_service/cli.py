"""`snp-service`: validate, schema, run, models, synth.

User errors (a bad job file, a missing dataset, an unreachable store) print one paragraph and
exit with code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import yaml

from snp_service.errors import SnpError

# Ray on this kind of machine binds a non-loopback address unless told otherwise.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def cmd_validate(args: argparse.Namespace) -> int:
    from snp_service.spec import load_spec

    spec = load_spec(args.job)
    print(f"# {args.job}: valid; job id {spec.job_id()}; measurement points: {', '.join(spec.selected_points())}")
    print(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from snp_service.spec import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from snp_service import pipeline
    from snp_service.spec import load_spec

    spec = load_spec(args.job)
    outcome = pipeline.run(spec, progress=lambda m: print(f"[snp-service] {m}", flush=True))
    print(f"results: {outcome.uri}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from snp_service.models import list_models, measurement_points, model_config

    for name in list_models():
        cfg = model_config(name)
        pts = measurement_points(cfg, getattr(cfg, "img_size", 32))
        kinds = {}
        for p in pts.values():
            kinds[p.kind] = kinds.get(p.kind, 0) + 1
        print(f"{name:18s} {len(pts):3d} points ({', '.join(f'{v} {k}' for k, v in kinds.items())})")
        if args.points:
            for p in pts.values():
                heads = f", {p.heads} heads" if p.heads else ""
                print(f"    {p.name:24s} {p.kind:5s} {p.nodes} nodes x {p.positions} positions{heads}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from pathlib import Path

    from snp_service import synthetic

    write = synthetic.write_cifar100 if args.layout == "cifar100" else synthetic.write_flowers102
    base = write(Path(args.root), args.classes, args.train_per_class, args.test_per_class, seed=args.seed)
    print(f"wrote {args.layout} layout at {base}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="snp-service", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("validate", help="check a job file and print the normalised spec")
    s.add_argument("job")
    s.set_defaults(fn=cmd_validate)
    s = sub.add_parser("schema", help="print the job spec's JSON schema")
    s.set_defaults(fn=cmd_schema)
    s = sub.add_parser("run", help="run a job (stages already finished for its job id are reused)")
    s.add_argument("job")
    s.set_defaults(fn=cmd_run)
    s = sub.add_parser("models", help="list registered models and their measurement points")
    s.add_argument("--points", action="store_true")
    s.set_defaults(fn=cmd_models)
    s = sub.add_parser("synth", help="write a synthetic dataset in an official layout")
    s.add_argument("layout", choices=["cifar100", "flowers102"])
    s.add_argument("root")
    s.add_argument("--classes", type=int, default=10)
    s.add_argument("--train-per-class", type=int, default=100)
    s.add_argument("--test-per-class", type=int, default=20)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_synth)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except SnpError as e:
        print(f"snp-service: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("snp-service: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
