"""The job spec: one pydantic model that a whole run flows from, loaded from YAML.

Every field is documented here and exported as JSON schema (`snp-service schema`). Unknown keys
are rejected everywhere, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from snp_service.errors import SpecError
from snp_service.models.registry import (
    list_models,
    match_points,
    measurement_points,
    model_config,
)
from snp_service.units import units_removed

# Fields added after jobs were stored, left out of job ids and stage keys at these values, so every
# earlier job keeps its id and its stages stay reusable (any other value enters both as usual). The
# readout solver's default is the stepped solver every earlier job used (issue 27: lbfgs is selectable).
NEUTRAL_DEFAULTS: dict[tuple[str, str], Any] = {("dataset", "random_labels"): False,
                                                ("analysis", "cluster_time_limit_s"): 1.0,
                                                ("analysis", "readout_solver"): "adam",
                                                ("analysis", "readout_pool_epochs"): 2,
                                                ("train", "eval_every"): 1}
# snp_service.pipeline.STAGES; jobs finished before issue 27 recorded one `snp` stage in place of measure + cluster
STAGE_ORDER = ("data", "train", "evaluate", "measure", "cluster", "heads", "prune", "report")
MAX_YAML_BYTES = 1_000_000
# documented limits, checked in bounded time before anything runs (README, "Job spec in brief")
MAX_GRID_VALUES = 100  # values of one sweep dimension
MAX_TRIALS = 500  # sweep trials
MAX_COMPARE_RUNS = 200  # (model, seed) jobs of one comparison
MAX_PARAMETERS = 2_000_000_000  # a CCT's parameters (a 64-block 4096-wide CCT has 13 billion)
MAX_YAML_NODES = 100_000  # bounds alias expansion ("billion laughs") before validation
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # job and study names: they name folders
Fraction01 = Annotated[float, Field(gt=0.0, lt=1.0)]
# `$NAME`, `${NAME}` or a leading `~`: what a shell would expand (refused in paths, see resolve_path)
_SHELL_EXPANSION = re.compile(r"^~|\$\{?[A-Za-z_]")


class _Strict(BaseModel):
    # strict: `epochs: yes` is not 1, and `lr: "1e-3"` not a number; no inf or nan anywhere
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True, allow_inf_nan=False)


Seed = Annotated[int, Field(ge=0, le=2**32 - 1, description="random seed (0 to 2^32 - 1, what the generators take)")]


class SyntheticSpec(_Strict):
    """Generate a deterministic synthetic dataset in the official file layout under `root`.

    Images are class-dependent (a per-class low-frequency pattern plus noise and jitter), so a
    network can learn them; the real torchvision loader then reads the files.
    """

    num_classes: int = Field(10, ge=2, le=100)
    train_per_class: int = Field(100, ge=1, le=5000)
    test_per_class: int = Field(20, ge=1, le=1000)
    image_size: int = Field(32, ge=8, le=512, description="side of the stored images (CIFAR layout: always 32)")
    noise: float = Field(0.8, ge=0.0, le=4.0, description="pixel noise relative to the class pattern")
    seed: Seed = 0


class AugmentSpec(_Strict):
    """The CCT recipe's augmentations (train split only)."""

    crop: bool = Field(True, description="random crop with 4 px padding (32 px) or random resized crop (larger)")
    flip: bool = True
    randaugment: bool = False
    mixup_alpha: float = Field(0.0, ge=0.0, le=10.0, description="0 disables mixup")
    cutmix_alpha: float = Field(0.0, ge=0.0, le=10.0, description="0 disables cutmix")


class TokenizerSpec(_Strict):
    """How a text dataset's words become ids (snp_service.text): learnt from the training split alone,
    no download; the learning has no random choice, so the same split and settings give the same
    vocabulary (stored with the job as data/tokenizer.json, its SHA-256 in the data stage's record)."""

    kind: Literal["bpe", "word"] = Field(
        "bpe", description="bpe: the `tokenizers` library's BPE trainer (subwords); word: one id per word. Its WordPiece "
        "trainer is not offered: it learns other vocabularies in other processes (tokenizers 0.23.3)")
    vocab_size: int = Field(8000, ge=16, le=200_000, description="at most this many ids, [PAD] and [UNK] included")
    min_frequency: int = Field(2, ge=1, le=1000, description="a word or merge seen fewer times in training is not learnt")
    lowercase: bool = True


# DatasetSpec fields of text datasets only: left out of the job id and stage keys of other datasets,
# so the ids jobs had before text datasets existed stay theirs
TEXT_ONLY_FIELDS = ("subset", "text_column", "label_column", "row_filter", "file_format", "max_length", "tokenizer")


