"""The paper's network at full size on one GPU (issue 21): train cct_7_3x1_32 on the real CIFAR-10
archive with the CCT recipe for a fixed time, then run the service's whole analysis on the GPU
(all 22 measurement points, heads at the 7 MHA points, ANDC with random and magnitude baselines on a
held-out selection split, chance-level SNR), writing tables, a figure and timings to --out.

Needs torch, numpy, PIL, pandas (with pyarrow) and matplotlib: no Ray, pydantic, polars or scipy, so
it runs on a bare GPU machine beside the pure core of snp_service (snp, measure, heads, prune,
readout, models). The Ray shell is not used; the suite tests it on CPU.

    python -m bench.paper_gpu --smoke --out /tmp/paper-smoke        # here, on CPU: tiny data, 1 epoch
    python -m bench.paper_gpu --archive .local/cifar10-jpg.tar.gz --train-seconds 300 --out $OUT/paper

The data path is the service's (snp_service.devicedata, compute.data_on_device): the decoded uint8
images stay on the device, crop, flip and mixup/cutmix run there in batches (no DataLoader).
RandAugment is not applied (it has no batched device form here; the CCT recipe's other
augmentations are).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from torchvision.transforms import v2

from snp_service.devicedata import DeviceBatches
from snp_service.heads import analyse_heads
from snp_service.measure import cluster_point, measure_point, snp_accumulate
from snp_service.snp import point_line
from snp_service.models import create_model, measurement_points, model_config
from snp_service.optim import optimiser_step
from snp_service.prune import prune_point, selection_rows
from snp_service.readout import as_nodes_positions
from snp_service.clusters import CLUSTER_TIME_LIMIT_S
from snp_service.snp import normalise

MODEL = "cct_7_3x1_32"
MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


@dataclass
class Analysis:
    """The analysis settings (the fields snp_service.measure reads from the job spec's analysis)."""

    readout: str = "seqpool"
    readout_solver: str = "adam"
    readout_epochs: int = 20
    readout_pool_epochs: int = 2
    readout_lr: float = 1e-2
    threshold: float = 0.3
    normalise: str = "max"
    candidate_order: str = "diagonal"
    bootstrap: int = 1000
    confidence: float = 0.95
    fdr: float = 0.05
    cluster_time_limit_s: float = CLUSTER_TIME_LIMIT_S
    seed: int = 0


# ---------------------------------------------------------------- data: decode once, keep on the device


def _decode(item: tuple[bytes, int]) -> tuple[np.ndarray, int]:
    from PIL import Image

    data, label = item
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint8), label


def load_archive(path: Path, per_class: dict[str, int | None], workers: int = 8):
    """{split: (uint8 images (N, 3, 32, 32), int64 labels)} and the class names, from the image-folder
    archive (<root>/<split>/<class>/*.jpg); per_class caps each split (None: all)."""
    raw: dict[str, list] = {"train": [], "test": []}
    with tarfile.open(path) as tar:
        for m in tar:
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) < 3 or parts[-3] not in raw:
                continue
            raw[parts[-3]].append((parts[-2], m.name, tar.extractfile(m).read()))
    classes = sorted({c for c, _, _ in raw["train"]})
    out = {}
    with ProcessPoolExecutor(workers) as pool:
        for split, items in raw.items():
            items.sort(key=lambda t: t[1])
            cap, seen, keep = per_class[split], {}, []
            for c, _, data in items:
                if cap is None or seen.get(c, 0) < cap:
                    seen[c] = seen.get(c, 0) + 1
                    keep.append((data, classes.index(c)))
            decoded = list(pool.map(_decode, keep, chunksize=256))
            x = torch.from_numpy(np.stack([d for d, _ in decoded])).permute(0, 3, 1, 2).contiguous()
            out[split] = (x, torch.tensor([y for _, y in decoded], dtype=torch.long))
    return out, classes


def normalised(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - MEAN.to(x.device)) / STD.to(x.device)


# ---------------------------------------------------------------- training


