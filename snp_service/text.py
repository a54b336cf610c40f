"""Text datasets (issue 32): split files read and checked, a tokenizer learnt from the training split,
texts as padded word ids.

Layout: a folder (`dataset.subset`, at the dataset root's top level or one folder down; the root
itself when no subset is named) holding `train` and `test` split files, each `<split>.parquet` or
`<split>.jsonl` (JSON lines: one object a line), with a text column and a label column (strings).
`dataset.row_filter` names a boolean column: only rows where it is true are kept (CLINC150's
`in_scope`). Labels are ordered like image class folders (sorted), the index of a label is its class.

The rules, each checked before any compute and refused with one message naming the file, row and
column: a missing column, a value that is not a string (a null, a number), an empty or all-blank
text, a text over MAX_TEXT_CHARS characters, bytes that are not UTF-8, a label of the test split that
the training split does not have, a split left empty (after the row filter), a text the tokenizer
turns into no ids at all. A text longer than `dataset.max_length` ids is cut there (documented rule,
not an error: the sequence length is a setting).

The tokenizer is learnt from the training split alone (the `tokenizers` library's BPE trainer, or a
word-level vocabulary), on the training texts in file order: these trainers make no random choice,
so the same split and settings give the same tokenizer in every process (tests/test_text.py checks it
across processes; the library's WordPiece trainer fails that check, a different vocabulary in each
process, so it is not offered). No seed enters. [PAD] is id 0 and [UNK] id 1 in every vocabulary
(snp_service.models.text.PAD_ID).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from snp_service.errors import DatasetError

MAX_TEXT_CHARS = 10_000  # a longer "text" is a document or a damaged row, not an utterance to classify
SPECIAL_TOKENS = ["[PAD]", "[UNK]"]
SPLITS = ("train", "test")


@dataclass
class TextSplit:
    texts: list[str]
    labels: list[str]
    source: str  # the file, for messages


def split_file(folder: Path, split: str, file_format: str) -> Path:
    """The split's file in `folder`: <split>.parquet or <split>.jsonl (auto: parquet where present)."""
    formats = ("parquet", "jsonl") if file_format == "auto" else (file_format,)
    for fmt in formats:
        if (folder / f"{split}.{fmt}").is_file():
            return folder / f"{split}.{fmt}"
    raise DatasetError(f"text dataset {folder}: no {' or '.join(f'{split}.{f}' for f in formats)}; a text dataset "
                       "folder holds train and test split files (.parquet or .jsonl)")


def find_folder(base: Path, subset: str | None, origin: str) -> Path:
    """The folder holding the split files: `subset` at base's top level or one folder down, or base."""
    if subset is None:
        return base
    candidates = [base / subset] + sorted(p / subset for p in base.iterdir() if p.is_dir())
    for c in candidates:
        if c.is_dir():
            return c
    found = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    raise DatasetError(f"text dataset {origin}: no folder {subset!r} at its top level or one folder down (found: "
                       f"{', '.join(found) or 'no folders'}); set dataset.subset to one of them")


def _rows_parquet(path: Path, columns: list[str]) -> dict[str, list]:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise DatasetError(f"{path}: no column {', '.join(map(repr, missing))} (it has {', '.join(schema.names)}); "
                               "set dataset.text_column / label_column / row_filter")
        table = pq.read_table(path, columns=columns)
        return {c: table.column(c).to_pylist() for c in columns}
    except DatasetError:
        raise
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: a text is not UTF-8 ({e.reason} at byte {e.start}); texts must be UTF-8") from None
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
        raise DatasetError(f"{path}: not a readable Parquet file ({str(e)[:200]})") from None


def _rows_jsonl(path: Path, columns: list[str]) -> dict[str, list]:
    out: dict[str, list] = {c: [] for c in columns}
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise DatasetError(f"{path}, line {n}: not UTF-8 ({e.reason} at byte {e.start}); texts must be "
                                   "UTF-8") from None
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}, line {n}: not a JSON object ({e.msg}); a .jsonl file holds one JSON "
                                   "object a line") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}, line {n}: a {type(row).__name__}, not a JSON object")
            missing = [c for c in columns if c not in row]
            if missing:
                raise DatasetError(f"{path}, line {n}: no {', '.join(map(repr, missing))} (it has "
                                   f"{', '.join(map(repr, row))}); set dataset.text_column / label_column / row_filter")
            for c in columns:
                out[c].append(row[c])
    return out