class DatasetSpec(_Strict):
    name: Literal["cifar10", "cifar100", "flowers102", "imagefolder", "text"]
    root: str = Field(
        ...,
        description="local directory or .tar.gz of one (torchvision layout, e.g. flowers-102/ with jpg/, "
        "imagelabels.mat, setid.mat), or for imagefolder a directory or .tar.gz holding train/<class>/ and "
        "test/<class>/, or for text a directory or .tar.gz holding <subset>/train and <subset>/test split files "
        "(.parquet or .jsonl); relative paths resolve against the job's workdir (the working directory where the "
        "job file is loaded); or s3://bucket/key.tar.gz | "
        "s3://bucket/prefix/ fetched once per node from storage.endpoint",
    )
    subset: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                               description="text: the folder inside root holding the split files (e.g. banking77), "
                               "at root's top level or one folder down; default: the split files are at the top")
    text_column: str = Field("text", min_length=1, max_length=200, description="text: the column of the texts")
    label_column: str = Field("label", min_length=1, max_length=200,
                              description="text: the column of the labels (strings; ordered like class folders)")
    row_filter: str | None = Field(None, min_length=1, max_length=200,
                                   description="text: a boolean column; only rows where it is true are kept in every "
                                   "split (CLINC150: in_scope)")
    file_format: Literal["auto", "parquet", "jsonl"] = Field(
        "auto", description="text: split files <split>.parquet or <split>.jsonl; auto: parquet where present")
    max_length: int = Field(64, ge=4, le=4096, description="text: ids per text (longer texts are cut, shorter padded); "
                            "the text model's sequence length")
    tokenizer: TokenizerSpec = TokenizerSpec()
    download: bool = Field(False, description="let torchvision download the dataset into root")
    synthetic: SyntheticSpec | None = Field(None, description="generate synthetic data in the official layout")
    image_size: int = Field(32, ge=8, le=1024, description="training resolution")
    train_split: Literal["train", "trainval"] = Field("train", description="trainval: Flowers-102 train+val")
    max_per_class: int | None = Field(None, ge=1, description="subset of the training split")
    eval_max_per_class: int | None = Field(None, ge=1, description="subset of the evaluation split")
    augment: AugmentSpec = AugmentSpec()
    num_workers: int = Field(1, ge=0, le=64, description="DataLoader worker processes per training worker")
    random_labels: bool = Field(
        False, description="the label-blind control: every image of every split gets a label drawn uniformly at "
        "random, independent of the image, from a generator seeded by train.seed (class names unchanged); "
        "no node's field can then depend on the evaluation label (METHOD.md section 7, item 3)")

    @field_validator("root")
    @classmethod
    def _absolute(cls, v: str) -> str:
        # resolved once where the job is loaded (against JobSpec.workdir), so Ray workers and Tune trials
        # (other working directories) find it
        return v if "://" in v else str(resolve_path(v))

    def _not_default(self, names: tuple[str, ...]) -> list[str]:
        """Those of `names` set to other than their defaults (a dumped spec holds every field)."""
        return sorted(f for f in names if getattr(self, f) != type(self).model_fields[f].get_default(
            call_default_factory=True))

    def input_size(self) -> int:
        """What the network's size depends on: the sequence length of a text dataset, else the image size."""
        return input_size({"name": self.name, "max_length": self.max_length, "image_size": self.image_size})

    def known_sizes(self) -> tuple[int, int] | None:
        """(training, evaluation) images, where the spec alone tells them (None for image folders)."""
        if self.synthetic is not None:
            s = self.synthetic
            sizes = (s.num_classes * s.train_per_class, s.num_classes * s.test_per_class)
        else:
            sizes = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000),
                     "flowers102": (2_040 if self.train_split == "trainval" else 1_020, 6_149)}.get(self.name)
            if sizes is None:
                return None
        classes = self.known_classes() or 1
        return (min(sizes[0], (self.max_per_class or sizes[0]) * classes),
                min(sizes[1], (self.eval_max_per_class or sizes[1]) * classes))

    def known_classes(self) -> int | None:
        """The number of classes, where the spec alone tells it (None for an image-folder tree)."""
        if self.synthetic is not None:
            return self.synthetic.num_classes
        return {"cifar10": 10, "cifar100": 100, "flowers102": 102}.get(self.name)

    @model_validator(mode="after")
    def _check(self) -> DatasetSpec:
        if self.synthetic is not None and self.name not in ("cifar100", "flowers102"):
            raise ValueError("synthetic data is generated in the CIFAR-100 or Flowers-102 layout; "
                             f"use name: cifar100 or flowers102, not {self.name}")
        if self.synthetic is not None and self.download:
            raise ValueError("synthetic and download exclude each other")
        if self.train_split == "trainval" and self.name != "flowers102":
            raise ValueError("train_split: trainval exists only for flowers102")
        if self.name == "imagefolder" and self.download:
            raise ValueError("an imagefolder dataset cannot be downloaded")
        if self.name == "text":
            if self.download or self.synthetic is not None:
                raise ValueError("a text dataset is read from root; download and synthetic do not apply")
        else:
            given = self._not_default(TEXT_ONLY_FIELDS)
            if given:
                raise ValueError(f"{', '.join(given)}: only for name: text, not {self.name}")
        if self.name == "text":
            given = self._not_default(("image_size", "augment", "train_split"))
            if given:
                raise ValueError(f"{', '.join(given)}: image settings; a text dataset has max_length and tokenizer")
        if self.root.startswith("s3://"):
            bucket, _, key = self.root[5:].partition("/")
            if not bucket or not key:
                raise ValueError(f"dataset root {self.root!r} needs a bucket and a key: s3://bucket/data.tar.gz "
                                 "or s3://bucket/prefix/")
            if self.synthetic is not None or self.download:
                raise ValueError("an s3:// dataset root is fetched from the bucket; synthetic and download do not apply")
            return self
        if "://" in self.root:
            raise ValueError(f"dataset root {self.root!r}: only local paths and s3:// URIs are supported")
        if self.synthetic is None and not self.download:
            path = resolve_path(self.root)
            if not path.exists():
                raise ValueError(f"dataset root {str(path)!r} does not exist (set download: true to fetch it, "
                                 "or synthetic: {} to generate a synthetic one)")
            if path.is_file() and not str(path).endswith((".tar.gz", ".tgz", ".tar")):
                raise ValueError(f"{self.name} root {str(path)!r} is a file but not a .tar.gz/.tgz/.tar archive")
        if (self.download or self.synthetic is not None) and resolve_path(self.root).is_file():
            raise ValueError(f"dataset root {self.root!r} is a file (an archive is read as it is); synthetic and "
                             "download need a directory")
        return self


