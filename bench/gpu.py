"""Training throughput on a GPU: the same comparison as bench.train (the authors' float32 formulation
vs the service's setup), plus images/s for cct_7_3x1_32 and the fraction of the GPU's bf16 peak.

Needs only torch (no Ray, pydantic or data), so it runs on a bare GPU machine:

    python -m bench.gpu --out gpu.json          # on the GPU machine (~5 minutes)
    python -m bench.gpu --write gpu.json        # here: writes the GPU section of bench/RESULTS.md

FLOPs per training step are counted by torch.utils.flop_counter (matmuls, convolutions and attention,
forward and backward); the peak is both the datasheet's dense bf16 figure and a measured
8192x8192x8192 bf16 matrix product on the same GPU in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date

import torch
from torch import nn

from bench.steps import model_step

DATASHEET_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, SXM
CASES = [("cct_2_3x2_32", 128), ("cct_7_3x1_32", 32), ("cct_7_3x1_32", 256)]


def build(name: str, attention: str) -> nn.Module:
    from snp_service.models.cct import CCT
    from snp_service.models.registry import model_config

    torch.manual_seed(0)
    return CCT(model_config(name), 10, 32, "learnable", attention, 0.0, 0.1, 0.1)


def make_step(name, batch, attention, dtype, channels_last, compile_):
    dev = torch.device("cuda")
    model = build(name, attention).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    fwd = torch.compile(model) if compile_ else model
    x = torch.randn(batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    step = model_step(model, opt, x, y, dtype, channels_last, forward=fwd)
    return step


def images_per_s(step, batch, steps=40, warm=8) -> float:
    for _ in range(warm):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def flops_per_step(name, batch) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    step = make_step(name, batch, "sdpa", torch.bfloat16, False, False)
    step()
    with FlopCounterMode(display=False) as fc:
        step()
    return float(fc.get_total_flops())


def matmul_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192 ** 3 * 10 / (time.perf_counter() - t0) / 1e12


def logits_difference(name) -> float:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ref, cand = build(name, "reference").cuda().eval(), build(name, "sdpa").cuda().eval()
    cand.load_state_dict(ref.state_dict())
    x = torch.randn(64, 3, 32, 32, device="cuda")
    with torch.no_grad():
        return (ref(x) - cand(x)).abs().max().item()


def measure(out_path: str) -> None:
    res = {"date": date.today().isoformat(), "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "python": platform.python_version(), "rows": [], "errors": []}

    def save():
        with open(out_path, "w") as f:
            json.dump(res, f, indent=1)

    res["matmul_tflops"] = matmul_tflops()
    res["logits_diff"] = {n: logits_difference(n) for n in ("cct_2_3x2_32", "cct_7_3x1_32")}
    save()
    configs = [("reference fp32 (baseline)", "reference", None, False, False),
               ("sdpa fp32", "sdpa", None, False, False),
               ("sdpa bf16", "sdpa", torch.bfloat16, False, False),
               ("service default: sdpa + channels_last, bf16", "sdpa", torch.bfloat16, True, False),
               ("+ torch.compile", "sdpa", torch.bfloat16, True, True)]
    for name, batch in CASES:
        flops = flops_per_step(name, batch)
        for label, att, dtype, cl, comp in configs:
            try:
                t0 = time.perf_counter()
                step = make_step(name, batch, att, dtype, cl, comp)
                ips = images_per_s(step, batch)
                res["rows"].append({"model": name, "batch": batch, "config": label, "img_s": ips,
                                    "tflops": flops / batch * ips / 1e12, "seconds": time.perf_counter() - t0})
            except Exception as e:  # one config failing (e.g. compile) must not lose the others
                res["errors"].append(f"{name} b{batch} {label}: {type(e).__name__}: {str(e)[:300]}")
            print(res["rows"][-1] if res["rows"] else res["errors"][-1], flush=True)
            save()
    save()


def write(json_path: str) -> None:
    from bench.common import table, verdict, write_section

    res = json.load(open(json_path))
    peak = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in res["gpu"]), None)
    rows = []
    for r in res["rows"]:
        base = next(x for x in res["rows"] if x["model"] == r["model"] and x["batch"] == r["batch"]
                    and x["config"].startswith("reference"))
        ratio = r["img_s"] / base["img_s"]
        target = {"cct_2_3x2_32": 1.5, "cct_7_3x1_32": 2.5}[r["model"]]
        rows.append([r["model"], r["batch"], r["config"], f"{r['img_s']:,.0f}", f"{ratio:.2f}x",
                     f"{r['tflops']:.1f}", f"{100 * r['tflops'] / res['matmul_tflops']:.1f}%",
                     f"{100 * r['tflops'] / peak:.1f}%" if peak else "",
                     f">= {target}x: {verdict(ratio, target)}" if r["config"].startswith("service default") else ""])
    body = (f"{res['date']} · {res['gpu']} (device machine lent to the session), torch {res['torch']}, Python "
            f"{res['python']} · `python -m bench.gpu --out gpu.json` there, `python -m bench.gpu --write gpu.json` here\n\n"
            "Train images/s of the model step (forward, backward, fused AdamW) on random 32x32 inputs resident on the "
            "GPU, 40 timed steps after 8 warm-up steps. Baseline: the authors' formulation in float32 (TF32 off by "
            "default in PyTorch for matmuls). Achieved TFLOP/s = FLOPs per step (torch.utils.flop_counter) x steps/s; "
            f"shares of a measured 8192^3 bf16 matmul ({res['matmul_tflops']:.0f} TFLOP/s) and of the datasheet dense "
            f"bf16 peak ({peak or '?'} TFLOP/s).\n\n")
    body += table(["model", "batch", "configuration", "train img/s", "vs baseline", "TFLOP/s", "of matmul",
                   "of peak", "target"], rows)
    body += "\nEval logits, reference vs sdpa on the same weights (fp32, TF32 off): " + ", ".join(
        f"{n} {d:.1e}" for n, d in res["logits_diff"].items()) + " (target <= 1e-4).\n"
    if res["errors"]:
        body += "\nConfigurations that failed: " + "; ".join(res["errors"]) + "\n"
    write_section("1b. Training throughput on a GPU", body)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--out", help="measure on this machine's GPU and write the JSON here")
    g.add_argument("--write", help="write the GPU section of bench/RESULTS.md from this JSON")
    a = ap.parse_args()
    if a.out:
        if not torch.cuda.is_available():
            sys.exit("bench.gpu --out needs a CUDA GPU")
        measure(a.out)
    else:
        write(a.write)
