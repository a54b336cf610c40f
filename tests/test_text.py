"""Text datasets, the tokenizer and the text models (issue 32): the reader on small generated files
(both formats, archive and folder, the bad inputs), tokenizer determinism across processes, padding
invariance, per-head capture against the module's own computation, padded positions out of readouts."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from snp_service.data import build_datasets
from snp_service.errors import DatasetError, SpecError
from snp_service.models import TextConfig, create_model, list_models, measurement_points, model_config
from snp_service.readout import Readout, capture
from snp_service.spec import DatasetSpec, load_spec, spec_from_dict
from snp_service.text import MAX_TEXT_CHARS
from tests.conftest import REPO, tiny_job
from tests.text_data import archive_of, texts_and_labels, write_split, write_text_dataset

TEXT_MODELS = [n for n in list_models() if isinstance(model_config(n), TextConfig)]


def text_spec(root, **kw) -> DatasetSpec:
    return DatasetSpec(name="text", root=str(root), subset="tiny", max_length=16,
                       tokenizer={"vocab_size": 64, "min_frequency": 1}, **kw)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_folder_and_archive_read_the_same_dataset(tmp_path, cache_env, fmt):
    root = write_text_dataset(tmp_path / "d", fmt)
    archive = archive_of(root, tmp_path / "text.tar.gz")
    a = build_datasets(text_spec(root, row_filter="in_scope"))
    b = build_datasets(text_spec(archive, row_filter="in_scope"))
    assert a.classes == b.classes == [f"intent_{k}" for k in range(4)]
    assert torch.equal(a.train.ids, b.train.ids) and torch.equal(a.eval.ids, b.eval.ids)
    assert a.train.targets == b.train.targets and len(a.train) == 4 * 40 and len(a.eval) == 4 * 12
    assert a.text.tokenizer_json == b.text.tokenizer_json
    assert a.describe()["tokenizer_sha256"] == b.describe()["tokenizer_sha256"]
    rows = texts_and_labels(4, 40, 0)
    kept = [r for r in rows if r["in_scope"]]
    assert [a.classes[t] for t in a.train.targets] == [r["label"] for r in kept]
    lengths = (a.train.ids != 0).sum(1)
    assert (lengths > 0).all() and (a.train.ids[:, -1] == 0).any()  # padded rows exist, none empty


def test_without_the_row_filter_the_out_of_scope_label_is_a_class(tmp_path, cache_env):
    b = build_datasets(text_spec(write_text_dataset(tmp_path / "d")))
    assert b.classes == [f"intent_{k}" for k in range(4)] + ["oos"] and len(b.train) == 4 * 41


def test_the_format_setting_picks_the_file(tmp_path, cache_env):
    root = write_text_dataset(tmp_path / "d", "jsonl")
    write_split(root / "text-data" / "tiny" / "train.parquet", texts_and_labels(3, 5, 9))
    write_split(root / "text-data" / "tiny" / "test.parquet", texts_and_labels(3, 5, 10))
    assert build_datasets(text_spec(root)).num_classes == 4  # auto: parquet where present
    assert build_datasets(text_spec(root, file_format="jsonl")).num_classes == 5


def _damage(tmp_path, fmt, rows_train=None, rows_test=None, raw_train: bytes | None = None):
    folder = tmp_path / "d" / "text-data" / "tiny"
    write_split(folder / f"train.{fmt}", rows_train or texts_and_labels(3, 5, 0))
    write_split(folder / f"test.{fmt}", rows_test or texts_and_labels(3, 5, 1))
    if raw_train is not None:
        (folder / f"train.{fmt}").write_bytes(raw_train)
    return tmp_path / "d"


GOOD = texts_and_labels(3, 5, 0)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
@pytest.mark.parametrize("case, train, test, message", [
    ("missing column", [{k: v for k, v in r.items() if k != "label"} for r in GOOD], None, "'label'"),
    ("empty text", [{**GOOD[0], "text": "   "}] + GOOD[1:], None, "the text is empty"),
    ("huge row", [{**GOOD[0], "text": "a " * MAX_TEXT_CHARS}] + GOOD[1:], None, r"characters \(at most"),
    ("null label", [{**GOOD[0], "label": None}] + GOOD[1:], None, "not a string"),
    ("number text", [{**GOOD[0], "text": 7}] + GOOD[1:], None, "not a string"),
    ("test-only label", None, GOOD + [{"text": "new words", "label": "never_trained", "in_scope": True}],
     "'never_trained' not in the training split"),
])
def test_bad_inputs_are_one_message_before_compute(tmp_path, cache_env, fmt, case, train, test, message):
    if case == "number text" and fmt == "parquet":
        pytest.skip("a Parquet column holds one type")
    root = _damage(tmp_path, fmt, train, test)
    with pytest.raises(DatasetError, match=message) as e:
        build_datasets(text_spec(root))
    assert f"train.{fmt}" in str(e.value) or f"test.{fmt}" in str(e.value)


def test_non_utf8_and_broken_lines_name_the_line(tmp_path, cache_env):
    lines = b"".join(json.dumps(r).encode() + b"\n" for r in GOOD)
    root = _damage(tmp_path, "jsonl", raw_train=lines + b'{"text": "caf\xe9", "label": "intent_0"}\n')
    with pytest.raises(DatasetError, match=rf"train.jsonl, line {len(GOOD) + 1}: not UTF-8"):
        build_datasets(text_spec(root))
    root = _damage(tmp_path, "jsonl", raw_train=lines + b'{"text": "cut short\n')
    with pytest.raises(DatasetError, match=rf"line {len(GOOD) + 1}: not a JSON object"):
        build_datasets(text_spec(root))


def test_row_filter_rules(tmp_path, cache_env):
    root = _damage(tmp_path, "jsonl", [{**r, "in_scope": "yes"} for r in GOOD])
    with pytest.raises(DatasetError, match="holds 'yes', not true or false"):
        build_datasets(text_spec(root, row_filter="in_scope"))
    root = _damage(tmp_path, "jsonl", [{**r, "in_scope": False} for r in GOOD])
    with pytest.raises(DatasetError, match="no rows where 'in_scope' is true"):
        build_datasets(text_spec(root, row_filter="in_scope"))
    with pytest.raises(DatasetError, match="no column 'domain'"):
        build_datasets(text_spec(write_text_dataset(tmp_path / "p"), row_filter="domain"))


def test_missing_subset_or_split_is_named(tmp_path, cache_env):
    root = write_text_dataset(tmp_path / "d")
    with pytest.raises(DatasetError, match="no folder 'other'.*found: text-data"):
        build_datasets(DatasetSpec(name="text", root=str(root), subset="other"))
    (root / "text-data" / "tiny" / "test.parquet").unlink()
    with pytest.raises(DatasetError, match="no test.parquet or test.jsonl"):
        build_datasets(text_spec(root))


def test_text_settings_belong_to_text_datasets_and_text_models_to_text_data(tmp_path):
    root = write_text_dataset(tmp_path / "d")
    with pytest.raises(SpecError, match="max_length: only for name: text"):
        spec_from_dict(tiny_job(tmp_path, **{"dataset.max_length": 32}))
    with pytest.raises(SpecError, match="image_size: image settings"):
        spec_from_dict(tiny_job(tmp_path, dataset={"name": "text", "root": str(root), "image_size": 64},
                                model={"name": "text_cct_2_k2"}))
    with pytest.raises(SpecError, match="text_cct_2_k2 is a text model"):
        spec_from_dict(tiny_job(tmp_path, **{"model": {"name": "text_cct_2_k2"}}))
    with pytest.raises(SpecError, match="cct_2_3x2_32 is an image model"):
        spec_from_dict(tiny_job(tmp_path, dataset={"name": "text", "root": str(root)}))


def test_text_settings_are_part_of_a_text_jobs_id(tmp_path):
    root = write_text_dataset(tmp_path / "d")
    base = tiny_job(tmp_path, dataset={"name": "text", "root": str(root), "subset": "tiny"},
                    model={"name": "text_cct_2_k2"})
    ids = {spec_from_dict(base).job_id()}
    for over in ({"max_length": 32}, {"tokenizer": {"vocab_size": 100}}, {"tokenizer": {"kind": "word"}},
                 {"row_filter": "in_scope"}, {"text_column": "label"}):
        ids.add(spec_from_dict({**base, "dataset": {**base["dataset"], **over}}).job_id())
    assert len(ids) == 6
    again = spec_from_dict(spec_from_dict(base).model_dump(mode="json"))  # a dumped spec validates again
    assert again.job_id() == spec_from_dict(base).job_id()


@pytest.mark.parametrize("kind", ["bpe", "word"])
def test_the_tokenizer_is_the_same_in_every_process(tmp_path, kind):
    """Learnt in three fresh processes (the library's WordPiece trainer fails this; it is not offered)."""
    texts = [r["text"] for r in texts_and_labels(6, 30, 0)] + ["Unusual WORDS, accents: café naïve!"] * 2
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    code = ("import json, sys; from snp_service.text import learn_tokenizer; "
            f"t = json.load(open({str(tmp_path / 'texts.json')!r})); "
            f"sys.stdout.write(learn_tokenizer(t, {kind!r}, 40, 1, True).to_str())")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=REPO).stdout for _ in range(3)}
    assert len(runs) == 1
    vocab = json.loads(runs.pop())["model"]["vocab"]
    assert vocab["[PAD]"] == 0 and vocab["[UNK]"] == 1 and len(vocab) <= 40


