"""Clusters of a node's Boolean matrix (METHOD.md 2.6-2.7): B = M > th, then the partition of the
candidate labels into all-ones diagonal blocks that maximises the signal: exactly (subset dynamic
programming up to EXACT_MAX_LABELS labels a component, an integer program within a time budget
above), else the greedy rule; and the label-membership matrix that ANDC masks and head label sets
are read from. Pure: numpy and torch (scipy's MILP imported where it runs)."""

from __future__ import annotations

import time

import numpy as np
import torch

CANDIDATE_ORDERS = ("diagonal", "label")  # analysis.candidate_order: the order candidates are visited


def boolean(m_normalised: torch.Tensor, threshold: float) -> torch.Tensor:
    """B = M > th (METHOD.md 2.6)."""
    return m_normalised > threshold


EXACT_MAX_LABELS = 10  # largest non-clique component partitioned exactly (3^c subset steps)


CLUSTER_TIME_LIMIT_S = 1.0  # analysis.cluster_time_limit_s's default: the solver's budget per large component


def clusters(m_normalised: torch.Tensor, threshold: float, order: str = "diagonal",
             time_limit_s: float = CLUSTER_TIME_LIMIT_S) -> list[list[int]]:
    """The clusters of one node; see `clusters_of` (which also says whether the greedy rule ran)."""
    return clusters_of(m_normalised, threshold, order, time_limit_s)[0]


def clusters_of(m_normalised: torch.Tensor, threshold: float, order: str = "diagonal",
                time_limit_s: float = CLUSTER_TIME_LIMIT_S) -> tuple[list[list[int]], bool]:
    """Disjoint clusters of one node (METHOD.md 2.7): a partition of the candidate labels (those with
    B[j, j]) into all-ones diagonal blocks that maximises the signal sum |S|^2 (equivalently, with
    the ones of B fixed, minimises the noise).

    Two labels can share a block only if B[a, c] and B[c, a] (mutually linked). The candidates split
    into connected components of that link graph; a component that is itself a clique is one cluster
    (optimal: merging blocks raises sum |S|^2). Other components of up to EXACT_MAX_LABELS labels are
    partitioned exactly by dynamic programming over subsets; larger ones exactly by an integer
    program (`milp_partition`, HiGHS) within `time_limit_s` seconds per component, and only where the
    solver does not prove its partition optimal in that time by the deterministic greedy rule
    (`greedy_clusters`), whose failure mode is documented there.
    Candidate order (`order`): "diagonal", the largest diagonal M[j, j] first (then the lower label), or
    "label", label order as the AFCC code visits them; it breaks ties between equally good partitions
    (the earlier label gets the larger block) up to EXACT_MAX_LABELS labels, and is the greedy rule's
    visiting order; above, ties are the solver's (the same for the same matrix and scipy version).
    Returns (sorted label lists ordered by their first candidate, whether the greedy fallback was used).
    """
    if order not in CANDIDATE_ORDERS:
        raise ValueError(f"candidate order {order!r}: expected one of {CANDIDATE_ORDERS}")
    b = boolean(m_normalised, threshold).numpy()
    diag = torch.diagonal(m_normalised).tolist()
    candidates = [j for j in range(b.shape[0]) if b[j, j]]
    if order == "diagonal":
        candidates.sort(key=lambda j: (-diag[j], j))
    order = candidates
    greedy = False
    mutual = b & b.T
    result: list[list[int]] = []
    seen: set[int] = set()
    for start in order:  # connected components of the mutual links, in order of their best label
        if start in seen:
            continue
        comp, stack = [], [start]
        seen.add(start)
        while stack:
            a = stack.pop()
            comp.append(a)
            for c in order:
                if c not in seen and mutual[a, c]:
                    seen.add(c)
                    stack.append(c)
        comp.sort(key=order.index)
        if all(mutual[a, c] for a in comp for c in comp):
            result.append(comp)
        elif len(comp) <= EXACT_MAX_LABELS:
            result.extend(best_partition(comp, mutual))
        else:
            best = milp_partition(comp, mutual, time_limit_s)
            greedy = greedy or best is None
            result.extend(greedy_clusters(comp, mutual) if best is None else best)
    result.sort(key=lambda s: order.index(s[0]))
    return [sorted(s) for s in result], greedy


def best_partition(comp: list[int], mutual: np.ndarray) -> list[list[int]]:
    """Exact: the partition of `comp` (labels in tie-break order) into cliques with the largest sum
    of squared sizes; bit i of a mask stands for comp[i]."""
    c = len(comp)
    adj = [sum(1 << j for j in range(c) if j != i and mutual[comp[i], comp[j]]) for i in range(c)]
    clique = [False] * (1 << c)
    clique[0] = True
    for s in range(1, 1 << c):
        low = (s & -s).bit_length() - 1
        rest = s & ~(1 << low)
        clique[s] = clique[rest] and (adj[low] & rest) == rest
    best: dict[int, tuple[int, list[int]]] = {0: (0, [])}

    def solve(mask: int) -> tuple[int, list[int]]:
        if mask in best:
            return best[mask]
        low = mask & -mask
        rest = mask & ~low
        top: tuple[int, list[int]] | None = None
        sub = rest
        while True:  # every clique holding the lowest label; larger subsets first (the tie-break)
            s = sub | low
            if clique[s]:
                score, blocks = solve(mask & ~s)
                score += bin(s).count("1") ** 2
                if top is None or score > top[0]:
                    top = (score, [s] + blocks)
            if sub == 0:
                break
            sub = (sub - 1) & rest
        best[mask] = top
        return top

    _, blocks = solve((1 << c) - 1)
    return [[comp[i] for i in range(c) if s >> i & 1] for s in blocks]


