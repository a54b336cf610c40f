"""Capture and readouts: hooks leave the model's output unchanged, features have the point's
shape, a readout trained on captured features learns, and its fields add up to its logits."""

import copy
import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from snp_service.measure import cluster_point, measure_point, snp_accumulate
from snp_service.models import measurement_points
from snp_service.readout import (
    LBFGS_TOLERANCE,
    READOUT_WEIGHT_DECAY,
    Readout,
    as_nodes_positions,
    capture,
    fit_on_features,
    linear_part,
    readout_accuracy,
    solve_linear,
    train_readout,
)
from snp_service.snp import fields, fields_literal
from snp_service.snp import normalise as normalise_
from snp_service.spec import AnalysisSpec, ModelSpec


def _toy(n=96, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    protos = torch.randn(classes, 3, 32, 32, generator=g)
    x = protos[y] + 0.5 * torch.randn(n, 3, 32, 32, generator=g)
    return TensorDataset(x, y)


def test_capture_keeps_output_and_shapes(tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec(name="cct_2_3x2_32", num_layers=1, embedding_dim=32, num_heads=2)
    model = spec.build(3, 32).eval()
    ds = _toy(10)
    before = model(ds.tensors[0])
    info = measurement_points(spec.config(), 32)
    feats = capture(model, ds, list(info), tmp_path, batch_size=4)
    torch.testing.assert_close(model(ds.tensors[0]), before)
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed
    for name, p in info.items():
        assert feats.points[name].shape == (10, p.nodes, p.positions), name
    assert feats.labels.tolist() == ds.tensors[1].tolist()


def test_capture_of_early_points_stops_the_forward_pass_with_the_same_values(tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec(name="cct_2_3x2_32", num_layers=2, embedding_dim=32, num_heads=2)
    model = spec.build(3, 32).eval()
    ds = _toy(10)
    modules = model.point_modules()
    full = {}
    hooks = [modules[p].register_forward_hook(lambda _m, _i, out, p=p: full.__setitem__(p, out))
             for p in ("tokenizer.0", "blocks.0.out")]
    with torch.no_grad():
        model(ds.tensors[0])
    for h in hooks:
        h.remove()
    calls = []
    last = model.blocks[1].register_forward_hook(lambda *_: calls.append(1))
    feats = capture(model, ds, ["tokenizer.0", "blocks.0.out"], tmp_path, batch_size=10)
    last.remove()
    assert calls == []  # the second block never ran
    for p in ("tokenizer.0", "blocks.0.out"):
        expect = as_nodes_positions(full[p]).to(torch.float16).numpy()
        np.testing.assert_array_equal(np.asarray(feats.points[p]), expect)
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("kind", ["seqpool", "flatten"])
def test_readout_learns_and_fields_sum_to_logits(kind):
    g = torch.Generator().manual_seed(0)
    y = np.arange(300) % 3
    centres = torch.randn(3, 8, 5, generator=g)
    x = (centres[y] + 0.3 * torch.randn(300, 8, 5, generator=g)).numpy().astype(np.float16)
    readout = train_readout(x, y, 3, kind, epochs=15, lr=1e-2)
    assert readout_accuracy(readout, x, y) > 0.9
    with torch.no_grad():
        acts = readout.node_activations(torch.from_numpy(x[:20]).float()).double()
        f = fields(acts, readout.weight.double())
        torch.testing.assert_close(f.sum(1), readout(torch.from_numpy(x[:20]).float()).double(), rtol=1e-5, atol=1e-5)
        ref = fields_literal(acts, readout.weight.double())
        assert ((f - ref).abs().max() / ref.abs().max()).item() <= 1e-5


def test_seqpool_readout_matrices_are_rank_one():
    g = torch.Generator().manual_seed(1)
    y = np.arange(120) % 4
    x = torch.randn(120, 6, 7, generator=g).numpy()
    acc = snp_accumulate(Readout(6, 7, 4, "seqpool"), x, y, 4)
    m = acc.snp_matrices()
    assert all(torch.linalg.matrix_rank(m[n], rtol=1e-8) == 1 for n in range(6))


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_measure_point_row(solver):
    g = torch.Generator().manual_seed(2)
    y = np.arange(200) % 4
    x = (torch.randn(4, 16, 3, generator=g)[y] + 0.2 * torch.randn(200, 16, 3, generator=g)).numpy()
    info = measurement_points(ModelSpec(name="cct_2_3x2_32").config(), 32)["blocks.0.mlp.hidden"]
    from dataclasses import replace
    info = replace(info, nodes=16, positions=3)
    spec = AnalysisSpec(readout="flatten", readout_epochs=30, readout_lr=1e-2, bootstrap=100, readout_solver=solver)
    r = measure_point(info, x, y, x, y, 4, spec)
    assert r.row["readout"] == "flatten" and r.row["readout_accuracy"] > 0.9
    assert r.row["readout_solver"] == solver
    if solver == "lbfgs":
        assert r.row["readout_grad_max"] <= LBFGS_TOLERANCE
    else:
        assert r.row["readout_iterations"] is None  # stepped: no solve to record
    c = cluster_point(r.row, r.field_sums, r.label_counts, r.dependence, spec)
    assert c.snp_matrices.shape == (16, 4, 4) and len(c.nodes["clusters"]) == 16
    assert c.snp_matrices.max() <= 1.0 + 1e-9
    assert c.row["readout_accuracy"] == r.row["readout_accuracy"] and c.row["threshold"] == spec.threshold


def test_the_default_readout_solver_is_the_stepped_one():
    """Every job finished before issue 27 stepped its readouts: the default keeps their numbers."""
    assert AnalysisSpec().readout_solver == "adam"
    x, y = _noisy(60, 3, 2, 2, seed=0)
    torch.manual_seed(0)
    a = train_readout(x, y, 2, "seqpool", 2, 1e-2, seed=0)
    b = train_readout(x, y, 2, "seqpool", 2, 1e-2, seed=0, solver="adam")
    assert a.solve is None and all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("normalise", ["max", "centred", "afcc"])
@pytest.mark.parametrize("readout", ["seqpool", "flatten"])
def test_measure_then_cluster_gives_the_single_snp_stage_s_numbers(normalise, readout):
    """Issue 27 split the one snp stage into measure and cluster. With the default (stepped) solver the
    per-layer row (same columns in the same order, plus readout_solver), the per-node table and the
    matrices are exactly what the single stage computed, written out here as it did, also after the
    measure stage's results pass through storage (JSON, parquet, .npy) to the cluster stage."""
    import io
    import json
    from dataclasses import replace

    import polars as pl

    from snp_service.snp import (
        node_statistics,
        normalisation_flags,
        point_label_dependence,
        point_statistics,
    )

    x, y = _noisy(150, 9, 4, 4, seed=5, scale=0.6)
    y = np.where(np.arange(150) < 20, 1, y)  # unbalanced labels: centring is count-weighted
    info = replace(measurement_points(ModelSpec(name="cct_2_3x2_32").config(), 32)["blocks.0.mlp.hidden"],
                   nodes=9, positions=4)
    an = AnalysisSpec(readout=readout, readout_epochs=3, bootstrap=60, normalise=normalise, threshold=0.4)
    r = measure_point(info, x, y, x, y, 4, an)
    stored_row = json.loads(json.dumps(r.row, indent=2, sort_keys=True, default=str))  # measure/<p>/measured.json
    buf = io.BytesIO()
    pl.DataFrame(r.dependence).write_parquet(buf)
    stored_dep = pl.read_parquet(io.BytesIO(buf.getvalue())).to_dict(as_series=False)
    npy = io.BytesIO()
    np.save(npy, r.field_sums.numpy())
    sums = torch.from_numpy(np.load(io.BytesIO(npy.getvalue())))
    c = cluster_point(stored_row, sums, torch.from_numpy(r.label_counts.numpy()), stored_dep, an)

    # the single snp stage before issue 27
    readout_ = train_readout(x, y, 4, readout, an.readout_epochs, an.readout_lr, seed=an.seed)
    accuracy = readout_accuracy(readout_, x, y)
    acc = snp_accumulate(readout_, x, y, 4)
    centred, afcc = normalisation_flags(normalise)
    raw = acc.snp_matrices(centred=centred)
    m = normalise_(raw, afcc=afcc)
    ns = node_statistics(m, an.threshold, an.candidate_order, an.cluster_time_limit_s)
    dep = acc.label_dependence()
    specific, node_means = point_label_dependence(dep, an.fdr)
    stats = point_statistics(ns, an.bootstrap, an.confidence, an.seed, node_means)
    node_acc = acc.node_accuracy().numpy()
    row = {"point": info.name, "kind": info.kind, "nodes": info.nodes, "heads": info.heads, "readout": readout,
           "normalise": normalise, "candidate_order": an.candidate_order, "threshold": an.threshold,
           "readout_accuracy": accuracy, "readout_epochs": an.readout_epochs, "fdr": an.fdr,
           "eval_images": int(acc.counts.sum()), **stats,
           "greedy_fraction": float(ns.greedy.mean()) if len(ns.greedy) else float("nan"),
           "mean_node_accuracy": float(node_acc.mean()), "chance_accuracy": 1.0 / 4}
    nodes = {"node": list(range(info.nodes)), "cluster_size": ns.cluster_size.tolist(),
             "n_clusters": ns.n_clusters.tolist(), "signal": ns.signal.tolist(), "noise": ns.noise.tolist(),
             "node_accuracy": node_acc.tolist(), "eta2": dep.eta2.tolist(), "p_value": dep.p_value.tolist(),
             "label_specific": specific.tolist(), "greedy": ns.greedy.tolist(),
             "clusters": [";".join(",".join(map(str, s)) for s in cl) for cl in ns.clusters]}

    got = {k: v for k, v in c.row.items() if k != "readout_solver"}
    assert list(got) == list(row) and c.row["readout_solver"] == "adam"
    for k, v in row.items():
        assert got[k] == v or (v != v and got[k] != got[k]), k  # nan == nan
    assert c.nodes == nodes
    assert torch.equal(c.raw_matrices, raw) and torch.equal(c.snp_matrices, m)


@pytest.mark.parametrize("readout", ["seqpool", "flatten"])
def test_features_held_as_a_tensor_give_the_same_measurement_as_a_memmap(readout):
    """The device path (features kept in device memory as a tensor; here a CPU tensor) gives the
    memory-mapped path's per-layer row: the same readout training, fields and statistics."""
    g = torch.Generator().manual_seed(3)
    y = np.arange(240) % 4
    x = (torch.randn(4, 12, 5, generator=g)[y] + 0.3 * torch.randn(240, 12, 5, generator=g)).half().numpy()
    info = measurement_points(ModelSpec(name="cct_2_3x2_32").config(), 32)["blocks.0.mlp.hidden"]
    from dataclasses import replace
    info = replace(info, nodes=12, positions=5)
    spec = AnalysisSpec(readout=readout, readout_epochs=5, bootstrap=50)
    a = measure_point(info, x, y, x, y, 4, spec)
    b = measure_point(info, torch.from_numpy(x), y, torch.from_numpy(x), y, 4, spec)
    for k, v in a.row.items():
        if isinstance(v, float) and not np.isnan(v):
            assert b.row[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
    torch.testing.assert_close(a.field_sums, b.field_sums, rtol=1e-6, atol=1e-9)


def test_disk_full_while_capturing_is_a_clear_error_and_leaves_nothing(tmp_path):
    """A file-size limit (as a full disk would) hits the feature cache: SnpError, no partial files."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import resource, signal, sys, torch
        from pathlib import Path
        from torch.utils.data import TensorDataset
        from snp_service.errors import SnpError
        from snp_service.readout import capture
        from snp_service.spec import ModelSpec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        model = ModelSpec(name="cct_2_3x2_32", embedding_dim=32, num_heads=2, num_layers=1).build(4, 32)
        data = TensorDataset(torch.randn(64, 3, 32, 32), torch.arange(64) % 4)
        try:
            capture(model, data, ["tokenizer.0", "blocks.0.out"], Path(r"{tmp_path}") / "feats")
        except SnpError as e:
            print("ERR", e)
            sys.exit(0)
        sys.exit(1)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "capturing features into" in r.stdout and "MB" in r.stdout
    assert not list((tmp_path / "feats").glob("*.npy"))


# ---- the solved readout (issue 27): L-BFGS on the same objective as long stepped training

SOLVED_ACCURACY_TOL = 0.02  # readout accuracy, absolute (docs/METHOD.md 7.10)
SOLVED_ETA2_TOL = 0.02  # per-node label-dependence effect size, largest difference over nodes
SOLVED_OBJECTIVE_TOL = 1e-4  # the solve's objective may exceed long stepped training's by at most this
LONG_EPOCHS = 200  # the AFCC code's readout schedule length


def _noisy(n, nodes, positions, labels, seed, scale=0.25):
    """Features whose label is only partly predictable (no separating readout): the regularised
    optimum is then finite and long stepped training approaches it."""
    g = np.random.default_rng(seed)
    y = np.arange(n) % labels
    protos = np.random.default_rng(99).normal(size=(labels, nodes, positions)) * scale
    return (protos[y] + g.normal(size=(n, nodes, positions))).astype(np.float16), y


def _measured(readout, ev, yev, labels):
    acc = snp_accumulate(readout, ev, yev, labels)
    return readout_accuracy(readout, ev, yev), acc.label_dependence().eta2


@torch.no_grad()
def _objective_and_grad_max(readout, feats, labels, wd, mask=None):
    """The solvers' objective and its largest free gradient component at the readout's W, by autograd
    on the whole batch (no chunks, no optimiser): the reference for solve_linear's record."""
    w = readout.weight.detach().double().clone().requires_grad_(True)
    with torch.enable_grad():  # also from callers under no_grad
        logits = torch.from_numpy(np.asarray(feats)).double().flatten(1) @ w.flatten(1).T
        value = torch.nn.functional.cross_entropy(logits, torch.as_tensor(labels)) + 0.5 * wd * w.pow(2).sum()
        value.backward()
    grad = w.grad if mask is None else w.grad * mask[:, :, None]
    return float(value.detach()), float(grad.abs().max())


def _objective(readout, feats, labels):
    """Mean cross-entropy + wd/2 |W|^2 of W on the features (the solvers' common objective)."""
    return _objective_and_grad_max(readout, feats, labels, READOUT_WEIGHT_DECAY)[0]


def _long_adam(readout, feats, labels, epochs=LONG_EPOCHS):
    fit_on_features(readout, [readout.weight], feats, labels, epochs, 1e-2, READOUT_WEIGHT_DECAY, 0)
    return readout


def _solved_and_stepped(kind, epochs):
    L, N, P = 4, 8, 4
    tr, ytr = _noisy(800, N, P, L, seed=1)
    ev, yev = _noisy(800, N, P, L, seed=2)
    torch.manual_seed(0)
    start = Readout(N, P, L, kind)
    if kind == "seqpool":  # a trained pooling, then frozen for both solvers
        fit_on_features(start, list(start.parameters()), tr, ytr, 2, 1e-2, READOUT_WEIGHT_DECAY, 0)
    solved, stepped = copy.deepcopy(start), copy.deepcopy(start)
    lin_s, acts = linear_part(solved, tr)
    info = solve_linear(lin_s, acts, ytr, READOUT_WEIGHT_DECAY)
    lin_l, acts = linear_part(stepped, tr)
    _long_adam(lin_l, acts, ytr, epochs)
    return info, (_objective(lin_s, acts, ytr), *_measured(solved, ev, yev, L)), \
        (_objective(lin_l, acts, ytr), *_measured(stepped, ev, yev, L)), L


@pytest.mark.parametrize("kind", ["flatten", "seqpool"])
def test_solved_readout_agrees_with_long_stepped_training(kind):
    """The L-BFGS solution of the bias-free linear part against 200 epochs of the stepped solver on the
    same objective (same weight decay), on held-out features: its objective is no higher, its readout
    accuracy and every node's eta2 (a statistic of the node's fields) agree within the tolerances
    docs/METHOD.md states. For seqpool both train W on the same frozen pooling (what lbfgs solves)."""
    info, (obj_s, acc_s, eta_s), (obj_l, acc_l, eta_l), L = _solved_and_stepped(kind, LONG_EPOCHS)
    assert info["converged"] and info["grad_max"] <= LBFGS_TOLERANCE
    assert acc_s > 1.5 / L  # the features carry the label: not two chance-level readouts agreeing
    assert obj_s <= obj_l + SOLVED_OBJECTIVE_TOL
    assert abs(acc_s - acc_l) <= SOLVED_ACCURACY_TOL
    assert np.abs(eta_s - eta_l).max() <= SOLVED_ETA2_TOL


def test_short_stepped_training_is_caught_by_the_same_check():
    """The check tells a converged readout from an unconverged one: 1 epoch of the stepped solver from
    the same start fails the objective or the eta2 tolerance that the solved readout passes."""
    _, (obj_s, _, eta_s), (obj_l, _, eta_l), _ = _solved_and_stepped("flatten", 1)
    assert obj_s < obj_l - SOLVED_OBJECTIVE_TOL or np.abs(eta_s - eta_l).max() > SOLVED_ETA2_TOL


def test_masked_solve_keeps_pruned_connections_at_zero():
    L, N, P = 4, 6, 3
    tr, ytr = _noisy(300, N, P, L, seed=3, scale=0.6)
    torch.manual_seed(0)
    r = Readout(N, P, L, "flatten")
    mask = torch.rand(L, N) > 0.5
    info = solve_linear(r, tr, ytr, 0.0, mask=mask, max_iter=200)
    assert info["iterations"] > 0
    assert (r.weight.detach()[~mask] == 0).all() and (r.weight.detach()[mask] != 0).any()


@pytest.mark.parametrize("masked", [False, True])
def test_the_solve_s_record_is_the_objective_and_gradient_at_the_returned_weight(masked):
    """What every solved readout reports (iterations, evaluations, objective, max |gradient|,
    converged) is true of the weight it returns, checked by autograd outside the solver; features read
    in chunks that do not divide the rows."""
    L, N, P = 3, 5, 2
    tr, ytr = _noisy(301, N, P, L, seed=4)
    torch.manual_seed(0)
    r = Readout(N, P, L, "flatten")
    mask = (torch.rand(L, N) > 0.4) if masked else None
    info = solve_linear(r, tr, ytr, READOUT_WEIGHT_DECAY, chunk=64, mask=mask)
    objective, grad_max = _objective_and_grad_max(r, tr, ytr, READOUT_WEIGHT_DECAY, mask)
    assert info["converged"] and grad_max <= LBFGS_TOLERANCE
    assert info["objective"] == pytest.approx(objective, rel=1e-9)
    assert info["grad_max"] == pytest.approx(grad_max, abs=1e-8)  # W is returned in float32
    assert 1 <= info["iterations"] <= info["evaluations"]
    # the objective at the solution is below that at the start (a zero weight: ln L, nothing decayed)
    assert info["objective"] < math.log(L) - 1e-3


def test_a_solve_stopped_early_says_it_did_not_converge_and_a_looser_tolerance_stops_sooner():
    L, N, P = 3, 5, 2
    tr, ytr = _noisy(300, N, P, L, seed=5)

    def solve(**kw):
        torch.manual_seed(0)
        r = Readout(N, P, L, "flatten")
        return r, solve_linear(r, tr, ytr, READOUT_WEIGHT_DECAY, **kw)

    r, info = solve(max_iter=3)  # torch's LBFGS also stops at 1.25 x max_iter objective evaluations
    assert 1 <= info["iterations"] <= 3 and not info["converged"]
    assert info["grad_max"] > LBFGS_TOLERANCE
    assert info["grad_max"] == pytest.approx(_objective_and_grad_max(r, tr, ytr, READOUT_WEIGHT_DECAY)[1], rel=1e-4)
    _, tight = solve()
    _, loose = solve(tolerance=1e-2)
    assert tight["converged"] and loose["converged"] and loose["grad_max"] <= 1e-2
    assert loose["iterations"] < tight["iterations"]


def test_the_solve_converges_on_badly_scaled_features():
    """Features ten times larger (activations are not normalised): the line search keeps the steps
    bounded, and the solve converges within 200 iterations (without it, unit steps diverge here: the
    objective grew to 6e5)."""
    L, N, P = 3, 5, 2
    tr, ytr = _noisy(300, N, P, L, seed=0)
    tr = (tr.astype(np.float32) * 10).astype(np.float16)
    torch.manual_seed(0)
    r = Readout(N, P, L, "flatten")
    info = solve_linear(r, tr, ytr, READOUT_WEIGHT_DECAY, max_iter=200)
    objective, grad_max = _objective_and_grad_max(r, tr, ytr, READOUT_WEIGHT_DECAY)
    assert info["converged"] and grad_max <= LBFGS_TOLERANCE and objective < math.log(L)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("kind", ["flatten", "seqpool"])
def test_the_stepped_readout_is_its_documented_recipe(kind):
    """train_readout's default solver, rebuilt from its parts: the readout drawn after seeding torch with
    the seed, then every parameter trained by fit_on_features for `epochs` epochs at the given lr, weight
    decay READOUT_WEIGHT_DECAY, the same seed and batches of 256 by default (300 images: the last batch is
    short), or of the size given."""
    L, N, P = 3, 5, 4
    tr, ytr = _noisy(300, N, P, L, seed=6)
    got = train_readout(tr, ytr, L, kind, 2, 1e-2, seed=3)
    torch.manual_seed(3)
    want = Readout(N, P, L, kind)
    fit_on_features(want, list(want.parameters()), tr, ytr, 2, 1e-2, READOUT_WEIGHT_DECAY, 3, 256)
    assert _same(got, want) and got.solve is None and not got.training
    got = train_readout(tr, ytr, L, kind, 2, 1e-2, seed=3, batch_size=128)  # another batch size is used
    torch.manual_seed(3)
    want = Readout(N, P, L, kind)
    fit_on_features(want, list(want.parameters()), tr, ytr, 2, 1e-2, READOUT_WEIGHT_DECAY, 3, 128)
    assert _same(got, want)


@pytest.mark.parametrize("pool_epochs", [None, 1])
def test_the_solved_seqpool_readout_trains_its_pooling_for_pool_epochs_then_solves_w(pool_epochs):
    """solver lbfgs, seqpool: the pooling (with W) stepped for pool_epochs epochs (default 2; not
    `epochs`), then frozen, and W solved on the pooled values."""
    L, N, P = 3, 5, 4
    tr, ytr = _noisy(300, N, P, L, seed=7)
    kw = {} if pool_epochs is None else {"pool_epochs": pool_epochs}
    got = train_readout(tr, ytr, L, "seqpool", 5, 1e-2, seed=1, solver="lbfgs", **kw)
    torch.manual_seed(1)
    want = Readout(N, P, L, "seqpool")
    fit_on_features(want, list(want.parameters()), tr, ytr, pool_epochs or 2, 1e-2, READOUT_WEIGHT_DECAY, 1, 256)
    linear, pooled = linear_part(want, tr)
    record = solve_linear(linear, pooled, ytr, READOUT_WEIGHT_DECAY)
    assert _same(got, want) and got.solve == record and record["converged"]


def test_the_solved_flatten_readout_is_solved_from_its_seeded_start_without_stepping():
    L, N, P = 3, 5, 4
    tr, ytr = _noisy(300, N, P, L, seed=8)
    got = train_readout(tr, ytr, L, "flatten", 5, 1e-2, seed=2, solver="lbfgs")
    torch.manual_seed(2)
    want = Readout(N, P, L, "flatten")
    record = solve_linear(want, tr, ytr, READOUT_WEIGHT_DECAY)
    assert _same(got, want) and got.solve == record


def test_fit_on_features_is_adam_with_coupled_weight_decay_and_cosine_decay_over_every_step():
    """The stepped recipe written out with torch's own parts: Adam (lr, coupled L2 weight decay), a
    cosine schedule over epochs x ceil(n / batch) steps, each epoch's seeded permutation cut into
    batches (sorted within a batch). 300 images, batch 128: 3 batches an epoch, the last short."""
    L, N, P = 3, 4, 2
    tr, ytr = _noisy(300, N, P, L, seed=9)
    torch.manual_seed(0)
    start = Readout(N, P, L, "flatten")
    got = copy.deepcopy(start)
    steps = []
    fit_on_features(got, [got.weight], tr, ytr, 3, 0.05, 0.01, 4, 128, after_step=lambda: steps.append(1))
    want = copy.deepcopy(start)
    opt = torch.optim.Adam([want.weight], lr=0.05, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=9)
    rng = np.random.default_rng(4)
    x_all, y_all = torch.from_numpy(tr.astype(np.float32)), torch.as_tensor(ytr)
    for _ in range(3):
        order = rng.permutation(300)
        for i in range(0, 300, 128):
            idx = torch.as_tensor(np.sort(order[i:i + 128]))
            opt.zero_grad()
            torch.nn.functional.cross_entropy(want(x_all[idx]), y_all[idx]).backward()
            opt.step()
            sched.step()
    assert len(steps) == 9
    assert torch.allclose(got.weight, want.weight, rtol=0, atol=1e-6)
    assert not torch.allclose(got.weight, start.weight, atol=1e-3)


def test_padded_positions_count_as_zero_and_get_no_pooling_weight():
    """Padded positions (NaN: a text shorter than the longest) are left out: a flatten readout reads
    them as zero, a seqpool readout pools only the real positions, with softmax weights over them."""
    torch.manual_seed(0)
    N, P, L = 4, 5, 3
    x = torch.randn(2, N, P)
    padded = x.clone()
    padded[0, :, 3:] = float("nan")  # image 0 has 3 real positions, image 1 all 5
    flat = Readout(N, P, L, "flatten")
    zeroed = x.clone()
    zeroed[0, :, 3:] = 0.0
    assert torch.equal(flat.node_activations(padded), zeroed)
    pool = Readout(N, P, L, "seqpool")
    got = pool.node_activations(padded)
    for b, real in ((0, 3), (1, 5)):
        feats = x[b, :, :real]  # (N, real)
        weights = torch.softmax(pool.attention_pool(feats.T)[:, 0], dim=0)  # one weight per position
        assert torch.allclose(got[b, :, 0], feats @ weights, atol=1e-6)
    assert torch.isfinite(pool(padded)).all()


@pytest.mark.parametrize("kind, std", [("flatten", 1 / math.sqrt(64 * 16)), ("seqpool", 1 / math.sqrt(64))])
def test_a_readout_starts_from_normal_weights_scaled_by_its_fan_in(kind, std):
    """W ~ N(0, 1 / (nodes x positions it reads)): logits of order one at the start, whatever the width
    (the stepped readout's start, and the solved one's)."""
    torch.manual_seed(0)
    w = Readout(64, 16, 50, kind).weight.detach()
    assert abs(float(w.mean())) < 0.05 * std and float(w.std()) == pytest.approx(std, rel=0.05)


def test_reading_rows_of_a_memory_mapped_file_leaves_none_of_it_resident(tmp_path):
    """load_rows drops the pages it read from this process (madvise DONTNEED): reading a whole 48 MB
    feature file batch by batch leaves at most one batch's pages resident, not the file."""
    from snp_service.readout import batches, load_rows

    path = tmp_path / "feats.npy"
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(3000, 128, 64))
    arr[:] = 1.0
    arr.flush()
    del arr
    feats = np.load(path, mmap_mode="r")

    def resident_kb() -> int:
        lines = open("/proc/self/smaps").read().split("\n")
        heads = [i for i, line in enumerate(lines) if line.endswith(str(path))]
        assert heads, "the feature file is not mapped"
        return sum(int(line.split()[1]) for i in heads for line in lines[i + 1:i + 25]
                   if line.startswith("Rss:"))

    for idx in batches(len(feats), 256, None):
        assert float(load_rows(feats, idx).sum()) == len(idx) * 128 * 64
    assert resident_kb() < 256 * 128 * 64 * 2 // 1024 + 64  # under one batch of rows (4 MB), not 48 MB


def test_unknown_solver_is_refused():
    x, y = _noisy(40, 3, 2, 2, seed=0)
    with pytest.raises(ValueError, match="readout solver"):
        train_readout(x, y, 2, "flatten", 1, 1e-2, solver="newton")


def test_the_measured_sums_give_the_accumulator_s_matrices_for_every_normalisation():
    """The cluster stage builds the raw SNP matrices from the measure stage's stored sums and counts
    (PointResult.raw_matrices, snp.snp_matrices_from): the accumulator's own, centred or not."""
    from dataclasses import replace

    x, y = _noisy(90, 5, 3, 3, seed=4, scale=0.8)
    y = np.where(np.arange(90) < 10, 0, y)  # unbalanced labels: the all-input mean is count-weighted
    info = replace(measurement_points(ModelSpec(name="cct_2_3x2_32").config(), 32)["blocks.0.mlp.hidden"],
                   nodes=5, positions=3)
    r = measure_point(info, x, y, x, y, 3, AnalysisSpec(readout="flatten", readout_epochs=2, bootstrap=0))
    acc = snp_accumulate(r.readout, x, y, 3)
    assert torch.equal(r.raw_matrices("centred"), acc.snp_matrices(centred=True))
    for mode in ("max", "afcc"):
        assert torch.equal(r.raw_matrices(mode), acc.snp_matrices())


def test_solved_masked_finetune_agrees_with_long_stepped_training_under_the_mask():
    """prune.finetune with solver lbfgs against 200 stepped epochs of the same masked objective (the
    readouts' weight decay, the mask re-applied after every step): pruned connections stay exactly
    zero, the objective is no higher, the held-out accuracy agrees within the readouts' tolerance, and
    the solve moved the surviving weights (the masked start is not the answer)."""
    from snp_service.prune import finetune, masked

    L, N, P = 4, 8, 4
    tr, ytr = _noisy(800, N, P, L, seed=5)
    ev, yev = _noisy(800, N, P, L, seed=6)
    torch.manual_seed(0)
    r = Readout(N, P, L, "flatten")
    fit_on_features(r, [r.weight], tr, ytr, 3, 1e-2, READOUT_WEIGHT_DECAY, 0)
    mask = torch.rand(L, N, generator=torch.Generator().manual_seed(1)) > 0.5
    start = masked(r, mask)
    solved = finetune(r, mask, tr, ytr, epochs=3, lr=1e-2, solver="lbfgs")
    stepped = masked(r, mask)
    keep = mask[:, :, None].to(stepped.weight)

    def remask():
        with torch.no_grad():
            stepped.weight.mul_(keep)

    fit_on_features(stepped, [stepped.weight], tr, ytr, LONG_EPOCHS, 1e-2, READOUT_WEIGHT_DECAY, 0, after_step=remask)
    assert (solved.weight.detach()[~mask] == 0).all() and (stepped.weight.detach()[~mask] == 0).all()
    assert not torch.allclose(solved.weight, start.weight)
    # optimal for the readouts' own objective (with its weight decay) over the surviving weights
    w = solved.weight.detach().double().clone().requires_grad_(True)
    logits = torch.from_numpy(np.asarray(tr)).double().flatten(1) @ w.flatten(1).T
    (torch.nn.functional.cross_entropy(logits, torch.as_tensor(ytr)) + 0.5 * READOUT_WEIGHT_DECAY * w.pow(2).sum()).backward()
    assert float((w.grad * mask[:, :, None]).abs().max()) <= 1e-5
    assert _objective(solved, tr, ytr) <= _objective(stepped, tr, ytr) + SOLVED_OBJECTIVE_TOL
    acc_solved, acc_stepped = readout_accuracy(solved, ev, yev), readout_accuracy(stepped, ev, yev)
    assert acc_solved > 1.5 / L
    assert abs(acc_solved - acc_stepped) <= SOLVED_ACCURACY_TOL


def test_an_unknown_readout_kind_is_refused_not_read_as_flatten():
    with pytest.raises(ValueError, match="readout kind 'attention'"):
        Readout(4, 3, 2, "attention")
    assert Readout(4, 3, 2, "flatten").weight.shape == (2, 4, 3) and Readout(4, 3, 2, "seqpool").weight.shape == (2, 4, 1)
