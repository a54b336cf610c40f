"""`snp-service`: validate, schema, run, sweep, submit, status, logs, stop, report, results, verify, compare, heads-study, models, synth.

User errors (a bad job file, a missing dataset, an unreachable store) print one paragraph and
exit with code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys

import yaml

from snp_service import console
from snp_service.errors import CheckpointError, DamagedError, DatasetError, SnpError, SpecError, StoreError
from snp_service.interrupts import end_abandoned
from snp_service.models.registry import list_models, measurement_points, model_config
from snp_service.provenance import code_version
from snp_service.spec import StorageSpec, SyntheticSpec, is_valid_name, json_schema, load_spec
from snp_service.store import TABLES, Store
from snp_service.tables import SHOWN

LOG = logging.getLogger("snp_service")  # progress lines: `[snp-service] ...` on stdout (--quiet, --verbose)


def configure_logging(quiet: bool, verbose: bool) -> None:
    """Progress to stdout as `[snp-service] message`; --quiet keeps warnings and errors only (and no
    progress bars); --verbose also shows Ray Train's per-report and checkpoint lines, hidden by default."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[snp-service] %(message)s"))
    LOG.handlers[:] = [handler]
    LOG.propagate = False
    LOG.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    os.environ["SNP_QUIET"] = "1" if quiet else "0"  # Ray workers started from here inherit these
    os.environ["SNP_VERBOSE"] = "1" if verbose else "0"
    console.configure(quiet)  # bars only on a terminal; plain text from Ray into a file


# The commands import the Ray, torch and storage layers inside their functions: `snp-service
# validate` and `--help` must stay fast and work without them being loaded.


def cmd_validate(args: argparse.Namespace) -> int:
    spec = load_spec(args.job, args.set, args.store)
    print(f"# {args.job}: valid; job id {spec.job_id()}; measurement points: {', '.join(spec.selected_points())}")
    est = spec.feature_estimate()
    kb = 1024
    line = (f"# features (float16): {est['largest_point_bytes_per_image'] / kb:.0f} KB per image at the largest point "
            f"({est['largest_point']}), {est['all_points_bytes_per_image'] / kb:.0f} KB at all selected points")
    if "images" in est:
        line += (f"; at {est['images']:,} images an SNP actor holds at most {est['actor_peak_gb']:.2f} GB at once "
                 f"(disk, or GPU memory; compute.feature_budget_gb {spec.compute.feature_budget_gb:g}) instead of "
                 f"{est['all_points_gb']:.2f} GB for all points")
    print(line)
    stages = spec.stage_names()
    print(f"# stages: {', '.join(stages)}" + (f" (load: the network from {spec.model.weights}, no training)"
                                               if "load" in stages else ""))
    if spec.compare is not None:
        for label, seed, v in spec.compare_jobs():
            print(f"# compare run: {label} seed {seed}: {v.model.name}, job id {v.job_id()}")
    if spec.heads_study is not None:
        for v in spec.heads_jobs():
            print(f"# heads-study run: {v.model.num_heads} head(s), job id {v.job_id()}")
    print(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from snp_service import pipeline, studies  # local: see the note at the top

    spec = load_spec(args.job, args.set, args.store)
    progress = LOG.info
    if spec.compare is not None:
        try:
            study = studies.run_comparison(spec, progress)
        except (CheckpointError, DatasetError, StoreError) as e:
            raise type(e)(f"{args.job}: {e}") from None
        _print_study(study.tables)
        print(f"comparison: {study.uri}/report/report.html")
        return 0
    if spec.sweep is not None:  # a sweep file runs its sweep (so `submit` runs it as one Ray job)
        return cmd_sweep(args)
    if spec.heads_study is not None:  # likewise a heads-study file
        return cmd_heads_study(args)
    if getattr(args, "fresh", False):
        LOG.info("--fresh: only a sweep keeps state of its own (its Tune experiment); this job's finished stages "
                 "are its results and are reused")
    try:
        outcome = pipeline.run(spec, progress=progress)
    except (CheckpointError, DatasetError, StoreError) as e:
        raise type(e)(f"{args.job}: {e}") from None
    print(f"results: {outcome.uri}")
    return 0


def _print_study(tables) -> None:
    import polars as pl

    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=250, float_precision=3):
        print(tables["accuracy_summary"])
        print(tables["layers"].select("model", "point", "kind", "relative_depth", "seeds", "readout_accuracy",
                                      "mean_cluster_size", "mean_noise", "snr", "snr_sd", "frac_no_cluster"))
        print(tables["trends"])


