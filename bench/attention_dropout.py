"""Training throughput of a CCT with attention dropout on and off, side by side (interleaved rounds,
median), at each shipped job's model, resolution and batch, with the job's precision (bf16 autocast
where the CPU has bf16 units, as `precision: auto` trains).

    python -m bench.attention_dropout [--rounds 3] [--steps 4] [jobs/flowers102_cpu.yaml ...]

Why it matters: PyTorch's fused attention kernel for the CPU takes no dropout, so a block with
attention dropout > 0 falls back to the unfused formulation (explicit scores, softmax and a Bernoulli
mask over every attention matrix). The rows say what that costs per training step; the profile row
names the op that dominates with dropout on. Random inputs: the model step only (bench.loader and
bench.images time the data paths).
"""

from __future__ import annotations

import argparse

import torch

from bench.common import REPO, median, stamp, table, write_section
from bench.steps import model_step
from bench.train import images_per_s
from snp_service.spec import load_spec
from snp_service.train import autocast_dtype

TITLE = "7. Attention dropout and the fused attention kernel (CPU training steps)"
JOBS = ["jobs/flowers102_cpu.yaml", "jobs/quickstart.yaml"]


def make_step(path: str, attention_dropout: float):
    spec = load_spec(REPO / path, sets=[f"model.attention_dropout={attention_dropout}"])
    size, batch = spec.dataset.input_size(), spec.train.batch_size
    torch.manual_seed(0)
    model = spec.build_model(spec.dataset.known_classes())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dtype = autocast_dtype(spec.train.precision, torch.device("cpu"))
    step = model_step(model, opt, torch.randn(batch, 3, size, size),
                      torch.randint(0, spec.dataset.known_classes(), (batch,)), dtype, channels_last=False)
    step()  # warm-up: allocations, oneDNN primitives
    return step, spec, dtype


def top_op(step) -> str:
    from torch.profiler import profile

    with profile() as prof:
        step()
    top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[0]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    return f"{top.key} {100 * top.self_cpu_time_total / total:.0f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jobs", nargs="*", default=JOBS)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    rows = []
    for path in args.jobs:
        on, spec, dtype = make_step(path, 0.1)
        off, _, _ = make_step(path, 0.0)
        batch = spec.train.batch_size
        rates: dict[str, list[float]] = {"on": [], "off": []}
        for _ in range(args.rounds):  # interleaved: a load change hits both
            rates["on"].append(images_per_s(on, batch, args.steps))
            rates["off"].append(images_per_s(off, batch, args.steps))
        r_on, r_off = median(rates["on"]), median(rates["off"])
        rows.append([path, f"{spec.model.name}, {spec.dataset.input_size()} px, batch {batch}",
                     str(dtype).removeprefix("torch.") if dtype else "float32",
                     f"{r_on:.1f}", f"{r_off:.1f}", f"{r_off / r_on:.2f}x", top_op(on), top_op(off)])
        print(rows[-1], flush=True)
    body = stamp(f"python -m bench.attention_dropout --rounds {args.rounds} --steps {args.steps}") + "\n"
    body += ("Training images/s of one model step (forward under the job's autocast, label-smoothed loss, "
             "backward, AdamW), random inputs, median of interleaved rounds; torch threads: "
             f"{torch.get_num_threads()}. `attention_dropout` 0.1 is the CCT's default; 0.0 lets "
             "`scaled_dot_product_attention` use its fused CPU kernel.\n\n")
    body += table(["job", "model", "autocast", "img/s, dropout 0.1", "img/s, dropout 0.0", "ratio",
                   "top op, dropout 0.1", "top op, dropout 0.0"], rows)
    write_section(TITLE, body)


if __name__ == "__main__":
    main()