def test_the_tokenizer_sees_the_training_split_only(tmp_path, cache_env):
    root = _damage(tmp_path, "jsonl", rows_test=GOOD + [{"text": "zebra zebra zebra", "label": "intent_0"}])
    b = build_datasets(DatasetSpec(name="text", root=str(root), subset="tiny", max_length=8,
                                   tokenizer={"kind": "word", "min_frequency": 1}))
    assert "zebra" not in json.loads(b.text.tokenizer_json)["model"]["vocab"]
    assert b.eval.ids[-1, :3].tolist() == [1, 1, 1]  # [UNK]


def _padded_batch(vocab: int, size: int, lengths: list[int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), size), generator=g)
    for i, n in enumerate(lengths):
        ids[i, n:] = 0
    return ids


@pytest.mark.parametrize("attention", ["sdpa", "reference"])
@pytest.mark.parametrize("name", TEXT_MODELS)
def test_a_padded_batch_gives_the_unpadded_logits(name, attention):
    torch.manual_seed(0)
    model = create_model(name, 5, 24, vocab_size=60, attention=attention).eval()
    ids = _padded_batch(60, 24, [24, 1, 7, 13, 2])
    with torch.no_grad():
        batch = model(ids)
        alone = torch.cat([model(ids[i:i + 1, :int((ids[i] != 0).sum())]) for i in range(len(ids))])
        words_for_padding = model(ids.masked_fill(ids == 0, 5))
    torch.testing.assert_close(batch, alone, atol=2e-5, rtol=1e-5)
    # not vacuous: the same positions holding words instead of padding change every padded row's logits
    assert all(not torch.allclose(words_for_padding[i], batch[i], atol=1e-4) for i in range(1, len(ids)))


