"""Stage 2 (METHOD.md 2.2-2.3 and 2b): capture activations at measurement points of a frozen
network, and train a new bias-free readout from each point to the labels.

Features are kept as (inputs, nodes, positions): a conv map (B, C, H, W) becomes (B, C, H*W), a
token sequence (B, T, D) becomes (B, D, T). The capture runs the network once over a split and
writes every selected point to a float16 memory-mapped file, so RAM stays bounded by one batch
while later steps (readout epochs, SNP) read the features back without re-running the network.
float16 halves the disk and read cost; readouts and fields are computed in float32/float64.

Padding (text inputs, whose model has `position_masks`): a position that is padding for an input is
stored as NaN at every node, never as a value. A readout gives it no weight (sequence pooling) and no
term (flatten: it counts as zero), so readouts, fields and everything computed from them see only
the input's own positions.
"""

from __future__ import annotations

import copy
import math
import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from snp_service.errors import SnpError
from snp_service.optim import optimiser_step
from snp_service.snp import fields


def as_nodes_positions(act: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H*W); (B, T, D) -> (B, D, T)."""
    if act.ndim == 4:
        return act.flatten(2)
    return act.transpose(1, 2)


@dataclass
class Features:
    """Captured features of one split: point name -> (X, N, P) float16, a memory-mapped file or a
    tensor in device memory, and labels (X,)."""

    points: dict[str, np.memmap | torch.Tensor]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


class _Captured(Exception):
    """Raised by the last point's hook: the forward pass stops there (a group of early points does
    not pay for the rest of the network)."""


@torch.no_grad()
def capture(model: nn.Module, dataset: Dataset, points: list[str], directory: Path, batch_size: int = 256,
            progress=None, device: torch.device | None = None, in_memory: bool = False) -> Features:
    """Run the frozen model once over `dataset` (on `device`, default the model's), storing the
    activations at `points`: in float16 files under `directory`, or with `in_memory` as float16
    tensors on the device (a GPU keeps a group of points there when it fits)."""
    model.eval()
    device = device or next(model.parameters()).device
    modules = model.point_modules()
    directory.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    store: dict[str, np.memmap] = {}
    batch: dict[str, torch.Tensor] = {}

    def keep(point: str, out: torch.Tensor) -> None:
        batch[point] = out
        if len(batch) == len(points):  # every point seen: the rest of the network is not needed
            raise _Captured

    hooks = [modules[p].register_forward_hook(lambda _m, _i, out, p=p: keep(p, out)) for p in points]
    position_masks = getattr(model, "position_masks", None)
    labels = np.empty(n, dtype=np.int64)
    start = 0
    try:
        for i, (x, y) in enumerate(DataLoader(dataset, batch_size=batch_size, shuffle=False)):
            batch.clear()
            x = x.to(device)
            try:
                model(x)
            except _Captured:
                pass
            masks = position_masks(x) if position_masks is not None else {}
            for p in points:
                a = as_nodes_positions(batch[p])
                if p in masks:  # padded positions: NaN, no activation (see the module's docstring)
                    a = a.masked_fill(~masks[p][:, None, :], float("nan"))
                if in_memory:
                    if p not in store:
                        store[p] = torch.empty((n,) + tuple(a.shape[1:]), dtype=torch.float16, device=device)
                    store[p][start:start + len(y)] = a.to(torch.float16)
                    continue
                if p not in store:
                    store[p] = np.lib.format.open_memmap(directory / f"{p}.npy", mode="w+", dtype=np.float16,
                                                         shape=(n,) + tuple(a.shape[1:]))
                store[p][start:start + len(y)] = a.to(torch.float16).cpu().numpy()
                release(store[p])  # written pages go to the file, not the process's RSS
            labels[start:start + len(y)] = y.numpy()
            start += len(y)
            if progress is not None:
                progress(start, n)
        for m in store.values():
            if not in_memory:
                m.flush()
    except OSError as e:  # disk full (ENOSPC), file size limit (EFBIG): say so, leave nothing behind
        need = sum(int(np.prod(m.shape)) * 2 for m in store.values())
        store.clear()
        for f in directory.glob("*.npy"):
            f.unlink(missing_ok=True)
        raise SnpError(f"capturing features into {directory} failed ({e.strerror or e}); the points need about "
                       f"{max(need, 1) / 2**20:.0f} MB for {n} images there (set SNP_FEATURES_DIR to a larger disk)"
                       ) from None
    finally:
        for h in hooks:
            h.remove()
    return Features(store, labels)


READOUT_KINDS = ("flatten", "seqpool")  # analysis.readout's choices, and `flatten` for conv points


class Readout(nn.Module):
    """A new readout from a point to L labels (bias-free Linear over the point's nodes x positions).

    kind `flatten`: W[k, n, p] over every position (CNN readout; transformer analogue).
    kind `seqpool`: a sequence pool over positions (softmax weights from a Linear over all nodes,
    so pooling weights are computed with all nodes present), then W[k, n] over pooled values.
    """

    def __init__(self, nodes: int, positions: int, labels: int, kind: str):
        super().__init__()
        if kind not in READOUT_KINDS:  # a new kind is added here, never silently read as another
            raise ValueError(f"readout kind {kind!r}: expected one of {READOUT_KINDS}")
        p = 1 if kind == "seqpool" else positions
        self.weight = nn.Parameter(torch.empty(labels, nodes, p))
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(nodes * p))
        self.attention_pool = nn.Linear(nodes, 1) if kind == "seqpool" else None
        self.solve: dict | None = None  # the L-BFGS solve's record (iterations, final gradient), if solved

    def node_activations(self, feats: torch.Tensor) -> torch.Tensor:
        """What the weights multiply: (B, N, P) features, or (B, N, 1) pooled values for seqpool.
        Padded positions (NaN) count as zero, and get no pooling weight."""
        padded = feats[:, :1, :].isnan()  # (B, 1, P)
        if padded.any():
            feats = feats.masked_fill(padded, 0.0)
        else:
            padded = None
        if self.attention_pool is None:
            return feats
        logits = self.attention_pool(feats.transpose(1, 2))  # (B, P, 1)
        if padded is not None:
            logits = logits.masked_fill(padded.transpose(1, 2), float("-inf"))
        return feats @ logits.softmax(dim=1)  # (B, N, 1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        # sum over n, p of activations x W[k, n, p] as one matmul ((B, N*P) @ (N*P, K)): flatten readouts
        # trained several times faster than with einsum("bnp,knp->bk"), whose backward took a batched path
        return self.node_activations(feats).flatten(1) @ self.weight.flatten(1).T


def feature_device(features: np.ndarray | torch.Tensor) -> torch.device:
    """Where a point's features live (and so where its readout trains): a tensor's device, else the CPU."""
    return features.device if isinstance(features, torch.Tensor) else torch.device("cpu")


def batches(n: int, batch_size: int, rng: np.random.Generator | None):
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for i in range(0, n, batch_size):
        yield np.sort(order[i:i + batch_size])  # sorted indices read memmaps sequentially


def release(arr: np.ndarray) -> None:
    """Drop this process's resident pages of a memory-mapped feature file. The data stays in the
    file (and the kernel's page cache); the next read faults it back in. Without this, every page a
    pass touched would stay in the process's RSS, so memory would grow with the number of images
    (bench/RESULTS.md, memory section)."""
    m = getattr(arr, "_mmap", None)  # np.memmap keeps its mmap.mmap here
    if m is not None and hasattr(m, "madvise"):
        m.madvise(mmap.MADV_DONTNEED)


def load_rows(arr: np.memmap | torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    """Rows `idx` as float32, on the features' device. Features are a float16 memory-mapped file
    (CPU) or a tensor already in device memory (a GPU keeps a point's features there). The float16 ->
    float32 conversion runs in torch (vectorised, several times faster than numpy's, exact either
    way): reading rows is a large part of readout training (bench/RESULTS.md, the SNP-stage profile)."""
    if isinstance(arr, torch.Tensor):
        return arr[torch.as_tensor(idx, device=arr.device)].float()
    rows = torch.from_numpy(np.ascontiguousarray(arr[idx])).float()
    release(arr)
    return rows


READOUT_WEIGHT_DECAY = 1e-4  # L2 of every readout parameter: the objective is mean cross-entropy + wd/2 |theta|^2
SOLVERS = ("adam", "lbfgs")  # analysis.readout_solver; the first is the default
LBFGS_TOLERANCE = 1e-6  # the solve stops when max |gradient| of that objective (float64) is at most this
LBFGS_MAX_ITER = 2000
LBFGS_HISTORY = 10  # memory: about (2 x history + 4) copies of the readout weight


def train_readout(train: np.memmap, labels: np.ndarray, num_labels: int, kind: str, epochs: int, lr: float,
                  seed: int = 0, batch_size: int = 256, solver: str = "adam", pool_epochs: int = 2) -> Readout:
    """Train a readout on captured features (the frozen network is not re-run).

    solver `adam` (stepped, the default and every earlier job's; ours, cheaper than the AFCC code's 200
    SGD epochs): Adam with cosine decay over `epochs`, weight decay 1e-4 (coupled L2), batch 256,
    seeded shuffling.
    solver `lbfgs` (solved): the same objective, mean cross-entropy + 1e-4/2 |W|^2, minimised for the
    bias-free linear weight W by full-batch L-BFGS with a strong-Wolfe line search in float64 until the
    largest gradient component is at most LBFGS_TOLERANCE (`solve_linear`). The problem is convex in W.
    A `seqpool` readout's pooling (N + 1 weights, the non-convex part) is trained first with W by
    `pool_epochs` epochs of the stepped solver (its lr, cosine over those epochs); the pooling is then
    frozen, every image's pooled values computed once, and W solved on them. A `flatten` readout has
    no pooling: W is solved directly on the features."""
    if solver not in SOLVERS:
        raise ValueError(f"readout solver {solver!r}: expected one of {SOLVERS}")
    torch.manual_seed(seed)
    _, nodes, positions = train.shape
    readout = Readout(nodes, positions, num_labels, kind).to(feature_device(train))
    if solver == "adam" or (kind == "seqpool" and pool_epochs > 0):
        fit_on_features(readout, list(readout.parameters()), train, labels, epochs if solver == "adam" else pool_epochs,
                        lr, READOUT_WEIGHT_DECAY, seed, batch_size)
    if solver == "lbfgs":
        linear, acts = linear_part(readout, train)
        readout.solve = solve_linear(linear, acts, labels, READOUT_WEIGHT_DECAY)
    return readout.eval()


@torch.no_grad()
def linear_part(readout: Readout, feats: np.ndarray | torch.Tensor,
                batch_size: int = 1024) -> tuple[Readout, np.ndarray | torch.Tensor]:
    """(a `flatten` readout sharing `readout`'s weight W, what W multiplies). For a `seqpool` readout,
    its (frozen) pooling applied once to every image: (X, N, 1) float32 pooled values on the features'
    device, so training or scoring W alone never pools again; for a `flatten` readout, itself and `feats`."""
    if readout.attention_pool is None:
        return readout, feats
    pooled = torch.empty((len(feats), feats.shape[1], 1), dtype=torch.float32, device=feature_device(feats))
    for idx in batches(len(feats), batch_size, None):
        pooled[torch.as_tensor(idx, device=pooled.device)] = readout.node_activations(load_rows(feats, idx))
    with torch.random.fork_rng(devices=[]):  # its throw-away initial weight draws nothing from the seeded stream
        linear = Readout(feats.shape[1], 1, readout.weight.shape[0], "flatten").to(pooled.device)
    linear.weight = readout.weight  # shared: what is solved or fine-tuned here is the readout's own W
    return linear, pooled


def solve_linear(readout: Readout, feats: np.ndarray | torch.Tensor, labels: np.ndarray, weight_decay: float,
                 tolerance: float = LBFGS_TOLERANCE, max_iter: int = LBFGS_MAX_ITER, chunk: int = 2048,
                 mask: torch.Tensor | None = None) -> dict:
    """Minimise mean cross-entropy + weight_decay/2 |W|^2 over the readout's weight W (bias-free: the
    problem is convex) by full-batch L-BFGS (torch.optim.LBFGS, strong-Wolfe line search) in float64,
    from the current values, until max |gradient| <= tolerance or max_iter iterations. `mask` (L, N):
    only those connections of W are free, the rest held at zero (a masked fine-tune). Rows are read in
    chunks, so the features may be a memory-mapped file larger than memory. Returns the record reported
    with every solved readout: iterations, the solver's objective evaluations, the objective and max |gradient|,
    and whether it converged."""
    work = copy.deepcopy(readout).double()
    for p in work.parameters():
        p.requires_grad_(False)
    w = work.weight.requires_grad_(True)
    keep = None if mask is None else mask[:, :, None].to(w)
    if keep is not None:
        with torch.no_grad():
            w.mul_(keep)
    y = torch.as_tensor(labels, device=w.device)
    n = len(labels)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, tolerance_grad=tolerance, tolerance_change=0.0,
                            history_size=LBFGS_HISTORY, line_search_fn="strong_wolfe")
    last = {}

    @torch.enable_grad()
    def closure() -> torch.Tensor:
        w.grad = w.detach() * weight_decay
        value = 0.5 * weight_decay * float(w.detach().pow(2).sum())
        for idx in batches(n, chunk, None):
            loss = nn.functional.cross_entropy(work(load_rows(feats, idx).double()),
                                               y[torch.as_tensor(idx, device=y.device)], reduction="sum") / n
            loss.backward()
            value += float(loss.detach())
        if keep is not None:
            w.grad.mul_(keep)
        last.update(objective=value, grad_max=float(w.grad.abs().max()))
        return torch.tensor(value, dtype=torch.float64)

    opt.step(closure)
    state = opt.state[w]
    closure()  # the record at the solution: the line search's last evaluation may be at a rejected step
    with torch.no_grad():
        readout.weight.copy_(w)
    return {"iterations": int(state["n_iter"]), "evaluations": int(state["func_evals"]),
            "objective": last["objective"], "grad_max": last["grad_max"],
            "converged": last["grad_max"] <= tolerance}


def fit_on_features(module: nn.Module, params: list, train: np.memmap, labels: np.ndarray, epochs: int, lr: float,
                    weight_decay: float, seed: int, batch_size: int = 256, after_step=None) -> None:
    """Cross-entropy training of `params` of `module` on captured features: Adam, cosine decay over
    all steps, seeded shuffling; `after_step()` runs after every optimiser step (e.g. re-masking)."""
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(labels) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    y_all = torch.as_tensor(labels, device=feature_device(train))
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for idx in batches(len(labels), batch_size, rng):
            y = y_all[torch.as_tensor(idx, device=y_all.device)]
            optimiser_step(nn.functional.cross_entropy(module(load_rows(train, idx)), y), opt, sched)
            if after_step is not None:
                after_step()


@torch.no_grad()
def readout_accuracy(readout: Readout, feats: np.memmap, labels: np.ndarray, batch_size: int = 512) -> float:
    correct = 0
    for idx in batches(len(labels), batch_size, None):
        correct += (readout(load_rows(feats, idx)).argmax(1).cpu().numpy() == labels[idx]).sum()
    return float(correct / max(1, len(labels)))


@torch.no_grad()
def masked_accuracies(readout: Readout, masks: list[torch.Tensor | None], feats: np.memmap, labels: np.ndarray,
                      batch_size: int = 512) -> list[float]:
    """Accuracy of the readout under each connection mask ((L, N) Boolean; None: unmasked), all in one
    pass over the features. A masked readout's logit of label k is the sum over its kept nodes n of
    node n's field f[x, n, k] (snp.fields), so each batch's fields (float64) are computed once and every
    mask is a masked sum of them, instead of one pass over the features per mask. Equal to
    `readout_accuracy(prune.masked(readout, mask), ...)` up to float32 rounding in that path (an argmax
    can differ only where two logits agree to float32 precision)."""
    device = readout.weight.device
    w = readout.weight.double()
    keep = torch.stack([torch.ones(w.shape[:2], dtype=torch.bool, device=device) if m is None else m.to(device)
                        for m in masks]).double()  # (M, L, N)
    correct = torch.zeros(len(masks), dtype=torch.int64)
    y_all = torch.as_tensor(labels)
    for idx in batches(len(labels), batch_size, None):
        f = fields(readout.node_activations(load_rows(feats, idx)).double(), w)  # (B, N, L)
        logits = torch.einsum("bnl,mln->mbl", f, keep)  # (M, B, L)
        correct += (logits.argmax(2).cpu() == y_all[torch.as_tensor(idx)][None]).sum(1)
    return [float(c) / max(1, len(labels)) for c in correct.tolist()]
