"""bench/paper_gpu.py (issue 21) in its --smoke mode, on CPU: the script that trains the paper's
network and runs the whole analysis on a GPU machine runs here end to end on tiny data (two points
instead of 22, so the suite stays short) and writes its tables, figure and facts."""

import json

import pandas as pd
import pytest

from tests.conftest import SHARED_CIFAR10


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR10.exists(), reason="needs the real CIFAR-10 archive in ../shared/datasets")
def test_paper_gpu_smoke_runs_the_whole_path(tmp_path):
    from bench import paper_gpu

    out = tmp_path / "paper"
    assert paper_gpu.main(["--smoke", "--archive", str(SHARED_CIFAR10), "--out", str(out),
                           "--points", "tokenizer.0,blocks.6.attn.heads"]) == 0
    facts = json.loads((out / "facts.json").read_text())
    assert facts["smoke"] and facts["epochs"] == 1 and 0 <= facts["test_accuracy"] <= 1
    assert facts["analysis_in_training_epochs"] > 0 and facts["loop_vs_bare"] > 0
    layers = pd.read_parquet(out / "layers.parquet")
    assert layers["point"].tolist() == ["tokenizer.0", "blocks.6.attn.heads"]
    assert layers["label_specific_fraction"].notna().all() and layers["effect_size"].between(0, 1).all()
    assert (layers["readout"] == ["flatten", "seqpool"]).all()
    heads = pd.read_parquet(out / "heads.parquet")
    assert heads["heads"].tolist() == [4]
    andc = pd.read_parquet(out / "andc.parquet")
    assert set(andc["method"]) == {"andc", "random", "magnitude"} and andc["selection"].str.startswith("heldout").all()
    assert (out / "layers.png").stat().st_size > 10_000


def test_the_gpu_script_needs_none_of_the_shell_packages():
    """The GPU machine has torch, numpy, pandas and matplotlib but no Ray, pydantic, polars or scipy:
    the script and the pure core it uses import without them."""
    import subprocess
    import sys

    from tests.conftest import REPO

    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('pydantic', 'polars', 'scipy', 'ray', 'yaml', 'boto3'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import bench.paper_gpu
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