def read_split(path: Path, text_column: str, label_column: str, row_filter: str | None) -> TextSplit:
    """A split file's texts and labels (rows where `row_filter` is true), checked by the module's rules."""
    columns = [text_column, label_column] + ([row_filter] if row_filter else [])
    cols = _rows_parquet(path, columns) if path.suffix == ".parquet" else _rows_jsonl(path, columns)
    where = "row" if path.suffix == ".parquet" else "record"
    texts, labels = [], []
    for i, (text, label) in enumerate(zip(cols[text_column], cols[label_column])):
        if row_filter:
            keep = cols[row_filter][i]
            if not isinstance(keep, bool):
                raise DatasetError(f"{path}, {where} {i + 1}: row_filter column {row_filter!r} holds {keep!r}, not "
                                   "true or false")
            if not keep:
                continue
        for name, value in ((text_column, text), (label_column, label)):
            if not isinstance(value, str):
                raise DatasetError(f"{path}, {where} {i + 1}: column {name!r} holds {value!r:.60}, not a string")
        if not text.strip():
            raise DatasetError(f"{path}, {where} {i + 1}: the text is empty; remove the row")
        if len(text) > MAX_TEXT_CHARS:
            raise DatasetError(f"{path}, {where} {i + 1}: a text of {len(text):,} characters (at most "
                               f"{MAX_TEXT_CHARS:,}); texts are utterances, not documents")
        if not label.strip():
            raise DatasetError(f"{path}, {where} {i + 1}: the label is empty")
        texts.append(text)
        labels.append(label)
    if not texts:
        raise DatasetError(f"{path}: no rows{f' where {row_filter!r} is true' if row_filter else ''}")
    return TextSplit(texts, labels, str(path))


def class_names(train: TextSplit, evaluation: TextSplit) -> list[str]:
    """The training split's labels, sorted; a label only the evaluation split has is refused (no
    network could learn it, and its inputs would count as errors of the other labels)."""
    classes = sorted(set(train.labels))
    unseen = sorted(set(evaluation.labels) - set(classes))
    if unseen:
        raise DatasetError(f"{evaluation.source}: label(s) {', '.join(map(repr, unseen[:5]))}"
                           f"{' ...' if len(unseen) > 5 else ''} not in the training split {train.source}; every "
                           "evaluation label needs training examples")
    return classes


def learn_tokenizer(texts: list[str], kind: str, vocab_size: int, min_frequency: int, lowercase: bool):
    """A `tokenizers.Tokenizer` learnt from `texts` (the training split only): BERT's normalisation and
    word splitting, then BPE subwords or whole words; [PAD] = 0, [UNK] = 1."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    common = dict(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                  show_progress=False)
    model, trainer = {
        "bpe": lambda: (models.BPE(unk_token="[UNK]"), trainers.BpeTrainer(**common)),
        "word": lambda: (models.WordLevel(unk_token="[UNK]"), trainers.WordLevelTrainer(**common)),
    }[kind]()
    tok = Tokenizer(model)
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainer, length=len(texts))
    return tok


def encode(tokenizer, texts: list[str], max_length: int, source: str) -> torch.Tensor:
    """(len(texts), max_length) int64 word ids, cut at max_length, padded with [PAD] (0) at the end."""
    ids = torch.zeros(len(texts), max_length, dtype=torch.int64)
    for i, enc in enumerate(tokenizer.encode_batch(texts, add_special_tokens=False)):
        row = enc.ids[:max_length]
        if not row:
            raise DatasetError(f"{source}: text {i + 1} ({texts[i]!r:.60}) has no word the tokenizer keeps; "
                               "remove the row")
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.int64)
    return ids


class TextDataset(Dataset):
    """Padded word ids and class indices: item i is (ids (max_length,), label)."""

    def __init__(self, ids: torch.Tensor, targets: list[int]):
        self.ids, self.targets = ids, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.ids[i], self.targets[i]


@dataclass
class TextData:
    train: TextDataset
    eval: TextDataset
    classes: list[str]
    folder: Path
    tokenizer_json: str

    def describe(self) -> dict:
        vocab = json.loads(self.tokenizer_json)["model"]["vocab"]
        lengths = (self.train.ids != 0).sum(1)
        return {"tokenizer_sha256": hashlib.sha256(self.tokenizer_json.encode()).hexdigest(),
                "vocab_learnt": len(vocab), "texts_at_max_length": int((lengths == self.train.ids.shape[1]).sum()),
                "mean_ids_per_text": float(lengths.float().mean())}


def load(base: Path, origin: str, subset: str | None, text_column: str, label_column: str, row_filter: str | None,
         file_format: str, max_length: int, kind: str, vocab_size: int, min_frequency: int,
         lowercase: bool) -> TextData:
    """The text dataset under `base` (a folder or an extracted archive; `origin` names it in messages)."""
    folder = find_folder(base, subset, origin)
    train, evaluation = (read_split(split_file(folder, s, file_format), text_column, label_column, row_filter)
                         for s in SPLITS)
    classes = class_names(train, evaluation)
    tokenizer = learn_tokenizer(train.texts, kind, vocab_size, min_frequency, lowercase)
    index = {c: i for i, c in enumerate(classes)}
    sets = [TextDataset(encode(tokenizer, s.texts, max_length, s.source), [index[y] for y in s.labels])
            for s in (train, evaluation)]
    return TextData(sets[0], sets[1], classes, folder, tokenizer.to_str())
