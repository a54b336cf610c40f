"""ANDC vs random vs magnitude at equal kept fraction, and structural pruning's latency vs MACs.

Reads a finished job (default: jobs/cifar10_real.yaml's job in ./results), then measures the
trained network and its SNP-guided and magnitude-pruned versions side by side in one process,
interleaving the models repeat by repeat so drift in machine load hits all three alike.
Target (issue 4): latency falls at least 0.8x as much as MACs at batch 128 on CPU, i.e.
(1 - latency ratio) >= 0.8 (1 - MACs ratio). Appends a dated section to bench/RESULTS.md.

    python bench/bench_prune.py [--job jobs/cifar10_real.yaml] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import date
from pathlib import Path

import polars as pl
import torch

from snp_service.pipeline import load_trained_model, structural_plans
from snp_service.provenance import hardware
from snp_service.spec import load_spec
from snp_service.store import Store
from snp_service.structural import count_macs, count_params, prune_cct


def interleaved_latency(models: dict, x: torch.Tensor, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.no_grad():
        for m in models.values():
            m.eval()
            m(x)
        for _ in range(repeats):
            for name, m in models.items():
                t0 = time.perf_counter()
                m(x)
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", default="jobs/cifar10_real.yaml")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args()
    spec = load_spec(args.job)
    job = Store.from_spec(spec.storage).job(spec.job_id())
    if job.stage_result("prune") is None:
        raise SystemExit(f"job {job.job_id} has no finished prune stage; run `snp-service run {args.job}` first")
    classes = job.read_json("data/classes.json")
    base = load_trained_model(spec, job, len(classes))
    models = {"unpruned": base}
    for method, (keep_ff, keep_heads) in structural_plans(spec, job, base).items():
        models[method] = prune_cct(base, keep_ff, keep_heads)
    size = spec.dataset.image_size
    macs = {k: count_macs(m, torch.randn(1, 3, size, size)) for k, m in models.items()}
    params = {k: count_params(m) for k, m in models.items()}
    lat = {b: interleaved_latency(models, torch.randn(b, 3, size, size), args.repeats if b > 1 else 5 * args.repeats)
           for b in (1, 128)}
    andc = job.read_table("prune/andc.parquet")
    structural = job.table("structural")
    acc = {r["method"]: r for r in structural.iter_rows(named=True)}
    hw = hardware()
    lines = [f"\n## Pruning on the real CIFAR-10 model ({date.today().isoformat()})\n",
             f"Machine: {hw['cpu']}, {hw['cpu_count']} cores, torch {hw['torch']}, {torch.get_num_threads()} threads. "
             f"Command: `python bench/bench_prune.py --job {args.job} --repeats {args.repeats}` on job "
             f"`{job.job_id}` ({spec.model.name}, {spec.train.epochs} epochs, seed {spec.train.seed}); readout "
             f"{spec.analysis.readout}, threshold {spec.analysis.threshold if spec.pruning.threshold is None else spec.pruning.threshold}, fine-tune "
             f"{spec.pruning.finetune_epochs} epochs. Accuracies are the job's own (prune stage), on the "
             f"{len(classes)}-class test split.\n",
             "### ANDC vs baselines at equal kept connections per node (readout accuracy)\n",
             "| point | kept fraction | unpruned | ANDC | random | magnitude | ANDC ft | random ft | magnitude ft |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in andc["point"].unique(maintain_order=True):
        r = {x["method"]: x for x in andc.filter(pl.col("point") == p).iter_rows(named=True)}
        a = r["andc"]
        cells = [f"{r[m]['accuracy_pruned']:.3f}" if m in r else "" for m in ("andc", "random", "magnitude")]
        ft = [f"{r[m]['accuracy_finetuned']:.3f}" if m in r else "" for m in ("andc", "random", "magnitude")]
        lines.append(f"| {p} | {a['kept_fraction']:.3f} | {a['accuracy_full']:.3f} | " + " | ".join(cells + ft) + " |")
    lines += ["", f"### Structural pruning: {spec.pruning.structural_fraction:.0%} of FF units and heads removed per "
              "block (network accuracy from the prune stage)\n",
              "| model | params | MACs/image | latency b1 ms | latency b128 ms | MACs ratio | latency ratio b128 | "
              "latency fall / MACs fall | target >= 0.8 | accuracy | after fine-tune |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for k in models:
        mr, lr = macs[k] / macs["unpruned"], lat[128][k] / lat[128]["unpruned"]
        fall = (1 - lr) / (1 - mr) if mr < 1 else float("nan")
        ok = "" if k == "unpruned" else ("met" if fall >= 0.8 else "missed")
        ft = acc.get({"unpruned": "none"}.get(k, k), {}).get("accuracy_finetuned", float("nan"))
        lines.append(f"| {k} | {params[k]:,} | {macs[k]:,} | {lat[1][k]:.2f} | {lat[128][k]:.1f} | {mr:.3f} | {lr:.3f} | "
                     f"{'' if k == 'unpruned' else f'{fall:.2f}'} | {ok} | "
                     f"{acc.get({'unpruned': 'none'}.get(k, k), {}).get('accuracy', float('nan')):.4f} | {ft:.4f} |")
    with open(args.out, "a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
