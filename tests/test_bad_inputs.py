"""The bad-input corpus (tests/bad_inputs/*.yaml, first line `# expect: <text>`): every file is
refused by `snp-service run` with exit code 2, one message naming the file and what was expected,
no traceback, and nothing computed or written (no results folder, no generated data)."""

from pathlib import Path

import pytest

from snp_service.cli import main

CORPUS = sorted((Path(__file__).parent / "bad_inputs").glob("*.yaml"))


def test_the_corpus_control_is_accepted(tmp_path, capsys):
    """A corpus file with its one defect repaired (batch_zero.yaml with batch_size 4), through the same
    materialisation, validates: the refusals below come from each file's defect, not from the
    harness or from a validator that refuses everything."""
    src = Path(__file__).parent / "bad_inputs" / "batch_zero.yaml"
    assert "  batch_size: 0\n" in src.read_text()
    good = tmp_path / "src" / "good.yaml"
    good.parent.mkdir()
    good.write_text(src.read_text().replace("# expect: train.batch_size", "# expect: nothing")
                    .replace("  batch_size: 0\n", "  batch_size: 4\n"))
    path, _ = _materialise(good, tmp_path)
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def _materialise(src: Path, tmp: Path) -> tuple[Path, str]:
    raw = src.read_bytes()
    first, _, _ = raw.partition(b"\n")
    expect = first.decode().removeprefix("# expect: ").strip()
    (tmp / "empty").mkdir()
    (tmp / "corrupt.tar.gz").write_bytes(b"\x1f\x8b\x08\x00 this is not really a gzip stream" * 10)
    (tmp / "notes.txt").write_text("not an archive")
    if b".pth'" in raw:
        _checkpoints(tmp)
    if b"@TMP@/loopa" in raw:  # a symbolic-link loop
        (tmp / "loopa").symlink_to(tmp / "loopb")
        (tmp / "loopb").symlink_to(tmp / "loopa")
    path = tmp / src.name
    path.write_bytes(raw.replace(b"@TMP@", str(tmp).encode()))
    return path, expect


def _checkpoints(tmp: Path) -> None:
    """Checkpoints that do not fit the corpus's model (cct_2, 1 layer, 32 wide, 4 classes, 32 px)."""
    import argparse

    import torch

    from snp_service.spec import ModelSpec

    small = dict(name="cct_2_3x2_32", num_layers=1, embedding_dim=32, num_heads=2)
    torch.save(ModelSpec(name="cct_2_3x2_32").build(4, 32).state_dict(), tmp / "wrong_arch.pth")
    torch.save(ModelSpec(**small).build(7, 32).state_dict(), tmp / "wrong_classes.pth")
    torch.save(ModelSpec(**small).build(4, 64).state_dict(), tmp / "wrong_size.pth")
    (tmp / "not_checkpoint.pth").write_text("these are notes, not weights")
    torch.save({"model": ModelSpec(**small).build(4, 32).state_dict(), "args": argparse.Namespace(lr=1)},
               tmp / "unsafe.pth")


@pytest.mark.parametrize("src", CORPUS, ids=lambda p: p.stem)
def test_bad_input_is_refused_cleanly(src, tmp_path, capsys, cache_env, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    path, expect = _materialise(src, tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert expect in err, err
    assert "Traceback" not in err and err.startswith("snp-service: error: ")
    assert str(path) in err or "dataset" in err  # spec errors name the file; data errors name the dataset
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()
    assert {p for p in tmp_path.rglob("*")} == before  # nothing computed or written