class ModelSpec(_Strict):
    name: str = Field(..., description="a registered variant, e.g. cct_7_3x1_32 or vgg16_bn")
    num_heads: int | None = Field(None, ge=1, le=64)
    num_layers: int | None = Field(None, ge=1, le=64)
    embedding_dim: int | None = Field(None, ge=8, le=4096)
    mlp_ratio: float | None = Field(None, gt=0.0, le=16.0)
    positional_embedding: Literal["learnable", "sine", "none"] = "learnable"
    attention: Literal["reference", "sdpa"] = Field(
        "sdpa", description="reference: the authors' explicit softmax(q k^T) v; sdpa: scaled_dot_product_attention")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    attention_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    stochastic_depth: float = Field(0.1, ge=0.0, lt=1.0)
    weights: str | None = Field(
        None, description="analyse a network trained elsewhere instead of training one: a checkpoint file (local "
        "path or s3://bucket/key), or a finished job of this service (<results root>/<job-id>, local or s3://); "
        "the train stage is then replaced by a load stage keyed by the file's SHA-256")
    weights_format: Literal["auto", "authors", "snp-service", "state_dict"] = Field(
        "auto", description="key layout of the checkpoint: authors = the CCT authors' (SHI-Labs) names; "
        "snp-service / state_dict = the model's own names; auto = recognised from the keys")

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if v.startswith("s3://"):
            bucket, _, key = v[5:].partition("/")
            if not bucket or not key:
                raise ValueError(f"weights {v!r} needs a bucket and a key: s3://bucket/model.pth or "
                                 "s3://bucket/prefix/<job-id>")
            return v
        if "://" in v:
            raise ValueError(f"weights {v!r}: only local paths and s3:// URIs are supported")
        path = resolve_path(v)
        if not path.exists():  # a job's name: its one finished folder <name>-<hash> beside it
            rx = re.compile(re.escape(path.name) + r"-[0-9a-f]{12}")
            jobs = sorted(p for p in path.parent.glob(f"{path.name}-*") if rx.fullmatch(p.name)
                          and (p / "manifest.json").is_file()) if path.parent.is_dir() else []
            if len(jobs) > 1:
                raise ValueError(f"weights {str(path)!r}: {len(jobs)} finished jobs of that name "
                                 f"({', '.join(p.name for p in jobs)}); name one")
            if not jobs:
                raise ValueError(f"weights {str(path)!r} does not exist (a checkpoint file, a finished job's folder, "
                                 "or a finished job's name in its results folder: run that job first)")
            path = jobs[0]
        if path.is_dir() and not (path / "model" / "weights.pt").is_file():
            raise ValueError(f"weights {str(path)!r} is a folder but not a finished job of this service "
                             "(no model/weights.pt in it)")
        return str(path)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in list_models():
            raise ValueError(f"unknown model {v!r}; expected one of {', '.join(list_models())}")
        return v

    def config(self) -> Any:
        overrides = dict(num_heads=self.num_heads, num_layers=self.num_layers,
                         embedding_dim=self.embedding_dim, mlp_ratio=self.mlp_ratio)
        return model_config(self.name, **overrides)

    def build(self, num_classes: int, img_size: int, vocab_size: int | None = None):
        """The network this section describes (snp_service.models.create_model), untrained; a text model
        reads img_size as its sequence length and needs vocab_size (JobSpec.build_model passes both)."""
        from snp_service.models import create_model  # here: `snp-service validate` must not import torch

        return create_model(num_classes=num_classes, img_size=img_size, vocab_size=vocab_size,
                            **self.model_dump(exclude={"weights", "weights_format"}))

    @model_validator(mode="after")
    def _shapes(self) -> ModelSpec:
        try:
            cfg = self.config()
        except ValueError as e:
            raise ValueError(str(e)) from None
        if cfg.cct:
            d, layers = cfg.embedding_dim, cfg.num_layers
            params = layers * (4 * d * d + 2 * d * cfg.mlp_hidden)  # attention + MLP weights dominate
            if params > MAX_PARAMETERS:
                raise ValueError(f"{layers} blocks of width {d} (mlp {cfg.mlp_hidden}) is about {params / 1e9:.1f} "
                                 f"billion parameters; at most {MAX_PARAMETERS / 1e9:.0f} billion")
        if cfg.cct and cfg.embedding_dim % cfg.num_heads:
            raise ValueError(f"num_heads {cfg.num_heads} does not divide embedding_dim {cfg.embedding_dim}")
        if cfg.cct and self.positional_embedding == "sine" and cfg.embedding_dim % 2:
            raise ValueError("sine positional embedding needs an even embedding_dim")
        return self


class TrainSpec(_Strict):
    """Stage 1: training the whole network (CCT recipe: AdamW, cosine with warm-up, label smoothing)."""

    epochs: int = Field(..., ge=1, le=10_000)
    batch_size: int = Field(128, ge=1, le=65_536, description="per worker")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(6e-4, gt=0.0, le=10.0)
    weight_decay: float = Field(6e-2, ge=0.0, le=10.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd only")
    warmup_epochs: int = Field(0, ge=0, le=10_000)
    min_lr: float = Field(1e-5, ge=0.0)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on a GPU or on a CPU with AMX/AVX-512 bf16, else fp32")
    seed: Seed = 0
    checkpoint_keep: int = Field(2, ge=1, le=100)
    eval_every: int = Field(
        1, ge=1, le=10_000, description="evaluate on the evaluation split after every N-th epoch and after the last "
        "(in between, the epoch's eval metrics are NaN); the network is the same whatever N, only the training "
        "history is sparser: for an evaluation split much larger than the training split (Flowers-102)")
    compile: bool = Field(False, description="torch.compile the training forward pass (for GPU runs); it changes "
                          "results only by floating-point noise, so it is left out of the job id and stage keys")

    @model_validator(mode="after")
    def _warmup(self) -> TrainSpec:
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be fewer than epochs ({self.epochs})")
        return self


class MeasureSpec(_Strict):
    """Where SNP is measured: measurement point names or shell patterns (`blocks.*.mlp.hidden`)."""

    points: list[str] = Field(default_factory=lambda: ["all"], min_length=1,
                              description="names, shell patterns (* matches one dotted part), or all")


class AnalysisSpec(_Strict):
    """Stages 2+ (METHOD.md sections 2-3): readouts, SNP matrices, clusters, statistics."""

    readout: Literal["seqpool", "flatten"] = Field(
        "seqpool", description="transformer readout: sequence pooling + Linear (rank-1 SNP) or Linear over tokens x nodes")
    readout_solver: Literal["adam", "lbfgs"] = Field(
        "adam", description="adam (the default, as every earlier job): readout_epochs of Adam on minibatches; lbfgs: "
        "the same objective, mean cross-entropy + 1e-4/2 |W|^2, solved for the readout's bias-free linear weight by "
        "full-batch L-BFGS (strong-Wolfe, float64) to max |gradient| <= 1e-6 (a seqpool readout's pooling is first "
        "trained with W for readout_pool_epochs of Adam, then frozen)")
    readout_epochs: int = Field(20, ge=1, le=1000, description="epochs of the adam readout solver")
    readout_pool_epochs: int = Field(2, ge=1, le=1000, description="lbfgs solver, seqpool readouts: Adam epochs that "
                                     "train the pooling (and W) before W is solved with the pooling frozen")
    readout_lr: float = Field(1e-2, gt=0.0, le=10.0, description="Adam learning rate of the readouts (cosine decay)")
    threshold: Fraction01 = Field(0.3, description="Boolean SNP threshold th (METHOD.md 2.6)")
    normalise: Literal["max", "centred", "afcc"] = Field(
        "max", description="max: divide each node's SNP matrix by its maximum where positive; centred: subtract "
        "each output's all-input mean field first; afcc: divide by any non-zero maximum, as the AFCC code")
    candidate_order: Literal["diagonal", "label"] = Field(
        "diagonal", description="order of a node's candidate labels in the cluster rule: largest diagonal first, "
        "or label order as the AFCC code (breaks ties; the greedy fallback's visiting order)")
    cluster_time_limit_s: float = Field(
        1.0, gt=0.0, le=3600.0, description="seconds the exact cluster solver (an integer program, HiGHS) may "
        "spend on one linked component of more than 10 labels; where it does not prove the best partition in "
        "that time the greedy rule partitions it (greedy_fraction counts those nodes)")
    bootstrap: int = Field(1000, ge=0, le=100_000,
                           description="bootstrap resamples over nodes for the BCa intervals of every point statistic")
    confidence: Fraction01 = 0.95
    fdr: float = Field(0.05, gt=0.0, lt=1.0, description="false discovery rate of the per-node label-dependence "
                       "tests (Benjamini-Hochberg among a point's nodes)")
    seed: Seed = 0


class HeadsSpec(_Strict):
    """Single-head performance and the heads' division of labels (METHOD.md section 3)."""

    enabled: bool = True
    points: list[str] = Field(default_factory=lambda: ["all"], min_length=1,
                              description="MHA points (attn.heads) to analyse; all: every selected MHA point")
    null_draws: int = Field(10_000, ge=100, le=1_000_000,
                            description="random label-set draws of the null model for the overlap test")
    level: Fraction01 = Field(0.05, description="significance level of the overlap test; a test whose smallest "
                              "attainable p-value is not below it is reported `uninformative`")


class PruningSpec(_Strict):
    """ANDC pruning, its baselines and SNP-guided structural pruning (METHOD.md section 4)."""

    enabled: bool = False
    points: list[str] = Field(default_factory=lambda: ["all"], min_length=1,
                              description="points whose readouts are pruned; all: every selected point")
    threshold: Fraction01 | None = Field(None, description="Boolean threshold of the ANDC mask; default analysis.threshold")
    curve_thresholds: list[Fraction01] = Field(min_length=1, max_length=100,
        default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        description="thresholds of the accuracy vs kept-fraction curve (accuracy without fine-tune)")
    finetune_epochs: int = Field(3, ge=0, le=1000, description="fine-tune of the surviving readout weights (mask fixed)")
    finetune_lr: float = Field(1e-3, gt=0.0, le=10.0)
    baselines: list[Literal["random", "magnitude"]] = Field(default_factory=lambda: ["random", "magnitude"])
    selection_split: Literal["heldout", "eval"] = Field(
        "heldout", description="images whose SNP matrices choose the ANDC masks and the structurally pruned units: "
        "heldout = a seeded part of the training split (disjoint from the evaluation split that scores them); "
        "eval = the evaluation split itself (the paper's protocol: masks chosen on the images that score them)")
    selection_fraction: Fraction01 = Field(0.1, description="part of the training split used for selection (heldout)")
    structural_fraction: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="fraction of FF hidden units and of heads removed from every block of the network (0: off)")
    structural_finetune_epochs: int = Field(0, ge=0, le=1000, description="fine-tune of the pruned network")
    seed: Seed = 0