def cmd_compare(args: argparse.Namespace) -> int:
    from snp_service import studies  # local: see the note at the top

    if not is_valid_name(args.name):  # the rule for job names: it names a folder
        raise SpecError(f"--name {args.name!r}: use letters, digits, _ . - (no path separators)")
    store = _store(args.store)
    runs = studies.runs_from_store(store, args.job_ids)
    study = studies.write_comparison(store, args.name, runs, progress=LOG.info)
    _print_study(study.tables)
    return 0


def _store(root: str):
    from pydantic import ValidationError

    endpoint = os.environ.get("SNP_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
    try:
        storage = StorageSpec(root=root, endpoint=endpoint if root.startswith("s3://") else None)
    except ValidationError as e:
        raise SpecError(f"--store {root!r}: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    store = Store.from_spec(storage)
    if store.remote:  # a missing bucket is an error, not an empty store ("no jobs" hid a mistyped bucket)
        store.check()
    return store


def _check_job_id(job_id: str) -> str:
    """Job ids name folders and travel in URLs (status, logs): the job-name rule, nothing else."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,120}", job_id) or ".." in job_id:
        raise SpecError(f"{job_id!r} is not a job id (letters, digits, _ . - only)")
    return job_id


def _job(store, job_id: str):
    _check_job_id(job_id)
    if job_id not in store.job_ids():
        raise StoreError(f"no job {job_id!r} in {store.uri}; `snp-service results --store {store.uri}` lists them")
    return store.job(job_id)


def cmd_report(args: argparse.Namespace) -> int:
    from snp_service.report import build  # local: see the note at the top

    job = _job(_store(args.store), args.job_id)
    build(job, progress=LOG.info)
    job.refresh_manifest("report/")  # what it rewrote, re-listed: verify and results still read the job as intact
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    import polars as pl

    store = _store(args.store)
    if args.job_id is None:
        rows = []
        for jid in store.job_ids():
            job = store.job(jid)
            m = job.manifest()
            ev = job.stage_result("evaluate") or {}
            status = (m or {}).get("status", "incomplete")
            try:  # one damaged job is listed as damaged; it never takes the listing down
                spec = job.spec_json()
            except DamagedError:
                spec, status = {}, "damaged"
            rows.append({"job_id": jid, "model": (spec.get("model") or {}).get("name"),
                         "dataset": (spec.get("dataset") or {}).get("name"),
                         "status": status, "accuracy": ev.get("accuracy"),
                         "date": (m or {}).get("written")})
        if not rows:
            print(f"no jobs in {store.uri}")
            return 0
        with pl.Config(tbl_rows=-1, tbl_width_chars=200, fmt_str_lengths=60):
            print(pl.DataFrame(rows))
        return 0
    job = _job(store, args.job_id)
    damage = job.verify()
    if damage:
        print(f"snp-service: warning: job {args.job_id} is damaged ({'; '.join(damage[:3])}"
              f"{' ...' if len(damage) > 3 else ''}); `snp-service run` of its job file recomputes it",
              file=sys.stderr)
    if not job.has(args.table):
        raise StoreError(f"job {args.job_id} has no {args.table} table ({TABLES[args.table]}); its stage did not run")
    try:
        df = job.table(args.table)
    except StoreError:
        raise
    except Exception as e:  # a damaged file: polars / pyarrow say so in their own words
        raise StoreError(f"job {args.job_id}: its {args.table} table ({TABLES[args.table]}) cannot be read "
                         f"({type(e).__name__}); the job is damaged: `snp-service verify` lists what") from None
    columns = (df.columns if args.columns == "all" else args.columns.split(",") if args.columns
               else [c for c in DEFAULT_COLUMNS.get(args.table, df.columns) if c in df.columns])
    unknown = [c for c in columns if c not in df.columns]
    if unknown:
        raise StoreError(f"table {args.table} has no column(s) {', '.join(unknown)}; it has {', '.join(df.columns)}")
    df = df.select(columns)
    if args.markdown:
        print(markdown(df))
        return 1 if damage else 0
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=250, float_precision=3):
        print(df)
    return 1 if damage else 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Every job of a store against its manifest (sizes and SHA-256 of every artefact)."""
    store = _store(args.store)
    damaged, jobs = 0, args.job_ids or store.job_ids()
    if not jobs:
        print(f"no jobs in {store.uri}")
    for jid in jobs:
        job = _job(store, jid)
        damage = job.verify()  # without a manifest: each finished stage's outputs against its marker
        damaged += bool(damage)
        state = "DAMAGED: " + "; ".join(damage) if damage else "intact"
        if job.manifest() is None:
            state = f"incomplete (no manifest: a run in progress, or one that failed); finished stages {state}"
        print(f"{jid}: {state}")
    return 1 if damaged else 0


# the columns `results --table` shows unless --columns says otherwise (`--columns all`: every one)
DEFAULT_COLUMNS = SHOWN


def markdown(df) -> str:
    """A Markdown table that never wraps: one line per row, floats to 3 decimals."""
    def cell(v) -> str:
        if isinstance(v, float):
            return "n/a" if v != v else f"{v:.3f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.iter_rows()]
    return "\n".join(lines)


def cmd_heads_study(args: argparse.Namespace) -> int:
    import polars as pl

    from snp_service.studies import run_heads_study  # local: see the note at the top

    spec = load_spec(args.job, args.set, args.store)
    heads = getattr(args, "heads", None) or (None if spec.heads_study is not None else [1, 2, 4, 8])
    table = run_heads_study(spec, heads, progress=LOG.info)
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=250, float_precision=3):
        print(table.drop("job_id", "reason"))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from snp_service import submit  # local: see the note at the top

    spec = load_spec(args.job, args.set, args.store)  # a bad file is refused here, before anything is uploaded
    sid = submit.submit(spec, Path(args.job), args.address, pass_credentials=args.pass_credentials,
                        sets=args.set, store=args.store, allow_local_store=args.allow_local_store, fresh=args.fresh)
    print(f"submitted {sid}; follow with `snp-service logs {spec.job_id()} --follow`, then {results_hint(spec)}",
          flush=True)
    if args.wait:  # the logs as they come, for as long as the job runs
        final = submit.follow(sid, args.address, write=lambda chunk: print(chunk, end="", flush=True))
        print(f"{sid}: {final}")
        return 0 if final == "SUCCEEDED" else 1
    return 0


def results_hint(spec) -> str:
    """The command that shows a submitted job's results, as this shell would run it: its store named
    (the default `results` is rarely where a cluster writes), the endpoint where the store needs one."""
    import shlex

    store = f" --store {shlex.quote(spec.storage.root)}"
    endpoint = spec.storage.endpoint
    env = (f"SNP_S3_ENDPOINT={shlex.quote(endpoint)} " if endpoint and endpoint != os.environ.get("SNP_S3_ENDPOINT")
           else "")
    if spec.sweep is not None or spec.compare is not None or spec.heads_study is not None:
        return f"its member jobs with `{env}snp-service results{store}` (the study's table under _studies/)"
    return f"results with `{env}snp-service results {spec.job_id()}{store}`"


def cmd_stop(args: argparse.Namespace) -> int:
    from snp_service import submit  # local: see the note at the top

    print(submit.stop(_check_job_id(args.job_id), args.address))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from snp_service import submit  # local: see the note at the top

    st = submit.status(_check_job_id(args.job_id), args.address)
    print(f"{st['job_id']}: {st['status']}" + (f" ({st['message']})" if st["message"] else ""))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from snp_service import submit  # local: see the note at the top

    if args.follow:
        final = submit.follow(_check_job_id(args.job_id), args.address,
                              write=lambda chunk: print(chunk, end="", flush=True))
        return 0 if final == "SUCCEEDED" else 1
    print(submit.logs(_check_job_id(args.job_id), args.address, args.attempt), end="")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    import polars as pl

    from snp_service.sweep import run_sweep  # local: see the note at the top

    table = run_sweep(load_spec(args.job, args.set, args.store), progress=LOG.info, fresh=getattr(args, "fresh", False))
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=250, float_precision=3):
        print(table.drop("job_id", "error"))
    failed = table.filter(pl.col("status").is_in(["failed", "incomplete"]))
    by_error: dict = {}  # one line per distinct error (a cluster that cannot place any trial: one line)
    for row in failed.iter_rows(named=True):
        by_error.setdefault(row["error"] or f"{row['status']} (see its log)", []).append(row["job_id"])
    for error, ids in by_error.items():
        print(f"snp-service: {len(ids)} trial(s) failed ({', '.join(ids)}): {error}", file=sys.stderr)
    return 1 if failed.height else 0