def milp_partition(comp: list[int], mutual: np.ndarray, time_limit_s: float) -> list[list[int]] | None:
    """Exact: the partition of `comp` into cliques of `mutual` with the largest sum of squared sizes,
    as an integer program solved by HiGHS (scipy.optimize.milp); None when optimality is not proved
    within `time_limit_s` seconds (then the caller falls back to the greedy rule).

    Variables: y[a, c] in {0, 1} for each linked pair, 1 when a and c share a block. A partition into
    blocks S has sum |S|^2 = |comp| + 2 * (pairs sharing a block), so the objective is sum y. The
    pairs chosen must be transitive (y[a, b] = y[b, c] = 1 implies y[a, c] = 1): the constraint
    y[a, b] + y[b, c] - y[a, c] <= 1 for each path a-b-c (y[a, c] = 0 where a, c are not linked).
    Paths over an unlinked pair are all posed at once; those over a linked pair are added only when
    a solution breaks them (cutting planes), and the program is solved again until a solution keeps
    every one. That solution is optimal for the full program: it is feasible there, and no partition
    beats the optimum of a program with fewer constraints."""
    from scipy.optimize import Bounds, LinearConstraint, milp  # lazily: the rest of the core runs without scipy
    from scipy.sparse import csr_array

    deadline = time.monotonic() + time_limit_s
    c = len(comp)
    linked = mutual[np.ix_(comp, comp)] & ~np.eye(c, dtype=bool)
    ia, ic = np.nonzero(np.triu(linked))
    if len(ia) == 0:
        return [[j] for j in comp]
    index = np.full((c, c), -1)
    index[ia, ic] = index[ic, ia] = np.arange(len(ia))
    # paths a-b-c with a, c unlinked: y[a, b] + y[b, c] <= 1
    rows = [(index[a, b], index[b, d], -1) for a, d in zip(*np.nonzero(np.triu(~linked, 1)))
            for b in np.nonzero(linked[a] & linked[d])[0]]
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        constraints = []
        if rows:
            r = np.asarray(rows)
            n = len(r)
            cols = np.concatenate([r[:, 0], r[:, 1], r[r[:, 2] >= 0, 2]])
            at = np.concatenate([np.arange(n), np.arange(n), np.nonzero(r[:, 2] >= 0)[0]])
            coef = np.concatenate([np.ones(2 * n), -np.ones(int((r[:, 2] >= 0).sum()))])
            constraints = [LinearConstraint(csr_array((coef, (at, cols)), shape=(n, len(ia))), -np.inf, 1.0)]
        res = milp(-np.ones(len(ia)), integrality=np.ones(len(ia)), bounds=Bounds(0, 1), constraints=constraints,
                   options={"time_limit": left, "mip_rel_gap": 0.0})
        if res.status != 0:  # 1: time or node limit; anything else: not proved optimal either
            return None
        together = np.zeros((c, c), dtype=bool)
        chosen = res.x > 0.5
        together[ia[chosen], ic[chosen]] = together[ic[chosen], ia[chosen]] = True
        # broken transitivity: a, d share a neighbour b in `together` but not a block
        broken = [(index[a, b], index[b, d], index[a, d]) for a, d in zip(*np.nonzero(np.triu(~together, 1)))
                  for b in np.nonzero(together[a] & together[d])[0]]
        if not broken:
            break
        rows += broken
    blocks, seen = [], set()
    for i in range(c):  # together is now an equivalence (plus the diagonal): its classes are the blocks
        if i not in seen:
            block = [i] + [j for j in np.nonzero(together[i])[0].tolist() if j != i]
            seen.update(block)
            blocks.append([comp[j] for j in block])
    return blocks


def greedy_clusters(candidates: list[int], mutual: np.ndarray) -> list[list[int]]:
    """The AFCC-style greedy rule, the fallback for components above EXACT_MAX_LABELS whose exact
    partition the solver did not prove in time (`milp_partition`): visit candidates in
    order (largest diagonal first); each unassigned one opens a block that every later unassigned
    candidate joins if it is mutually linked to all members. Known failure: it can split a clique
    badly (a 0-1 link plus a clique {1, 2, 3}, equal diagonals, gives {0, 1}, {2, 3} with signal 8
    instead of {0}, {1, 2, 3} with signal 10), so noise is over- and signal under-counted there."""
    assigned: set[int] = set()
    out = []
    for j in candidates:
        if j in assigned:
            continue
        members = [j]
        assigned.add(j)
        for c in candidates:
            if c not in assigned and all(mutual[a, c] for a in members):
                members.append(c)
                assigned.add(c)
        out.append(members)
    return out


def membership(clusters: list[list[list[int]]], num_labels: int) -> np.ndarray:
    """(items, L) Boolean: True where label k is in a cluster of item i (a node, or a head). The
    ANDC mask is its transpose; a head's label set is its row."""
    a = np.zeros((len(clusters), num_labels), dtype=bool)
    for i, cs in enumerate(clusters):
        for s in cs:
            a[i, s] = True
    return a