class SweepSpec(_Strict):
    """Ray Tune search space; every list is a grid dimension."""

    num_heads: list[Annotated[int, Field(ge=1, le=64)]] | None = Field(None, max_length=MAX_GRID_VALUES)
    threshold: list[Fraction01] | None = Field(None, max_length=MAX_GRID_VALUES)
    lr: list[Annotated[float, Field(gt=0.0, le=10.0)]] | None = Field(None, max_length=MAX_GRID_VALUES)
    asha: bool = False
    max_concurrent_trials: int = Field(1, ge=1, le=1000)

    @model_validator(mode="after")
    def _size(self) -> SweepSpec:
        trials = 1
        for dim in (self.num_heads, self.threshold, self.lr):
            trials *= len(dim or [1])
        if trials > MAX_TRIALS:
            raise ValueError(f"the grid has {trials:,} trials; at most {MAX_TRIALS} (each trial is a whole job)")
        return self


class HeadsStudySpec(_Strict):
    """The same job at several head counts, the width fixed (`snp-service heads-study`'s job-file form,
    so `submit` runs it as one Ray job); the heads are compared point by point."""

    num_heads: list[Annotated[int, Field(ge=1, le=64)]] = Field(..., min_length=1, max_length=MAX_GRID_VALUES,
                                                                 description="head counts, each a job of its own")

    @field_validator("num_heads")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"head counts must be unique, got {v}")
        return v


class StorageSpec(_Strict):
    """Where results go. Credentials never appear here: they come from the environment."""

    root: str = Field("results", description="local directory, or s3://bucket/prefix")
    endpoint: str | None = Field(None, description="S3-compatible endpoint with scheme, e.g. http://127.0.0.1:9000")
    region: str | None = None

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        if "\x00" in v:
            raise ValueError("storage root contains a NUL character")
        if v.startswith("s3://"):
            bucket = v[5:].split("/", 1)[0]
            if not bucket:
                raise ValueError(f"S3 URI {v!r} has no bucket; expected s3://bucket/prefix")
        elif "://" in v:
            raise ValueError(f"unsupported storage scheme in {v!r}; expected a local path or s3://bucket/prefix")
        elif _SHELL_EXPANSION.search(v):
            resolve_path(v)  # refuses it, saying why (kept as written otherwise: the store resolves it where it runs)
        return v

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        return v if v is None else check_endpoint(v)

    @model_validator(mode="after")
    def _endpoint_needs_s3(self) -> StorageSpec:
        if self.endpoint and not self.root.startswith("s3://"):
            raise ValueError("endpoint is only used with an s3:// root")
        return self