def cmd_models(args: argparse.Namespace) -> int:
    names = list_models()
    if args.name:
        if args.name not in names:
            raise SpecError(f"unknown model {args.name!r}; `snp-service models` lists them")
        names = [args.name]
    for name in names:
        cfg = model_config(name)
        pts = measurement_points(cfg, cfg.default_input_size)
        kinds = {}
        for p in pts.values():
            kinds[p.kind] = kinds.get(p.kind, 0) + 1
        print(f"{name:18s} {len(pts):3d} points ({', '.join(f'{v} {k}' for k, v in kinds.items())})")
        if args.points or args.name:
            for p in pts.values():
                heads = f", {p.heads} heads" if p.heads else ""
                print(f"    {p.name:24s} {p.kind:5s} {p.nodes} nodes x {p.positions} positions{heads}")
    return 0


SYNTH_FLAGS = {"num_classes": "--classes", "train_per_class": "--train-per-class",
               "test_per_class": "--test-per-class", "seed": "--seed"}


def synth_counts(args: argparse.Namespace) -> SyntheticSpec:
    """`synth`'s counts, checked by the rules of a job file's dataset.synthetic section (at least 2
    classes, 1 image per class and split, bounded), so every dataset it writes is one a job accepts."""
    from pydantic import ValidationError

    try:
        return SyntheticSpec(**{field: getattr(args, flag[2:].replace("-", "_"))
                                for field, flag in SYNTH_FLAGS.items()})
    except ValidationError as e:
        raise SpecError("synth: " + "; ".join(f"{SYNTH_FLAGS[str(err['loc'][0])]} {err['input']!r}: {err['msg']}"
                                              for err in e.errors())) from None


