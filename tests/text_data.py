"""Small generated text datasets in the layout snp_service.text reads (tests only)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np

WORDS = ["card", "money", "transfer", "balance", "account", "pin", "limit", "fee", "refund", "atm", "cash", "rate"]
FILLER = ["please", "my", "the", "i", "want", "to", "how", "do", "can", "you", "a", "is", "why", "help"]


def texts_and_labels(num_labels: int, per_label: int, seed: int) -> list[dict]:
    """Rows {text, label, in_scope}: each label has two cue words among filler words of random length,
    so short texts and long ones (padding) both occur; one out-of-scope row per label (`oos`)."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(num_labels):
        cues = [WORDS[(2 * k) % len(WORDS)], WORDS[(2 * k + 1) % len(WORDS)]]
        for _ in range(per_label):
            words = list(rng.choice(FILLER, size=int(rng.integers(1, 9)))) + list(rng.choice(cues, size=2))
            rng.shuffle(words)
            rows.append({"text": " ".join(words), "label": f"intent_{k}", "in_scope": True})
        rows.append({"text": "what is the weather", "label": "oos", "in_scope": False})
    return rows


def write_split(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_text_dataset(root: Path, fmt: str = "parquet", subset: str = "tiny", num_labels: int = 4,
                       train_per_label: int = 40, test_per_label: int = 12, seed: int = 0) -> Path:
    """root/text-data/<subset>/{train,test}.<fmt>; returns root."""
    folder = root / "text-data" / subset
    write_split(folder / f"train.{fmt}", texts_and_labels(num_labels, train_per_label, seed))
    write_split(folder / f"test.{fmt}", texts_and_labels(num_labels, test_per_label, seed + 1))
    return root


def archive_of(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        for p in sorted(folder.iterdir()):
            tf.add(p, arcname=p.name)
    return archive