class ComputeSpec(_Strict):
    """Where it runs. address None: RAY_ADDRESS if set, else a local Ray started for the job."""

    address: str | None = None
    num_workers: int = Field(1, ge=1, le=4096)
    use_gpu: Literal["auto"] | bool = "auto"
    cpus_per_worker: float = Field(1.0, gt=0.0, le=256.0, description="per training worker and per SNP actor")
    snp_actors: int = Field(1, ge=1, le=1024, description="Ray actors that share the measure stage's points")
    max_failures: int = Field(2, ge=0, le=100, description="training worker failures Ray Train recovers from "
                              "(restarting from the last checkpoint)")
    autoscaling: bool = Field(False, description="the cluster adds nodes on demand: a training or SNP request no "
                              "current node can hold waits for the autoscaler instead of being refused")
    snp_gpus_per_actor: Literal["auto"] | Annotated[float, Field(ge=0.0, le=16.0)] = Field(
        "auto", description="GPUs each SNP / prune actor asks Ray for (fractions allowed); auto: 1 when the cluster "
        "has GPUs when the stage starts, else 0")
    data_on_device: Literal["auto"] | bool = Field(
        "auto", description="training images decoded once into a uint8 tensor kept on the training device, batches "
        "cut and augmented there (snp_service.devicedata); auto: on a GPU, for images up to 64 px; true: at any size "
        "(above 64 px RandomResizedCrop on the batch, from the images at the job's resolution); never with "
        "RandAugment; outside the job id (same recipe, other random streams)")
    max_concurrent_jobs: Literal["auto"] | Annotated[int, Field(ge=1, le=1000)] = Field(
        "auto", description="member jobs of a study (compare, heads study) run at once; auto: as many as the "
        "cluster's CPUs and GPUs hold one job's training workers when the study starts (every one of them on an "
        "autoscaling cluster)")
    start_timeout_s: Annotated[float, Field(gt=0.0, le=7 * 86_400.0)] | None = Field(
        600.0, description="seconds the training workers (and the SNP / prune actors) may wait to be placed; past it "
        "the stage fails with one message naming what did not fit and what the cluster has free (Ray Train would "
        "retry the worker group's start without limit); null: wait without limit (an autoscaler that takes long "
        "to add nodes)")
    feature_budget_gb: float = Field(
        4.0, gt=0.0, le=10_000.0, description="captured features an actor holds at once (disk, or device memory on a "
        "GPU): points are captured in groups that fit, processed and released; a larger point goes alone")


class CompareModel(_Strict):
    """One model of a comparison: overrides of the base job (sections merged field by field;
    `model` replaces the base model whole when given)."""

    label: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,23}$", description="short name in tables and job names")
    model: dict[str, Any] | None = Field(None, description="a whole model section (default: the base job's model)")
    dataset: dict[str, Any] | None = Field(
        None, description="a whole dataset section (default: the base job's dataset), e.g. a text dataset for a text "
        "model beside image models; the comparison's tables then name each model's dataset")
    train: dict[str, Any] = Field(default_factory=dict, description="train fields to override, e.g. optimizer, lr, epochs")
    measure: dict[str, Any] = Field(default_factory=dict)
    analysis: dict[str, Any] = Field(default_factory=dict, description="not threshold: the comparison shares it")
    pruning: dict[str, Any] = Field(default_factory=dict)

    @field_validator("analysis")
    @classmethod
    def _shared_threshold(cls, v: dict) -> dict:
        if "threshold" in v:
            raise ValueError("analysis.threshold is shared by every model of a comparison; set it in the base job")
        return v