def cmd_synth(args: argparse.Namespace) -> int:
    from pathlib import Path

    from snp_service import synthetic  # local: see the note at the top

    counts = synth_counts(args)
    write = synthetic.write_cifar100 if args.layout == "cifar100" else synthetic.write_flowers102
    base = write(Path(args.root), counts.num_classes, counts.train_per_class, counts.test_per_class, seed=counts.seed)
    print(f"wrote {args.layout} layout at {base}")
    return 0


def _job_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("job", help="the job's YAML file")
    s.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="override a field of the job file (repeatable), e.g. --set train.epochs=3; validated like "
                        "the file, and the job id follows from the result")
    s.add_argument("--store", help="results root for this run (local path or s3://bucket/prefix), instead of the "
                                   "job file's storage.root")


def _fresh_arg(s: argparse.ArgumentParser) -> None:
    s.add_argument("--fresh", action="store_true",
                   help="a sweep: start a new Tune experiment instead of resuming the earlier one (finished trial "
                        "jobs are still reused: same id, same results); other jobs keep no state to discard")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="snp-service", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"snp-service {code_version()}")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress lines or bars")
    p.add_argument("-v", "--verbose", action="store_true", help="also Ray Train's per-report and checkpoint lines")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_job_commands, _stored_commands, _study_commands, _tool_commands):  # the order of --help
        add(sub)
    return p


