"""Capture and readouts: hooks leave the model's output unchanged, features have the point's
shape, a readout trained on captured features learns, and its fields add up to its logits."""

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from snp_service.measure import measure_point, snp_accumulate
from snp_service.models import measurement_points
from snp_service.readout import Readout, as_nodes_positions, capture, readout_accuracy, train_readout
from snp_service.snp import fields, fields_literal
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


def test_measure_point_row():
    g = torch.Generator().manual_seed(2)
    y = np.arange(200) % 4
    x = (torch.randn(4, 16, 3, generator=g)[y] + 0.2 * torch.randn(200, 16, 3, generator=g)).numpy()
    info = measurement_points(ModelSpec(name="cct_2_3x2_32").config(), 32)["blocks.0.mlp.hidden"]
    from dataclasses import replace
    info = replace(info, nodes=16, positions=3)
    r = measure_point(info, x, y, x, y, 4, AnalysisSpec(readout="flatten", readout_epochs=30, readout_lr=1e-2, bootstrap=100))
    assert r.row["readout"] == "flatten" and r.row["readout_accuracy"] > 0.9
    assert r.snp_matrices.shape == (16, 4, 4) and len(r.nodes["clusters"]) == 16
    assert r.snp_matrices.max() <= 1.0 + 1e-9


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
    torch.testing.assert_close(a.raw_matrices, b.raw_matrices, rtol=1e-6, atol=1e-9)


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