class CompareSpec(_Strict):
    """Several models at the same threshold (on the base job's dataset, or each on its own), each trained with every
    seed: every (model, seed) is a full job of its own, then one comparison along relative depth."""

    models: list[CompareModel] = Field(..., min_length=1)
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1, max_length=MAX_COMPARE_RUNS,
                              description="train.seed of each run")

    @model_validator(mode="after")
    def _unique(self) -> CompareSpec:
        labels = [m.label for m in self.models]
        if len(set(labels)) != len(labels):
            raise ValueError(f"compare.models: labels must be unique, got {labels}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"compare.seeds: seeds must be unique, got {self.seeds}")
        return self


class JobSpec(_Strict):
    """A job: train a network, then measure it. Results go to `<storage.root>/<job_id>/`."""

    name: str = Field(..., pattern=NAME_PATTERN, description="letters, digits, _ . -; no path separators")
    description: str = ""
    dataset: DatasetSpec
    model: ModelSpec
    train: TrainSpec = Field(..., description="training; may be omitted when model.weights is given (then only "
                             "its seed, batch size, lr and precision serve the fine-tunes and data order)")
    measure: MeasureSpec = MeasureSpec()
    analysis: AnalysisSpec = AnalysisSpec()
    heads: HeadsSpec = HeadsSpec()
    pruning: PruningSpec = PruningSpec()
    sweep: SweepSpec | None = None
    compare: CompareSpec | None = Field(None, description="run several models x seeds as jobs and compare them "
                                        "(snp_service.compare); the job's own id ignores this section")
    heads_study: HeadsStudySpec | None = Field(None, description="run the job at several head counts and compare "
                                               "the heads (snp_service.studies); the job's own id ignores this section")
    storage: StorageSpec = StorageSpec()
    compute: ComputeSpec = ComputeSpec()
    workdir: str | None = Field(
        None, description="the directory this job's relative paths (dataset.root, model.weights, storage.root) "
        "resolve against; default: the working directory where the job file is loaded, recorded then and kept with "
        "the job (spec.json, Tune trials, study members). A dataset root or weights file inside it counts by its "
        "path relative to it in the job id and stage keys, so a job has one id from any directory, in a Tune trial "
        "and on a cluster (which loads the job in its copy of the uploaded working directory)")

    @model_validator(mode="before")
    @classmethod
    def _resolve_against_workdir(cls, data: Any) -> Any:
        """Relative paths made absolute against `workdir` (default: the working directory now), once,
        where the job is loaded; the workdir is recorded with the job. Paths a shell would expand are
        left for the field validators to refuse with their own message."""
        if not isinstance(data, dict):
            return data
        base = data.get("workdir")
        if base is None:
            base = str(Path.cwd().resolve())
        elif not isinstance(base, str) or not os.path.isabs(base) or _SHELL_EXPANSION.search(base) or "\x00" in base:
            return data  # the field validator refuses it
        data = {**data, "workdir": base}
        for section, key in PATH_FIELDS + (("storage", "root"),):
            sec = data.get(section)
            value = sec.get(key) if isinstance(sec, dict) else None
            if (isinstance(value, str) and value and "://" not in value and not os.path.isabs(value)
                    and not _SHELL_EXPANSION.search(value) and "\x00" not in value):
                data[section] = {**sec, key: os.path.join(base, value)}
        return data

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).is_absolute():
            raise ValueError(f"workdir {v!r} is not an absolute path")
        return v if v is None else str(resolve_path(v))

    @model_validator(mode="before")
    @classmethod
    def _train_optional_with_weights(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("train") is None and isinstance(data.get("model"), dict) \
                and data["model"].get("weights"):
            data = {**data, "train": {"epochs": 1}}  # nothing is trained: the epochs are never used
        return data

    @field_validator("name")
    @classmethod
    def _no_dots(cls, v: str) -> str:
        if ".." in v:
            raise ValueError("job name must not contain '..'")
        return v

    @model_validator(mode="after")
    def _points(self) -> JobSpec:
        cfg = self.model.config()
        if cfg.text != (self.dataset.name == "text"):
            raise ValueError(f"model {self.model.name} is {'a text' if cfg.text else 'an image'} "
                             f"model and dataset {self.dataset.name} {'is' if self.dataset.name == 'text' else 'is not'}"
                             " text; text models (text_*) go with name: text")
        problem = cfg.input_problem(self.dataset.input_size(), self.model.name)  # the family's own rule
        if problem:
            raise ValueError(problem)
        if cfg.text and self.model.weights is not None:
            raise ValueError("model.weights: loading a text model trained elsewhere is not supported yet")
        available = self.points()
        for pat, names in match_points(available, self.measure.points).items():
            if not names:
                raise ValueError(f"measure.points: {pat!r} matches no measurement point of {self.model.name}; "
                                 f"it has {', '.join(available)}")
        selected = {n: available[n] for n in self.selected_points()}
        if self.heads.points != ["all"]:
            for pat, names in match_points(selected, self.heads.points).items():
                if not names:
                    raise ValueError(f"heads.points: {pat!r} matches no selected measurement point "
                                     f"({', '.join(selected)})")
                no_heads = [n for n in names if selected[n].kind != "mha"]
                if no_heads:
                    raise ValueError(f"heads.points: {', '.join(no_heads)} has no attention heads; head analysis "
                                     "needs an MHA point (blocks.<m>.attn.heads)")
        if self.pruning.points != ["all"]:
            for pat, names in match_points(selected, self.pruning.points).items():
                if not names:
                    raise ValueError(f"pruning.points: {pat!r} matches no selected measurement point "
                                     f"({', '.join(selected)})")
        if self.heads_study is not None and not cfg.cct:
            raise ValueError(f"heads_study: varies the heads of a CCT; {self.model.name} is not a CCT")
        for where, heads in (("sweep.num_heads", self.sweep.num_heads if self.sweep else None),
                             ("heads_study.num_heads", self.heads_study.num_heads if self.heads_study else None)):
            bad = [h for h in heads or [] if cfg.cct and cfg.embedding_dim % h]
            if bad:
                raise ValueError(f"{where}: {bad} do not divide the width embedding_dim {cfg.embedding_dim}")
        frac = self.pruning.structural_fraction
        if frac > 0:
            if not cfg.cct:
                raise ValueError("pruning.structural_fraction: structural pruning removes CCT FF units and heads; "
                                 f"{self.model.name} is not a CCT")
            for what, count in (("FF hidden units", cfg.mlp_hidden), ("heads", cfg.num_heads)):
                if units_removed(frac, count) >= count:
                    raise ValueError(f"pruning.structural_fraction: {frac} would remove all {count} {what} of "
                                     f"every block; use a fraction below {(count - 0.5) / count:.3f}")
        if self.sweep is not None and self.train.eval_every != 1:
            raise ValueError("sweep: ASHA compares trials on every epoch's eval_accuracy; train.eval_every must be 1")
        studies = [k for k in ("compare", "sweep", "heads_study") if getattr(self, k) is not None]
        if len(studies) > 1:
            raise ValueError(f"{' and '.join(studies)} exclude each other: a job file runs one study")
        if self.compare is not None:
            runs = len(self.compare.models) * len(self.compare.seeds)
            if runs > MAX_COMPARE_RUNS:
                raise ValueError(f"compare: {len(self.compare.models)} models x {len(self.compare.seeds)} seeds = "
                                 f"{runs:,} jobs; at most {MAX_COMPARE_RUNS}")
            try:
                self.compare_jobs()  # every (model, seed) must be a valid job
            except SpecError as e:
                raise ValueError(str(e)) from None
        return self

    def compare_jobs(self) -> list[tuple[str, int, JobSpec]]:
        """(label, seed, job) of every run of the compare section, seeds outer, models inner (so a
        study cut short has every model at the first seed). Each model's sections are merged field
        by field into the base job; `model` replaces the base model whole when given."""
        if self.compare is None:
            raise SpecError(f"job {self.name} has no compare section")
        out = []
        for seed in self.compare.seeds:
            for m in self.compare.models:
                over = {section: getattr(m, section) for section in ("train", "measure", "analysis", "pruning")}
                over["train"] = {**over["train"], "seed": seed}
                if m.model is not None:
                    over["model"] = m.model
                if m.dataset is not None:
                    over["dataset"] = m.dataset
                try:
                    out.append((m.label, seed, derive_job(self, f"{self.name}-{m.label}-s{seed}", over,
                                                          f"compare model {m.label!r} (seed {seed})",
                                                          replace=("model", "dataset"))))
                except SpecError as e:
                    raise SpecError(f"compare: {e}") from None
        return out

    def heads_jobs(self, heads: list[int] | None = None) -> list[JobSpec]:
        """The job at each head count (default heads_study.num_heads), the width fixed: `<name>-h<heads>`."""
        if heads is None:
            if self.heads_study is None:
                raise SpecError(f"job {self.name} has no heads_study section; give the head counts")
            heads = self.heads_study.num_heads
        try:  # `--heads` obeys the file form's rules: a count given twice would run one member twice at once
            heads = HeadsStudySpec(num_heads=list(heads)).num_heads
        except ValidationError as e:
            raise SpecError(f"head counts {list(heads)}: " + "; ".join(
                err["msg"].removeprefix("Value error, ") for err in e.errors())) from None
        out = []
        for h in heads:
            try:
                out.append(derive_job(self, f"{self.name}-h{h}", {"model": {"num_heads": h}},
                                      f"{self.name} with model.num_heads={h}"))
            except SpecError as e:
                raise SpecError(f"head-count study: {e}") from None
        return out

    def feature_estimate(self) -> dict:
        """Captured features of the selected points (float16: images x nodes x positions x 2 bytes),
        per image and, where the split sizes are known, for the job: what one SNP / prune actor holds at
        most (one group of points, compute.feature_budget_gb, or the largest point when it alone is
        larger) against the whole network's. The README states the same formula."""
        info = self.points()
        per_image = {p: info[p].nodes * info[p].positions * 2 for p in self.selected_points()}
        out = {"largest_point_bytes_per_image": max(per_image.values()), "all_points_bytes_per_image":
               sum(per_image.values()), "largest_point": max(per_image, key=per_image.get)}
        sizes = self.dataset.known_sizes()
        if sizes:
            images = sum(sizes)
            out["images"] = images
            out["all_points_gb"] = out["all_points_bytes_per_image"] * images / 2**30
            out["actor_peak_gb"] = max(out["largest_point_bytes_per_image"] * images / 2**30,
                                       min(self.compute.feature_budget_gb, out["all_points_gb"]))
        return out

    def stage_names(self) -> list[str]:
        """The stages this job runs, in order: with model.weights, `load` takes the place of `train`."""
        return [("load" if s == "train" and self.model.weights else s) for s in STAGE_ORDER]

    def head_points(self) -> list[str]:
        """Selected MHA points the heads stage analyses."""
        selected = {n: self.points()[n] for n in self.selected_points()}
        mha = {n: i for n, i in selected.items() if i.kind == "mha"}
        if self.heads.points == ["all"]:
            return list(mha)
        chosen = {n for names in match_points(mha, self.heads.points).values() for n in names}
        return [n for n in mha if n in chosen]

    def prune_points(self) -> list[str]:
        selected = self.selected_points()
        if self.pruning.points == ["all"]:
            return selected
        avail = {n: self.points()[n] for n in selected}
        chosen = {n for names in match_points(avail, self.pruning.points).values() for n in names}
        return [n for n in selected if n in chosen]

    def points(self):
        return measurement_points(self.model.config(), self.dataset.input_size())

    def build_model(self, num_classes: int):
        """The job's network, untrained: the model section at the dataset's input size (a text model with
        the tokenizer's vocabulary size as its embedding's rows)."""
        vocab = self.dataset.tokenizer.vocab_size if self.dataset.name == "text" else None
        return self.model.build(num_classes, self.dataset.input_size(), vocab)

    def selected_points(self) -> list[str]:
        chosen = set()
        for names in match_points(self.points(), self.measure.points).values():
            chosen.update(names)
        return [n for n in self.points() if n in chosen]

    def job_id(self) -> str:
        """`<name>-<hash>`: the hash covers everything that changes results (not storage or compute)."""
        content = portable_paths(self.model_dump(mode="json", exclude={"storage", "compute", "description", "compare",
                                                                       "heads_study"}))
        content.pop("workdir", None)
        content["dataset"] = hashed_dataset(content["dataset"])
        content["train"].pop("compile", None)  # floating-point noise only (TrainSpec.compile)
        content = without_neutral_defaults(content)
        if self.compute.num_workers != 1:  # batch_size is per worker: N workers train another network
            content["train"]["workers"] = self.compute.num_workers
        if content["model"].get("weights") is None:  # jobs without weights keep the ids they had
            content["model"].pop("weights", None)
            content["model"].pop("weights_format", None)
        digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.name}-{digest}"


