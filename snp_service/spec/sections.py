"""The sections of the job spec: one pydantic model each (dataset, model, training, measurement,
analysis, heads, pruning, the studies, storage, compute), every field documented and exported as
JSON schema (`snp-service schema`). Unknown keys are rejected everywhere, so a typo never silently
falls back to a default. The job that holds them is snp_service.spec.job.JobSpec."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from snp_service.models.registry import list_models, model_config
from snp_service.spec.base import (
    MAX_COMPARE_RUNS,
    MAX_GRID_VALUES,
    MAX_PARAMETERS,
    MAX_TRIALS,
    SHELL_EXPANSION,
    Fraction01,
    Seed,
    Strict,
    check_endpoint,
    resolve_path,
)
from snp_service.spec.identity import TEXT_ONLY_FIELDS


class SyntheticSpec(Strict):
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


class AugmentSpec(Strict):
    """The CCT recipe's augmentations (train split only)."""

    crop: bool = Field(True, description="random crop with 4 px padding (32 px) or random resized crop (larger)")
    flip: bool = True
    randaugment: bool = False
    mixup_alpha: float = Field(0.0, ge=0.0, le=10.0, description="0 disables mixup")
    cutmix_alpha: float = Field(0.0, ge=0.0, le=10.0, description="0 disables cutmix")


class TokenizerSpec(Strict):
    """How a text dataset's words become ids (snp_service.text): learnt from the training split alone,
    no download; the learning has no random choice, so the same split and settings give the same
    vocabulary (stored with the job as data/tokenizer.json, its SHA-256 in the data stage's record)."""

    kind: Literal["bpe", "word"] = Field(
        "bpe", description="bpe: the `tokenizers` library's BPE trainer (subwords); word: one id per word. Its WordPiece "
        "trainer is not offered: it learns other vocabularies in other processes (tokenizers 0.23.3)")
    vocab_size: int = Field(8000, ge=16, le=200_000, description="at most this many ids, [PAD] and [UNK] included")
    min_frequency: int = Field(2, ge=1, le=1000, description="a word or merge seen fewer times in training is not learnt")
    lowercase: bool = True


class DatasetSpec(Strict):
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


class ModelSpec(Strict):
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


class TrainSpec(Strict):
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


class MeasureSpec(Strict):
    """Where SNP is measured: measurement point names or shell patterns (`blocks.*.mlp.hidden`)."""

    points: list[str] = Field(default_factory=lambda: ["all"], min_length=1,
                              description="names, shell patterns (* matches one dotted part), or all")


class AnalysisSpec(Strict):
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


class HeadsSpec(Strict):
    """Single-head performance and the heads' division of labels (METHOD.md section 3)."""

    enabled: bool = True
    points: list[str] = Field(default_factory=lambda: ["all"], min_length=1,
                              description="MHA points (attn.heads) to analyse; all: every selected MHA point")
    null_draws: int = Field(10_000, ge=100, le=1_000_000,
                            description="random label-set draws of the null model for the overlap test")
    level: Fraction01 = Field(0.05, description="significance level of the overlap test; a test whose smallest "
                              "attainable p-value is not below it is reported `uninformative`")


class PruningSpec(Strict):
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


class SweepSpec(Strict):
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


class HeadsStudySpec(Strict):
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


class StorageSpec(Strict):
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
        elif SHELL_EXPANSION.search(v):
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


class ComputeSpec(Strict):
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


class CompareModel(Strict):
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


class CompareSpec(Strict):
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


def input_size(dataset: dict) -> int:
    """DatasetSpec.input_size from a dataset section as a dict (a stored spec.json, read without
    validating it again): a text's sequence length, else the image size."""
    return dataset["max_length"] if dataset["name"] == "text" else dataset["image_size"]