def lr_at(step: int, total: int, warmup: int, base: float, floor: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * p))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, args, dev: torch.device, log) -> dict:
    """AdamW, linear warm-up then cosine, label smoothing, mixup/cutmix, bf16 autocast on the GPU;
    as many epochs as fit in args.train_seconds (measured on the first epoch), or args.epochs."""
    dtype = torch.bfloat16 if dev.type == "cuda" else None
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.06, fused=dev.type == "cuda")
    fwd = torch.compile(model) if args.compile else model
    # the service's own on-device path (snp_service.devicedata: the CIFAR normalisation, reflect-padded
    # crop, flip, on the device) and its batch mixer's ops (torchvision v2 MixUp / CutMix, CCT recipe alphas)
    batches = DeviceBatches(x, y, args.batch, dev, mean=tuple(MEAN.flatten().tolist()),
                            std=tuple(STD.flatten().tolist()), train=True, drop_last=True)
    mixer = v2.RandomChoice([v2.MixUp(alpha=0.8, num_classes=10), v2.CutMix(alpha=1.0, num_classes=10)])
    steps_per_epoch = len(batches)
    epochs, total, step, history = args.epochs or 1_000_000, None, 0, []
    t_start = time.perf_counter()
    epoch = 0
    while epoch < epochs:
        model.train()
        t0, seen = time.perf_counter(), 0
        batches.set_epoch_seed(epoch)
        for xb, yb in batches:
            xb, target = mixer(xb, yb)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total or steps_per_epoch * 50, steps_per_epoch, args.lr, 1e-5)
            with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = F.cross_entropy(fwd(xb).float(), target, label_smoothing=0.1)
            optimiser_step(loss, opt)
            step += 1
            seen += len(yb)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        history.append({"epoch": epoch, "loss": loss.item(), "seconds": dt, "images_per_s": seen / dt})
        if total is None:  # the schedule is fixed after the first (warm-up) epoch, from its duration
            epochs = args.epochs or max(1, int(args.train_seconds / dt))
            total = epochs * steps_per_epoch
        log(f"epoch {epoch + 1}/{epochs}: loss {history[-1]['loss']:.3f}, {seen / dt:.0f} img/s")
        epoch += 1
    return {"epochs": epochs, "history": history, "seconds": time.perf_counter() - t_start}


