"""A linear bag-of-words baseline beside the text jobs (issue 32), on the same split and the same ids:
each job's dataset section is read by the service's own reader (snp_service.data.build_datasets: the
same files, row filter, labels and tokenizer learnt from the training split), each text becomes the
counts of its ids (log(1 + count), rows scaled to unit length), and a multinomial logistic regression
(one Linear, full-batch L-BFGS, deterministic) is fitted on the training split. Its L2 weight decay is
chosen from a small grid on a seeded tenth of the training split held out, then refitted on all of it;
the test split scores it once. Beside it, the job's own test accuracy when the job has finished in
--store (its eval/per_class.parquet), else "not run".

    python -m bench.text_baseline [--store results] [jobs/banking77_textcct.yaml jobs/clinc150_textcct.yaml]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.common import REPO, stamp, table, write_section
from snp_service.data import build_datasets
from snp_service.spec import load_spec

TITLE = "6. Text: a bag-of-words linear baseline beside the text CCT"
JOBS = ["jobs/banking77_textcct.yaml", "jobs/clinc150_textcct.yaml"]
WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3)


def bag_of_words(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """(N, vocab) log(1 + count) of each id (padding, id 0, left out), each row of unit length; sparse."""
    counts = torch.zeros(len(ids), vocab)
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.float32))
    counts[:, 0] = 0.0
    x = torch.log1p(counts)
    return (x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)).to_sparse()


class Linear(nn.Module):
    """logits = x W^T + b for a sparse x (a text has a few ids of thousands)."""

    def __init__(self, features: int, classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(classes, features))
        self.bias = nn.Parameter(torch.zeros(classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sparse.mm(x, self.weight.T) + self.bias


def fit_linear(x: torch.Tensor, y: torch.Tensor, classes: int, weight_decay: float, steps: int = 200) -> Linear:
    """Multinomial logistic regression with L2 `weight_decay` on the weights, full-batch L-BFGS from zero."""
    model = Linear(x.shape[1], classes)
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y) + weight_decay * model.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model


@torch.no_grad()
def accuracy(model: Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def baseline(job_file: str, seed: int = 0) -> dict:
    spec = load_spec(REPO / job_file)
    t0 = time.perf_counter()
    data = build_datasets(spec.dataset, seed=seed)
    vocab = spec.dataset.tokenizer.vocab_size
    x_train, x_test = (bag_of_words(d.ids, vocab) for d in (data.train, data.eval))
    y_train, y_test = torch.as_tensor(data.train.targets), torch.as_tensor(data.eval.targets)
    order = np.random.default_rng(seed).permutation(len(y_train))
    held, fit = (torch.from_numpy(np.sort(part)) for part in (order[: len(order) // 10], order[len(order) // 10:]))
    x_held, x_fit = (bag_of_words(data.train.ids[rows], vocab) for rows in (held, fit))
    choice = {wd: accuracy(fit_linear(x_fit, y_train[fit], data.num_classes, wd), x_held, y_train[held])
              for wd in WEIGHT_DECAYS}
    wd = max(WEIGHT_DECAYS, key=lambda w: (choice[w], -w))
    model = fit_linear(x_train, y_train, data.num_classes, wd)
    return {"job": spec.name, "job_id": spec.job_id(), "classes": data.num_classes, "train": len(y_train),
            "test": len(y_test), "weight_decay": wd, "held_out_accuracy": choice[wd],
            "accuracy": accuracy(model, x_test, y_test), "seconds": time.perf_counter() - t0}


def job_accuracy(store: Path, job_id: str) -> float | None:
    """The finished job's test accuracy (its evaluate stage's per-class table), or None."""
    path = store / job_id / "eval" / "per_class.parquet"
    if not path.exists():
        return None
    import polars as pl

    t = pl.read_parquet(path)
    return float((t["accuracy"] * t["count"]).sum() / t["count"].sum())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jobs", nargs="*", default=JOBS)
    ap.add_argument("--store", default="results", help="results root where the jobs ran (default results)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # deterministic sums, and the machine is shared
    rows = []
    for job in args.jobs:
        r = baseline(job)
        own = job_accuracy(Path(args.store), r["job_id"])
        print(f"{r['job']}: bag-of-words {r['accuracy']:.4f} (weight decay {r['weight_decay']:g}), "
              f"job {own if own is None else f'{own:.4f}'}", flush=True)
        rows.append([r["job"], r["classes"], f"{r['train']:,} / {r['test']:,}", f"{r['accuracy']:.4f}",
                     f"{r['weight_decay']:g} ({r['held_out_accuracy']:.4f} held out)",
                     "not run" if own is None else f"{own:.4f} ({r['job_id']})", f"{r['seconds']:.0f}"])
    body = (stamp("python -m bench.text_baseline " + " ".join(argv or [])) + "\n"
            "Test accuracy on each job's own split and ids (its dataset section read by the service's reader, its "
            "tokenizer learnt from the training split): a multinomial logistic regression on log(1 + count) of each "
            "id, rows of unit length, weight decay chosen on a held-out tenth of the training split. The text CCT's "
            "column is the job's evaluate stage when it has finished in the store.\n\n"
            + table(["job", "labels", "train / test texts", "bag-of-words accuracy", "weight decay",
                     "text CCT accuracy (job)", "baseline seconds"], rows))
    write_section(TITLE, body)


if __name__ == "__main__":
    main()