def _job_commands(sub) -> None:
    """One job: checked, run here, or submitted to a cluster and followed there."""
    s = sub.add_parser("validate", help="check a job file and print the normalised spec, its job id, stages and "
                       "the feature estimate")
    _job_args(s)
    s.set_defaults(fn=cmd_validate)
    s = sub.add_parser("schema", help="print the job spec's JSON schema")
    s.set_defaults(fn=cmd_schema)
    s = sub.add_parser("run", help="run a job here (stages already finished for its job id are reused)")
    _job_args(s)
    _fresh_arg(s)
    s.set_defaults(fn=cmd_run)
    s = sub.add_parser("submit", help="submit a job YAML to a Ray cluster (ray job submit; id = job id)")
    _job_args(s)
    s.add_argument("--address", help="the cluster's job API (dashboard) address; default $RAY_API_SERVER_ADDRESS, then an http(s) "
                   "$RAY_ADDRESS, then http://127.0.0.1:8265")
    s.add_argument("--wait", action="store_true", help="stream the job's logs until it ends (no time limit); exit 0 "
                   "only if it succeeded")
    s.add_argument("--allow-local-store", action="store_true",
                   help="accept a local storage.root: the results then stay on the cluster's head")
    s.add_argument("--pass-credentials", action="store_true",
                   help="send AWS_* from this shell in the job's runtime_env (visible in Ray's job metadata)")
    _fresh_arg(s)
    s.set_defaults(fn=cmd_submit)
    for name, fn, text in (("status", cmd_status, "a submitted job's status (its latest attempt)"),
                           ("logs", cmd_logs, "a submitted job's logs (its latest attempt)"),
                           ("stop", cmd_stop, "stop a submitted job (its latest attempt)")):
        s = sub.add_parser(name, help=text)
        s.add_argument("job_id", help="the job id (or one attempt's submission id)")
        s.add_argument("--address", help="the cluster's job API address (as for submit)")
        if name == "logs":
            s.add_argument("--follow", action="store_true", help="stream the logs until the job ends")
            s.add_argument("--attempt", type=int, help="an earlier attempt's logs (1: the first submission)")
        s.set_defaults(fn=fn)


def _stored_commands(sub) -> None:
    """Finished jobs in a store: their report, tables and integrity."""
    s = sub.add_parser("report", help="(re)build a job's report.html from its stored results")
    s.add_argument("job_id")
    s.add_argument("--store", default="results", help="results root (local path or s3://bucket/prefix)")
    s.set_defaults(fn=cmd_report)
    s = sub.add_parser("results", help="list jobs in a store, or print one job's table")
    s.add_argument("job_id", nargs="?")
    s.add_argument("--table", choices=sorted(TABLES), default="layers")
    s.add_argument("--columns", help="comma-separated columns to show, or all (default: a readable set for layers, "
                                     "heads and andc; every column for the other tables)")
    s.add_argument("--markdown", action="store_true", help="print a Markdown table (one line per row, never wrapped)")
    s.add_argument("--store", default="results", help="results root (local path or s3://bucket/prefix)")
    s.set_defaults(fn=cmd_results)
    s = sub.add_parser("verify", help="check every artefact of the store's jobs (or the named ones) against their "
                       "manifests; exit 1 when any is damaged")
    s.add_argument("job_ids", nargs="*", metavar="JOB_ID")
    s.add_argument("--store", default="results", help="results root (local path or s3://bucket/prefix)")
    s.set_defaults(fn=cmd_verify)