PATH_FIELDS = (("dataset", "root"), ("model", "weights"))  # local paths that enter job ids and stage keys


def portable_paths(spec_json: dict) -> dict:
    """`spec_json` (a JobSpec dumped as JSON, or a stored spec.json) with its dataset root and weights
    file as job ids and stage keys hash them: relative to the job's `workdir` when inside it, else as
    they are (absolute, or s3://). A job thus keeps its id from whichever directory the process
    stands in (a Tune trial runs in a directory of its own) and on a cluster, which loads the job in
    its copy of the uploaded working directory. A stored spec.json without a workdir (written before
    it was recorded) hashes its absolute paths, as it was hashed then. The id follows a path, not the
    content behind it: an archive moved elsewhere is another job; one replaced in place is not."""
    base = spec_json.get("workdir")
    if not isinstance(base, str) or not os.path.isabs(base):
        return spec_json
    out = dict(spec_json)
    for section, key in PATH_FIELDS:
        sec = out.get(section)
        value = sec.get(key) if isinstance(sec, dict) else None
        if not isinstance(value, str) or "://" in value or not os.path.isabs(value):
            continue
        path = Path(value)
        if path.is_relative_to(base):
            out[section] = {**sec, key: path.relative_to(base).as_posix()}
    return out


def without_neutral_defaults(spec_json: dict) -> dict:
    """`spec_json` (a JobSpec dumped as JSON, or a stored spec.json) without the NEUTRAL_DEFAULTS fields
    that hold their neutral value: what job ids and stage keys hash."""
    out = dict(spec_json)
    for (section, key), neutral in NEUTRAL_DEFAULTS.items():
        if isinstance(out.get(section), dict) and key in out[section] and out[section][key] == neutral:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


def input_size(dataset: dict) -> int:
    """DatasetSpec.input_size from a dataset section as a dict (a stored spec.json, read without
    validating it again): a text's sequence length, else the image size."""
    return dataset["max_length"] if dataset["name"] == "text" else dataset["image_size"]


def hashed_dataset(dataset: dict) -> dict:
    """The dataset section as job ids and stage keys hash it: without the text-only fields for other
    datasets (they do not apply there, and ids from before text datasets existed stay valid)."""
    if dataset.get("name") == "text":
        return dataset
    return {k: v for k, v in dataset.items() if k not in TEXT_ONLY_FIELDS}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def derive_job(base: JobSpec, name: str, overrides: dict, source: str, replace: tuple[str, ...] = ()) -> JobSpec:
    """A job derived from `base`: `overrides` (nested like the job file) merged field by field, the
    sections named in `replace` replaced whole; the base's study sections (compare, sweep, heads_study) dropped;
    validated like a job file (errors name `source`). The one way the unified study, the heads
    study and the sweep make their member jobs."""
    d = base.model_dump(mode="json", exclude={"compare", "sweep", "heads_study"})
    for k, v in overrides.items():
        d[k] = v if k in replace or not (isinstance(v, dict) and isinstance(d.get(k), dict)) else _merge(d[k], v)
    d["name"] = name[:64]
    return spec_from_dict(d, source)


def is_valid_name(name: str) -> bool:
    """The rule for job and study names (they name folders)."""
    return bool(re.match(NAME_PATTERN, name)) and ".." not in name