def test_sdpa_and_reference_attention_agree_with_padding():
    torch.manual_seed(0)
    ref = create_model("text_cct_2_k2", 5, 24, vocab_size=60, attention="reference").eval()
    fast = create_model("text_cct_2_k2", 5, 24, vocab_size=60, attention="sdpa").eval()
    fast.load_state_dict(ref.state_dict())
    ids = _padded_batch(60, 24, [24, 3, 11])
    with torch.no_grad():
        torch.testing.assert_close(fast(ids), ref(ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["text_cct_2_k2", "text_transformer_2"])
def test_per_head_capture_is_the_modules_own_attention(tmp_path, name):
    """blocks.0.attn.heads as captured (the sdpa path, float16 file) = each head's output as the module
    computes it in its explicit formulation (attention.kind reference: softmax(q k^T / sqrt(d)) v over
    the real keys) in a plain forward pass; padded positions NaN."""
    torch.manual_seed(0)
    model = create_model(name, 4, 24, vocab_size=60).eval()
    ids = _padded_batch(60, 24, [24, 5, 12, 1])
    dataset = torch.utils.data.TensorDataset(ids, torch.arange(4))
    feats = capture(model, dataset, ["blocks.0.attn.heads"], tmp_path / "f").points["blocks.0.attn.heads"]
    attn = model.blocks[0].attn
    attn.kind = "reference"
    seen = {}
    hook = attn.heads.register_forward_hook(lambda _m, _i, out: seen.setdefault("heads", out.detach().clone()))
    with torch.no_grad():
        model(ids)
    hook.remove()
    mask = model.position_masks(ids)["blocks.0.attn.heads"]
    d = attn.head_dim
    got = torch.from_numpy(np.asarray(feats, dtype=np.float32)).transpose(1, 2)  # (B, N, D)
    for head in range(attn.num_heads):
        cols = slice(head * d, (head + 1) * d)
        for i in range(len(ids)):
            n = int(mask[i].sum())
            torch.testing.assert_close(got[i, :n, cols], seen["heads"][i, :n, cols], atol=2e-3, rtol=2e-3)
            assert torch.isnan(got[i, n:, cols]).all()


@pytest.mark.parametrize("kind", ["seqpool", "flatten"])
def test_readouts_and_fields_exclude_padded_positions(kind):
    """A readout on NaN-padded features gives what it gives on the real positions alone."""
    from snp_service.snp import fields

    torch.manual_seed(0)
    feats = torch.randn(3, 6, 10)
    lengths = [10, 4, 1]
    padded = feats.clone()
    for i, n in enumerate(lengths):
        padded[i, :, n:] = float("nan")
    readout = Readout(6, 10, 5, kind)
    out, acts = readout(padded), readout.node_activations(padded)
    assert torch.isfinite(out).all()
    for i, n in enumerate(lengths):
        if kind == "seqpool":
            alone = readout.node_activations(feats[i:i + 1, :, :n])
            torch.testing.assert_close(acts[i:i + 1], alone)
            f_alone = fields(alone, readout.weight)
        else:
            f_alone = fields(feats[i:i + 1, :, :n], readout.weight[:, :, :n])
        torch.testing.assert_close(fields(acts[i:i + 1], readout.weight), f_alone)
        torch.testing.assert_close(out[i], f_alone.sum(1)[0])


def test_the_registry_points_match_the_text_modules():
    for name in TEXT_MODELS:
        model = create_model(name, 3, 40, vocab_size=30)
        masks = model.position_masks(_padded_batch(30, 40, [40, 9]))
        info = measurement_points(model_config(name), 40)
        assert list(model.point_modules()) == list(info) == list(masks)
        assert all(masks[p].shape == (2, info[p].positions) for p in info)
        assert all(masks[p][0].all() and not masks[p][1].all() for p in info)


@pytest.mark.skipif(not (REPO.parent / "shared" / "datasets" / "text-classification.tar.gz").exists(),
                    reason="needs the text archive in ../shared/datasets (the jobs read it from there)")
def test_the_text_jobs_validate():
    for job in ("banking77_textcct.yaml", "clinc150_textcct.yaml"):
        spec = load_spec(REPO / "jobs" / job)
        assert spec.dataset.name == "text" and isinstance(spec.model.config(), TextConfig)
        assert yaml.safe_load((REPO / "jobs" / job).read_text())["dataset"]["root"].endswith(
            "text-classification.tar.gz")


def test_a_text_dataset_from_the_bucket_is_the_local_one(s3_server, tmp_path, cache_env):
    import uuid

    root = write_text_dataset(tmp_path / "d", "jsonl")
    archive = archive_of(root, tmp_path / "text.tar.gz")
    key = f"datasets/{uuid.uuid4().hex[:6]}"
    s3_server.client().upload_file(str(archive), "snp-test", f"{key}/text.tar.gz")
    remote = build_datasets(text_spec(f"s3://snp-test/{key}/text.tar.gz"), endpoint=s3_server.endpoint)
    local = build_datasets(text_spec(root))
    assert remote.classes == local.classes and torch.equal(remote.train.ids, local.train.ids)
    assert remote.text.tokenizer_json == local.text.tokenizer_json


@pytest.mark.parametrize("fmt, packed", [("jsonl", True), ("parquet", False)])
def test_a_text_job_runs_every_stage(tmp_path, ray_cluster, cache_env, fmt, packed):
    """A tiny text job from an archive (JSON lines) and from a folder (Parquet): every stage, the
    tokenizer stored with the job, padded positions out of every point's statistics."""
    import hashlib

    from snp_service import pipeline
    from snp_service.store import FILES, Store

    root = write_text_dataset(tmp_path / "d", fmt)
    if packed:
        root = archive_of(root, tmp_path / "text.tar.gz")
    job = tiny_job(tmp_path, **{
        "dataset": {"name": "text", "root": str(root), "subset": "tiny", "row_filter": "in_scope", "max_length": 16,
                    "num_workers": 0, "tokenizer": {"vocab_size": 64, "min_frequency": 1}},
        "model": {"name": "text_cct_2_k2", "num_layers": 1, "embedding_dim": 32, "num_heads": 4},
        "heads.null_draws": 500, "analysis.readout_epochs": 5, "analysis.bootstrap": 100,
        "pruning": {"enabled": True, "finetune_epochs": 1, "curve_thresholds": [0.2, 0.5, 0.8],
                    "structural_fraction": 0.5, "structural_finetune_epochs": 1}})
    spec = spec_from_dict(job)
    pipeline.run(spec, progress=lambda m: None)
    store = Store.from_spec(spec.storage).job(spec.job_id())
    assert store.exists("manifest.json")
    stored = store.read_bytes(FILES["tokenizer"]).decode()
    assert store.stage_result("data")["tokenizer_sha256"] == hashlib.sha256(stored.encode()).hexdigest()
    assert stored == build_datasets(spec.dataset).text.tokenizer_json
    ev = store.stage_result("evaluate")
    assert ev["accuracy"] > 2 * ev["chance"]  # the cue words are learnt
    layers = store.table("layers")
    assert layers["point"].to_list() == spec.selected_points()
    assert (layers["eval_images"] == 4 * 12).all() and layers["readout_accuracy"].is_finite().all()
    for p in spec.selected_points():
        nodes = store.read_point(p, "nodes")
        assert nodes["eta2"].is_finite().all() and len(nodes) == spec.points()[p].nodes
    assert len(store.table("heads")) == 1 and len(store.table("andc")) > 0
    structural = store.table("structural")
    assert structural["method"].to_list()[0] == "none" and structural["accuracy"].is_finite().all()
