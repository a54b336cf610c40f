"""Training throughput: the CCT as its authors wrote it (explicit softmax(q k^T * scale) v, fused qkv,
float32) against the service's training setup, side by side (interleaved rounds, median), plus
the checks that the faster formulation computes the same thing.

    python -m bench.train [--quick]

Rows: train images/s for cct_2_3x2_32 (batch 128) and cct_7_3x1_32 (batch 32) with random inputs
(the model step only; the loader is bench.loader's subject), eval logits of both formulations on the
same weights, accuracy of a short real CIFAR-10 run with each formulation and two seeds, and a
torch.profiler summary of the candidate's step (where the time goes).
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import CIFAR10, median, stamp, table, verdict, write_section
from bench.steps import model_step
from snp_service.spec import ModelSpec, TrainSpec
from snp_service.train import autocast_dtype, cpu_supports_bf16, lr_factor, make_optimizer, train_epochs

TITLE = "1. Training throughput vs the published formulation"
MODELS = [("cct_2_3x2_32", 128, 1.5), ("cct_7_3x1_32", 32, 2.5)]  # name, batch, target ratio


def make_step(name: str, batch: int, attention: str, dtype=None, channels_last: bool = False):
    torch.manual_seed(0)
    model = ModelSpec(name=name, attention=attention).build(10, 32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step = model_step(model, opt, torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,)), dtype,
                      channels_last)
    step()  # warm-up (allocations, oneDNN primitives)
    return step


def images_per_s(step, batch: int, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t0)


def logits_difference(name: str) -> float:
    """Max |logit difference| of the two attention formulations on the same weights, eval mode, fp32."""
    torch.manual_seed(1)
    ref = ModelSpec(name=name, attention="reference").build(10, 32).eval()
    cand = ModelSpec(name=name, attention="sdpa").build(10, 32).eval()
    cand.load_state_dict(ref.state_dict())
    x = torch.randn(64, 3, 32, 32)
    with torch.no_grad():
        return (ref(x) - cand(x)).abs().max().item()


def short_run_accuracy(attention: str, seed: int, per_class: int, epochs: int) -> float:
    """A short real CIFAR-10 run with the service's recipe (AdamW, warm-up + cosine, label smoothing,
    augmentation) in-process: the two formulations must land within seed noise of each other."""
    from torch.utils.data import DataLoader

    from snp_service.data import build_datasets
    from snp_service.spec import DatasetSpec

    ds = DatasetSpec(name="imagefolder", root=str(CIFAR10), max_per_class=per_class,
                     eval_max_per_class=max(50, per_class // 2), num_workers=1)
    data = build_datasets(ds, seed=seed, augment=True)
    t = TrainSpec(epochs=epochs, batch_size=64, lr=1e-3, warmup_epochs=1 if epochs > 1 else 0, seed=seed)
    torch.manual_seed(seed)
    model = ModelSpec(name="cct_2_3x2_32", attention=attention).build(data.num_classes, 32)
    opt = make_optimizer(model, t)
    loader = DataLoader(data.train, batch_size=t.batch_size, shuffle=True, num_workers=1,
                        generator=torch.Generator().manual_seed(seed))
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, t.warmup_epochs * len(loader), t.min_lr / t.lr))
    train_epochs(model, loader, opt, sched, epochs, t.label_smoothing)
    correct = n = 0
    with torch.no_grad():
        for x, y in DataLoader(data.eval, batch_size=256, num_workers=1):
            correct += (model(x).argmax(1) == y).sum().item()
            n += len(y)
    return correct / n


def profile_summary(name: str, batch: int, top: int = 8) -> str:
    from torch.profiler import ProfilerActivity, profile

    step = make_step(name, batch, "sdpa", autocast_dtype("auto", torch.device("cpu")), channels_last=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [[e.key, f"{e.self_cpu_time_total / 1e3 / 2:.0f}", f"{100 * e.self_cpu_time_total / total:.0f}%"]
            for e in events[:top]]
    share = {e.key: e.self_cpu_time_total / total for e in events}
    matmul = sum(share.get(k, 0.0) for k in ("aten::mm", "aten::bmm", "aten::addmm"))
    return table(["op (torch.profiler, self CPU)", "ms per step", "share"], rows), matmul, share.get("aten::bernoulli_", 0.0)


def try_compile(minutes: float) -> str:
    """Whether torch.compile of cct_2_3x2_32's training step finishes compiling within `minutes`
    (in a subprocess, killed at the limit)."""
    import subprocess
    import sys

    code = ("import time, torch; from snp_service.spec import ModelSpec; "
            "torch.manual_seed(0); m = ModelSpec(name='cct_2_3x2_32').build(10, 32); c = torch.compile(m); "
            "x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,)); t = time.perf_counter(); "
            "torch.nn.functional.cross_entropy(c(x), y).backward(); "
            "print(f'compiled and ran one step in {time.perf_counter() - t:.0f} s')")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=minutes * 60)
    except subprocess.TimeoutExpired:
        return f"did not finish compiling within {minutes:g} minutes"
    return r.stdout.strip().splitlines()[-1] if r.returncode == 0 else f"failed: {r.stderr.strip().splitlines()[-1]}"


def run(quick: bool = False, compile_minutes: float = 0.0) -> None:
    torch.set_num_threads(torch.get_num_threads())
    bf16_fast = cpu_supports_bf16()
    candidate_dtype = autocast_dtype("auto", torch.device("cpu"))  # what `precision: auto` picks here
    rows, notes = [], []
    for name, batch, target in MODELS:
        steps = 2 if name == "cct_7_3x1_32" else 5
        rounds = 2 if quick or name == "cct_7_3x1_32" else 3  # cct_7 steps take seconds each here
        configs = {"reference fp32 (baseline)": dict(attention="reference"),
                   "sdpa fp32": dict(attention="sdpa"),
                   f"service default: sdpa + channels_last, {'bf16' if candidate_dtype else 'fp32'}":
                       dict(attention="sdpa", dtype=candidate_dtype, channels_last=True)}
        if name == "cct_2_3x2_32":  # bf16 autocast where the CPU lacks bf16 units: shown, not used
            configs["sdpa + bf16 autocast"] = dict(attention="sdpa", dtype=torch.bfloat16)
        speeds: dict[str, list[float]] = {k: [] for k in configs}
        stepfns = {k: make_step(name, batch, **cfg) for k, cfg in configs.items()}
        for r in range(rounds):  # interleaved, so drift on a shared machine hits every config alike
            for k, fn in stepfns.items():
                if "bf16 autocast" in k and r > 0 and not bf16_fast:
                    continue  # 10x slower here: one round is enough to show it
                speeds[k].append(images_per_s(fn, batch, 1 if "bf16 autocast" in k and not bf16_fast else steps))
        base = median(speeds["reference fp32 (baseline)"])
        for k, v in speeds.items():
            ratio = median(v) / base
            is_default = k.startswith("service default")
            rows.append([name, batch, k, f"{median(v):.1f}", f"{ratio:.2f}x",
                         f">= {target}x: {verdict(ratio, target)}" if is_default else ""])
        print(rows[-len(speeds):], flush=True)
    diffs = {name: logits_difference(name) for name, _, _ in MODELS}
    per_class, epochs = (100, 1) if quick else (150, 2)
    acc = {(a, s): short_run_accuracy(a, s, per_class, epochs) for a in ("reference", "sdpa") for s in (0, 1)}
    print("accuracy", acc, flush=True)
    prof, matmul_share, bernoulli_share = profile_summary("cct_7_3x1_32", 32)

    body = stamp("python -m bench.train" + (" --quick" if quick else ""))
    body += ("\nBaseline: the authors' formulation (explicit `softmax(q @ k^T * scale) @ v`, fused qkv, float32; "
             "`model.attention: reference`). Candidate: the service's default (`model.attention: sdpa`, "
             "channels_last inputs and weights, `train.precision: auto`, which picks bf16 autocast only on a GPU or a CPU with AMX / AVX-512 bf16). "
             "Train images/s of the model step (forward, backward, AdamW) on random 32x32 inputs, median of "
             "interleaved rounds, all cores.\n\n")
    body += table(["model", "batch", "configuration", "train img/s", "vs baseline", "target"], rows)
    body += "\n" + table(["model", "max abs logit difference, reference vs sdpa (same weights, fp32, eval)", "target"],
                         [[n, f"{d:.1e}", f"<= 1e-4: {verdict(1e-4, d) if d > 0 else 'met'}"] for n, d in diffs.items()])
    spread = max(abs(acc[("reference", 0)] - acc[("reference", 1)]), abs(acc[("sdpa", 0)] - acc[("sdpa", 1)]))
    gap = abs((acc[("reference", 0)] + acc[("reference", 1)]) / 2 - (acc[("sdpa", 0)] + acc[("sdpa", 1)]) / 2)
    body += (f"\nShort real CIFAR-10 run (cct_2_3x2_32, {per_class * 10} training images, {epochs} epoch(s), "
             f"seeds 0 and 1): reference {acc[('reference', 0)]:.3f} / {acc[('reference', 1)]:.3f}, "
             f"sdpa {acc[('sdpa', 0)]:.3f} / {acc[('sdpa', 1)]:.3f}; the formulations differ by {gap:.3f} on "
             f"average, the seeds by up to {spread:.3f}: "
             f"{'within seed noise' if gap <= max(spread, 0.01) else 'NOT within seed noise'}.\n")
    compiled = try_compile(compile_minutes) if compile_minutes else None
    if not bf16_fast:
        bf16 = next(r for r in rows if r[2] == "sdpa + bf16 autocast")
        notes.append(
            "**Why the throughput targets are missed here.** The targets assume a CPU with AMX / AVX-512 bf16 "
            "(where bf16 autocast alone gave 1.5-2x). This machine's CPU has neither (see the machine line: "
            "/proc/cpuinfo lists no `amx_bf16` or `avx512_bf16`), and bf16 autocast on it runs at "
            f"{bf16[4]} of the baseline (row above), so `precision: auto` keeps float32 and the remaining levers "
            "are small: in float32 the reference and sdpa formulations do the same arithmetic, and at these "
            "sequence lengths (64 and 256 tokens) attention is a small part of the step. The profile of the "
            f"candidate's cct_7_3x1_32 step (below) has {100 * matmul_share:.0f}% of the time in matrix multiplies "
            "(`mm`, `bmm`, `addmm`: the linear layers and attention, forward and backward), which no formulation "
            f"change removes on float32 AVX2, and {100 * bernoulli_share:.0f}% in `bernoulli_`, the dropout and "
            "stochastic-depth masks of the CCT recipe; the model is compute-bound. The bf16 gain shows on a GPU: "
            "section 1b.")
    if compiled:
        notes.append(f"`torch.compile` of cct_2_3x2_32's training step on this machine: {compiled} "
                     f"(`python -m bench.train --try-compile {compile_minutes:g}`).")
    else:
        notes.append("`torch.compile` is not used on CPU here: an attempt to compile cct_2_3x2_32's training step "
                     "ran for over 10 minutes on these 2 cores without finishing; `python -m bench.train "
                     "--try-compile 10` repeats it (not part of `python -m bench`, for its length).")
    body += "\n" + "\n\n".join(notes) + "\n\nProfile of the candidate's cct_7_3x1_32 training step (batch 32):\n\n" + prof
    write_section(TITLE, body)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds and a shorter accuracy run")
    ap.add_argument("--try-compile", type=float, default=0.0, metavar="MINUTES",
                    help="also try torch.compile of the training step, for at most this long")
    a = ap.parse_args()
    run(a.quick, a.try_compile)