def resolve_path(p: str) -> Path:
    """A local path exactly as written; relative paths resolve against the working directory.

    `~` and `$VARS` are not expanded: a job file is data, not a shell script, and expanding it would
    let a job file (one from someone else, run on a cluster) write the environment's secrets into
    spec.json, the report and error messages (`root: /data/${AWS_SECRET_ACCESS_KEY}`). A path that
    would need a shell's expansion is refused, naming only what was written; the shell expands
    command-line paths (`--store ~/results`) before they get here."""
    if "\x00" in p:
        raise ValueError(f"path {p!r} contains a NUL character")
    if _SHELL_EXPANSION.search(p):
        raise ValueError(f"path {p!r}: ~ and $VARIABLES are not expanded in job files (a job file is data, not a "
                         "shell script); write the path out, or give it on the command line (--set, --store), "
                         "where your shell expands it")
    try:
        return Path(p).resolve()
    except (RuntimeError, OSError) as e:  # a symbolic-link loop, a name too long
        raise ValueError(f"path {p!r} cannot be resolved ({e})") from None


def check_endpoint(url: str) -> str:
    """An S3 endpoint: http(s)://host[:port]. One that holds credentials (user:secret@host) is refused
    without repeating them: credentials come only from the environment (AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY), so no spec, message or store error ever carries one."""
    try:
        parts = urlsplit(url if "://" in url else f"//{url}")
    except ValueError:  # e.g. an unclosed [IPv6 address
        raise ValueError(f"endpoint {without_userinfo(url)!r} is not a URL; expected http://host:port") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"endpoint {without_userinfo(url)!r} holds credentials (user:secret@host); they are never "
                         "read from a job file: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment")
    if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"\s", url):
        raise ValueError(f"endpoint {url!r} has no scheme; expected http://host:port or https://host:port")
    return url


def without_userinfo(text: str) -> str:
    """`text` with a URL's user:secret@ replaced by ***@ (urllib.parse finds it); other text unchanged."""
    try:
        parts = urlsplit(text if "://" in text else f"//{text}")
    except ValueError:  # not a URL urllib can split: hide everything up to a last @, if any
        return "***@" + text.rpartition("@")[2] if "@" in text else text
    if parts.username is None and parts.password is None:
        return text
    return text.replace(parts.netloc, "***@" + parts.netloc.rpartition("@")[2], 1)


def _count_nodes(node: Any, limit: int) -> None:
    """Walk the parsed YAML graph counting visits (aliases count each time they are used)."""
    stack, seen = [node], 0
    while stack:
        n = stack.pop()
        seen += 1
        if seen > limit:
            raise SpecError(f"expands to more than {limit} values (recursive or exploding YAML anchors?)")
        if isinstance(n, dict):
            stack.extend(n.keys())
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (YAML's last-one-wins would
    silently drop the first: `epochs:` twice)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: bytes | str, source: str) -> Any:
    if isinstance(text, bytes):
        if len(text) > MAX_YAML_BYTES:
            raise SpecError(f"{source}: file is {len(text)} bytes; a job file is at most {MAX_YAML_BYTES}")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SpecError(f"{source}: not UTF-8 text (byte {e.start}); job files are UTF-8 YAML") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise SpecError(f"{source}: nested too deeply to be a job file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise SpecError(f"{source}: malformed YAML{where}: {problem}") from None
    try:
        _count_nodes(data, MAX_YAML_NODES)
    except SpecError as e:
        raise SpecError(f"{source}: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping of job fields at the top level, got {type(data).__name__}")
    return data


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid job spec ({err.error_count()} problem{'s' if err.error_count() > 1 else ''}):"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (not part of the job spec; check the spelling, see `snp-service schema`)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        got = e.get("input")
        got = without_userinfo(got) if isinstance(got, str) else got  # an endpoint's user:secret@ never shown
        shown = "" if e["type"] in ("missing",) or isinstance(got, (dict, list)) else f" (got {got!r:.80})"
        lines.append(f"  - {loc}: {msg}{shown}" if loc else f"  - {msg}")
    return "\n".join(lines)


def spec_from_dict(data: dict, source: str = "<spec>") -> JobSpec:
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_validation_error(e, source)) from None


def apply_overrides(data: dict, sets: list[str], store: str | None, source: str) -> dict:
    """`--set path=value` (value read as YAML: numbers, booleans, lists; a dotted path into the job's
    sections) and `--store ROOT` applied to a parsed job file; the result is validated like the file."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in sets:
        path, eq, text = item.partition("=")
        keys = [k for k in path.strip().split(".") if k]
        if not eq or not keys:
            raise SpecError(f"{source}: --set {item!r}: expected path=value, e.g. --set train.epochs=3")
        try:
            value = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
        except yaml.YAMLError:
            value = text
        node = data
        for k in keys[:-1]:
            if not isinstance(node.get(k, {}), dict):
                raise SpecError(f"{source}: --set {item!r}: {k} is not a section")
            node[k] = dict(node.get(k) or {})
            node = node[k]
        node[keys[-1]] = value
    if store is not None:  # a local store has no endpoint; an s3:// one keeps the file's
        storage = {**(data.get("storage") or {}), "root": store}
        if not store.startswith("s3://"):
            storage.pop("endpoint", None)
        data["storage"] = storage
    return data


def load_spec(path: str | os.PathLike, sets: list[str] = (), store: str | None = None) -> JobSpec:
    """Read and validate a job YAML (with `--set` overrides and `--store`, if given); raises SpecError
    naming the file and field on any problem."""
    p = Path(path)
    try:
        if p.exists() and not p.is_dir() and not p.is_file():  # a FIFO would block, a device never end
            raise SpecError(f"{p}: not a regular file; a job file is a YAML file")
        with p.open("rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)  # bounded: /dev/zero or a huge file is refused, not read whole
    except FileNotFoundError:
        raise SpecError(f"{p}: job file not found") from None
    except IsADirectoryError:
        raise SpecError(f"{p}: is a directory, expected a job YAML file") from None
    except OSError as e:
        raise SpecError(f"{p}: cannot read: {e.strerror}") from None
    source = str(p) + (f" (with {', '.join('--set ' + s for s in sets)})" if sets else "")
    return spec_from_dict(apply_overrides(parse_yaml(raw, str(p)), list(sets), store, str(p)), source)


def json_schema() -> dict:
    return JobSpec.model_json_schema()