def _study_commands(sub) -> None:
    """Several jobs as one: a sweep, a head-count study, a comparison of finished jobs."""
    s = sub.add_parser("sweep", help="Ray Tune grid over the job's sweep: section (heads, threshold, lr)")
    _job_args(s)
    _fresh_arg(s)
    s.set_defaults(fn=cmd_sweep)
    s = sub.add_parser("heads-study", help="run a job at several head counts (width fixed) and compare the heads")
    _job_args(s)
    s.add_argument("--heads", type=int, nargs="+", default=None,
                   help="head counts (default: the file's heads_study.num_heads, else 1 2 4 8)")
    s.set_defaults(fn=cmd_heads_study)
    s = sub.add_parser("compare", help="compare finished jobs (e.g. a CNN and a CCT, several seeds) along "
                       "relative depth: one table, one figure, one report")
    s.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    s.add_argument("--store", default="results", help="results root (local path or s3://bucket/prefix)")
    s.add_argument("--name", default="jobs", help="name of the comparison (its results go to _studies/NAME-compare-*)")
    s.set_defaults(fn=cmd_compare)


def _tool_commands(sub) -> None:
    """The registered models and synthetic data."""
    s = sub.add_parser("models", help="list registered models (CCT, VGG, torchvision) and their measurement points")
    s.add_argument("name", nargs="?", help="one model: its measurement points (module path, kind, size)")
    s.add_argument("--points", action="store_true", help="every model's measurement points")
    s.set_defaults(fn=cmd_models)
    s = sub.add_parser("synth", help="write a synthetic dataset in an official layout")
    s.add_argument("layout", choices=["cifar100", "flowers102"])
    s.add_argument("root")
    s.add_argument("--classes", type=int, default=10)
    s.add_argument("--train-per-class", type=int, default=100)
    s.add_argument("--test-per-class", type=int, default=20)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_synth)


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that every `finally` and context manager runs (temporary
    files removed, Ray workers stopped) before the process exits with 143."""


_TERMINATED: list[int] = []  # set by the SIGTERM handler: a library may re-raise its exception as another


def _terminate(signum, frame):
    _TERMINATED.append(signum)
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.quiet, args.verbose)
    previous = signal.signal(signal.SIGTERM, _terminate) if args.fn in LONG_COMMANDS else None
    try:
        return args.fn(args)
    except SnpError as e:
        print(f"snp-service: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. piped into head
        return 0
    except KeyboardInterrupt:
        code, line = ((143, "snp-service: terminated (SIGTERM); finished stages are kept: run the same job again "
                            "to resume") if _TERMINATED else
                      (130, "snp-service: interrupted; finished stages are kept: run the same job again to resume"))
        if argv is None:  # run as the program: the process ends here
            end_interrupted_program(line, code)
        end_abandoned()  # helpers a stopped study member left waiting on Ray
        print(line, file=sys.stderr)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


LONG_COMMANDS = {cmd_run, cmd_sweep, cmd_heads_study, cmd_submit, cmd_logs}


def end_interrupted_program(line: str, code: int) -> None:
    """How the program ends after SIGINT / SIGTERM, once the run has unwound (every `finally` ran: a
    heads study's members stopped, leases released, captured features removed): Ray is shut down
    (it stops what it runs for this driver), the line is printed last, and the process leaves with
    `os._exit(code)`, without the interpreter's finalisation: after an interrupted heads study that
    finalisation crashed in its last garbage collection (SIGSEGV on a freed object, seen in a core
    dump; exit -6 instead of 143; not pinned down further), and nothing is left for it to do here.
    Never returns."""
    try:
        end_abandoned()
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
    except BaseException:  # noqa: BLE001 - a second interrupt while shutting down: leave anyway
        pass
    print(line, file=sys.stderr)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