def bare_step_rate(batch: int, dev: torch.device, repeats: int) -> float:
    """Images/s of the bare model step (synthetic inputs already on the device, no data path)."""
    model = create_model(MODEL, 10, 32).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=dev.type == "cuda")
    xb = torch.randn(batch, 3, 32, 32, device=dev)
    yb = torch.randint(0, 10, (batch,), device=dev)
    dtype = torch.bfloat16 if dev.type == "cuda" else None

    def step():
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(model(xb).float(), yb, label_smoothing=0.1)
        optimiser_step(loss, opt)

    for _ in range(3):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - t0)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    hits = sum(int((model(normalised(x[i:i + batch])).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(y), batch))
    return hits / len(y)


# ---------------------------------------------------------------- analysis, one point at a time


@torch.no_grad()
def capture(model: nn.Module, point: str, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """One point's features (X, nodes, positions) in float16, kept on the device."""
    model.eval()
    out, got = [], {}
    h = model.point_modules()[point].register_forward_hook(lambda _m, _i, o: got.__setitem__("a", o))
    try:
        for i in range(0, len(x), batch):
            model(normalised(x[i:i + batch]))
            out.append(as_nodes_positions(got["a"]).half())
    finally:
        h.remove()
    return torch.cat(out)


def analyse(model: nn.Module, data: dict, args, dev: torch.device, log) -> dict:
    spec = Analysis(readout_epochs=args.readout_epochs, bootstrap=args.bootstrap)
    info = measurement_points(model_config(MODEL), 32)
    if args.points:
        info = {p: info[p] for p in args.points.split(",")}
    (xtr, ytr), (xev, yev) = data["train"], data["test"]
    ntr = min(len(ytr), args.readout_images)
    xtr, ytr_np = xtr[:ntr], ytr[:ntr].cpu().numpy()
    yev_np = yev.cpu().numpy()
    rows, heads, andc, timings = [], [], [], []
    sel = selection_rows(ntr, 0.1, 0)
    for p, pi in info.items():
        t0 = time.perf_counter()
        ftr, fev = capture(model, p, xtr), capture(model, p, xev)
        t_cap = time.perf_counter() - t0
        r = measure_point(pi, ftr, ytr_np, fev, yev_np, 10, spec)
        c = cluster_point(r.row, r.field_sums, r.label_counts, r.dependence, spec)
        rows.append(c.row)
        t_meas = time.perf_counter() - t0 - t_cap
        if pi.kind == "mha":
            heads.append(analyse_heads(p, c.raw_matrices, pi.heads, spec.threshold, args.null_draws, 0).summary)
        acc = snp_accumulate(r.readout, ftr, ytr_np, 10, rows=sel)
        prow, _ = prune_point(p, r.readout, normalise(acc.snp_matrices()), ftr, ytr_np, fev, yev_np, spec.threshold, [],
                              ["random", "magnitude"], args.finetune_epochs, 1e-3, 0, f"heldout: {len(sel)} training images")
        andc += prow
        del ftr, fev
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        timings.append({"point": p, "capture_s": t_cap, "measure_s": t_meas,
                        "prune_s": time.perf_counter() - t0 - t_cap - t_meas})
        log(f"{p:22s} {point_line(c.row)}  ({sum(v for k, v in timings[-1].items() if k != 'point'):.1f} s)")
    return {"layers": rows, "heads": heads, "andc": andc, "timings": timings}


def write(out: Path, result: dict, facts: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    for name in ("layers", "heads", "andc", "timings"):
        pd.DataFrame(result[name]).to_parquet(out / f"{name}.parquet")
        pd.DataFrame(result[name]).to_csv(out / f"{name}.csv", index=False)
    (out / "facts.json").write_text(json.dumps(facts, indent=1, default=str))
    layers = pd.DataFrame(result["layers"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    x = np.arange(len(layers))
    for ax, col in zip(axes, ("readout_accuracy", "label_specific_fraction", "effect_size")):
        for kind, g in layers.groupby("kind", sort=False):
            idx = x[layers["kind"] == kind]
            if f"{col}_lo" in g:
                err = np.nan_to_num(np.vstack([g[col] - g[f"{col}_lo"], g[f"{col}_hi"] - g[col]]).clip(0))
                ax.errorbar(idx, g[col], yerr=err, marker="o", ls="-", capsize=2, label=kind)
            else:
                ax.plot(idx, g[col], marker="o", label=kind)
        ax.set_title(col)
        ax.set_xticks(x, layers["point"], rotation=75, fontsize=6)
        ax.legend(fontsize=7)
    fig.suptitle(f"{MODEL} on CIFAR-10: per-layer SNP measures (bars: 95% BCa node-bootstrap)")
    fig.savefig(out / "layers.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", default="../shared/datasets/cifar10-jpg.tar.gz")
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true", help="tiny data, 1 epoch, small analysis: the same code path")
    ap.add_argument("--train-seconds", type=float, default=300.0)
    ap.add_argument("--epochs", type=int, default=0, help="fixed epochs instead of --train-seconds")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--readout-images", type=int, default=50_000)
    ap.add_argument("--readout-epochs", type=int, default=20)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--null-draws", type=int, default=10_000)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--points", default="", help="comma-separated points (default: all 22); the suite's test uses two")
    args = ap.parse_args(argv)
    if args.smoke:
        args = replace_args(args, epochs=1, batch=32, readout_images=200, readout_epochs=2, bootstrap=50,
                            null_draws=200, finetune_epochs=1)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t_all = time.perf_counter()

    def log(m: str) -> None:
        print(f"[{time.perf_counter() - t_all:6.1f} s] {m}", flush=True)

    per_class = {"train": 40, "test": 20} if args.smoke else {"train": None, "test": None}
    data, classes = load_archive(Path(args.archive), per_class)
    log(f"decoded {len(data['train'][1])} train / {len(data['test'][1])} test images on {dev}")
    data = {k: (x.to(dev), y.to(dev)) for k, (x, y) in data.items()}
    torch.manual_seed(0)
    model = create_model(MODEL, 10, 32).to(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trained = train(model, *data["train"], args, dev, log)
    acc = accuracy(model, *data["test"])
    log(f"test accuracy {acc:.4f} after {trained['epochs']} epochs ({trained['seconds']:.0f} s)")
    loop_rate = float(np.median([h["images_per_s"] for h in trained["history"][1:]] or
                                [trained["history"][0]["images_per_s"]]))
    bare = bare_step_rate(args.batch, dev, 5 if args.smoke else 50)
    t0 = time.perf_counter()
    result = analyse(model, data, args, dev, log)
    analysis_s = time.perf_counter() - t0
    epoch_s = float(np.median([h["seconds"] for h in trained["history"]]))
    facts = {"model": MODEL, "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
             "torch": torch.__version__, "smoke": args.smoke, "classes": classes, "test_accuracy": acc,
             "epochs": trained["epochs"], "train_seconds": trained["seconds"], "history": trained["history"],
             "train_loop_images_per_s": loop_rate, "bare_step_images_per_s": bare, "loop_vs_bare": loop_rate / bare,
             "analysis_seconds": analysis_s, "analysis_in_training_epochs": analysis_s / epoch_s,
             "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None,
             "readout_images": min(args.readout_images, len(data["train"][1])), "eval_images": len(data["test"][1]),
             "args": vars(args)}
    write(Path(args.out), result, facts)
    log(f"analysis {analysis_s:.0f} s = {facts['analysis_in_training_epochs']:.2f} training epochs; loop "
        f"{loop_rate:.0f} img/s vs bare step {bare:.0f} img/s ({facts['loop_vs_bare']:.2f}); written to {args.out}")
    return 0


def replace_args(args: argparse.Namespace, **kw) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **kw})


if __name__ == "__main__":
    raise SystemExit(main())
