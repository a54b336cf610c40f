"""Networks trained elsewhere: read a checkpoint safely, recognise its key layout and map it onto
the service's modules (METHOD.md 5). Pure torch on bytes: the caller (the pipeline's load stage)
fetches the bytes from a local path, S3 or a finished job.

Formats (`model.weights_format`):
- `authors`: the CCT authors' (SHI-Labs Compact-Transformers) state_dict keys, e.g.
  `tokenizer.conv_layers.0.0.weight`, `classifier.blocks.0.self_attn.qkv.weight`,
  `classifier.attention_pool.weight`, `classifier.fc.weight`. Their `*_sine` constructors build a
  learnable positional embedding (their `_cct()` does not pass `positional_embedding` on), so their
  files hold `classifier.positional_emb`: it is taken from the file, and the model must be built with
  `positional_embedding: learnable`.
- `snp-service`: this service's own keys (a finished job's `model/weights.pt`, or its training
  checkpoint's `{"model": ...}`).
- `state_dict`: keys that already match the model's own module names (e.g. torchvision's).
- `auto`: recognised from the keys.

A plain state_dict or a dict holding one under `state_dict` or `model` (as timm-style training
scripts save) is accepted; `module.` prefixes (DistributedDataParallel) are removed. Only what
`torch.load(weights_only=True)` accepts is loaded: a file that needs arbitrary unpickling is
refused, never loaded unsafely.

A file is checked for type, size and content before it is trusted (docs/RELIABILITY.md): the
store reads at most MAX_WEIGHTS_BYTES of a regular file; here a zip whose records would inflate
beyond that, or beyond MAX_INFLATE_RATIO x the file, is refused before torch.load inflates it; and
after loading, every tensor must be dense, hold values (not a meta tensor), be of the model's kind
of number (real, integer; never complex or boolean for a real parameter) and be finite.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import zipfile

import torch
from torch import nn

from snp_service.errors import CheckpointError

FORMATS = ("auto", "authors", "snp-service", "state_dict")
# the largest network the spec accepts (spec.MAX_PARAMETERS, 2 billion) in float32
MAX_WEIGHTS_BYTES = int(os.environ.get("SNP_MAX_WEIGHTS_BYTES", 8 * 2**30))
# torch.save stores its records uncompressed (ratio 1); as for the dataset archives (data.MAX_RATIO),
# far above that is a decompression bomb
MAX_INFLATE_RATIO = 100

# the authors' key -> the service's key (regular expressions, applied in order)
_AUTHORS_TO_SERVICE = [
    (r"^classifier\.positional_emb$", "positional_emb"),
    (r"^classifier\.attention_pool\.", "pool.attention_pool."),
    (r"^classifier\.blocks\.(\d+)\.self_attn\.", r"blocks.\1.attn."),
    (r"^classifier\.blocks\.(\d+)\.linear([12])\.", r"blocks.\1.mlp.linear\2."),
    (r"^classifier\.blocks\.(\d+)\.", r"blocks.\1."),
    (r"^classifier\.norm\.", "norm."),
    (r"^classifier\.fc\.", "fc."),
]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_inflated_size(data: bytes, source: str, limit: int = MAX_WEIGHTS_BYTES) -> None:
    """Refuse a torch zip whose records inflate beyond `limit` bytes or MAX_INFLATE_RATIO x the file,
    from the sizes its central directory states (zipfile's ZipInfo; torch's reader allocates by the
    same sizes), before torch.load inflates anything."""
    if not data.startswith(b"PK\x03\x04"):
        return  # a legacy pickle holds its tensors as they are: no larger than the file
    try:
        records = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as e:
        raise CheckpointError(f"{source}: not a PyTorch checkpoint (a damaged zip: {e})") from None
    inflated = sum(r.file_size for r in records)
    if inflated > limit or inflated > MAX_INFLATE_RATIO * len(data):
        raise CheckpointError(f"{source}: its records inflate to {inflated:,} bytes from a {len(data):,}-byte file "
                              f"(limits: {limit:,} bytes, SNP_MAX_WEIGHTS_BYTES; {MAX_INFLATE_RATIO}x the file): "
                              "refused as a decompression bomb (torch.save never compresses its records)")


def read_state_dict(data: bytes, source: str, limit: int = MAX_WEIGHTS_BYTES) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file's bytes (safe load only, `limit` bytes inflated at most),
    unwrapped from `state_dict` / `model` and from DistributedDataParallel's `module.` prefix."""
    if not (data.startswith(b"PK\x03\x04") or data.startswith(b"\x80")):  # torch's zip format, or a pickle
        raise CheckpointError(f"{source}: not a PyTorch checkpoint (neither torch.save's zip format nor a pickle; "
                              f"it starts with {data[:16]!r})")
    check_inflated_size(data, source, limit)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{source}: refused: torch.load(weights_only=True) cannot read it safely ({first}); "
                              "it holds Python objects beyond tensors. Save only the state_dict "
                              "(torch.save(model.state_dict(), path)); snp-service never unpickles arbitrary "
                              "objects") from None
    except Exception as e:  # torch raises many kinds on bytes that are not a checkpoint
        raise CheckpointError(f"{source}: not a PyTorch checkpoint ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else 'unreadable'})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{source}: holds no state_dict (expected a dict of tensors, or one under "
                              f"'state_dict' or 'model'; got {type(obj).__name__})")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def detect_format(state: dict[str, torch.Tensor]) -> str:
    """`authors` when the keys are the CCT authors' (a `classifier.` part), else `state_dict`
    (the model's own names; this service's own weights are such a state_dict)."""
    if any(k.startswith("classifier.") for k in state) and any(k.startswith("tokenizer.conv_layers") for k in state):
        return "authors"
    return "state_dict"


def to_model_keys(state: dict[str, torch.Tensor], fmt: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under the service's module names."""
    if fmt == "auto":
        fmt = detect_format(state)
    if fmt != "authors":
        return dict(state)
    out = {}
    for k, v in state.items():
        for pattern, repl in _AUTHORS_TO_SERVICE:
            new = re.sub(pattern, repl, k)
            if new != k:
                k = new
                break
        out[k] = v
    return out


def check_fits(model: nn.Module, state: dict[str, torch.Tensor], source: str, num_classes: int,
               img_size: int) -> None:
    """Refuse, with one message naming the first mismatches, a checkpoint that does not fit the model:
    another architecture (missing / unexpected keys, other shapes), another number of classes than
    the dataset, or a positional embedding for another image size."""
    own = model.state_dict()
    fc = next((k for k in ("fc.weight", "classifier.weight", "head.weight") if k in state and k in own), None)
    if fc is not None and state[fc].shape[0] != own[fc].shape[0]:
        raise CheckpointError(f"{source}: the checkpoint classifies {state[fc].shape[0]} classes, the dataset has "
                              f"{num_classes}; analyse it on a dataset with the same classes")
    if "positional_emb" in state and "positional_emb" in own and state["positional_emb"].shape[2] == \
            own["positional_emb"].shape[2] and state["positional_emb"].shape[1] != own["positional_emb"].shape[1]:
        raise CheckpointError(f"{source}: its positional embedding holds {state['positional_emb'].shape[1]} tokens "
                              f"of {state['positional_emb'].shape[2]} dims; at image size {img_size} the model has "
                              f"{own['positional_emb'].shape[1]} tokens of {own['positional_emb'].shape[2]} dims "
                              "(set dataset.image_size to the size the network was trained at)")
    if "positional_emb" in state and "positional_emb" not in own:
        raise CheckpointError(f"{source}: the checkpoint has a learnable positional embedding; build the model with "
                              "model.positional_embedding: learnable (the CCT authors' *_sine checkpoints hold one too)")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"other shapes: {'; '.join(shapes[:4])}")
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''}")
        raise CheckpointError(f"{source}: does not fit model {getattr(model, 'name', type(model).__name__)} "
                              f"({'; '.join(parts)}); is it a checkpoint of another architecture or format?")


def number_kind(t: torch.Tensor) -> str:
    """What a tensor's numbers are: real, complex, boolean or integer."""
    return ("real" if t.is_floating_point() else "complex" if t.is_complex() else "boolean" if t.dtype == torch.bool
            else "integer")


def check_values(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse, naming the tensors, what load_state_dict would take wrongly or not at all: sparse or
    meta tensors (no dense values), another kind of number than the model's (complex would lose its
    imaginary part, booleans would read as 0/1), and NaN or infinite values (the job would end
    complete at chance accuracy with NaN statistics everywhere)."""
    own = model.state_dict()

    def refuse(what: str, keys: list[str], advice: str) -> None:
        if keys:
            raise CheckpointError(f"{source}: {what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} "
                                  f"({len(keys)} tensor(s)); {advice}")

    refuse("sparse tensors", [k for k, t in state.items() if t.layout != torch.strided],
           "save dense ones (tensor.to_dense())")
    refuse("meta tensors (shapes without values)", [k for k, t in state.items() if t.device.type == "meta"],
           "save the state_dict of a network whose weights exist")
    refuse("another kind of number than the model's", [
        f"{k} {number_kind(t)} ({t.dtype}) where the model has {number_kind(own[k])}"
        for k, t in state.items() if k in own and number_kind(t) != number_kind(own[k])],
        "save the network's own tensors, not converted ones")
    non_finite = [f"{k} ({int((~torch.isfinite(t)).sum())} of {t.numel()})" for k, t in state.items()
                  if t.is_floating_point() and not torch.isfinite(t).all()]
    refuse("NaN or infinite values", non_finite, "a network with non-finite weights predicts nothing; was its "
           "training diverging?")


def load_weights(model: nn.Module, data: bytes, source: str, fmt: str, num_classes: int,
                 img_size: int) -> dict[str, torch.Tensor]:
    """Read `data`, map it to the model's keys, check it fits and holds usable numbers, load it;
    returns the loaded state_dict (the service's keys), which the job stores as its weights."""
    state = to_model_keys(read_state_dict(data, source), fmt)
    check_fits(model, state, source, num_classes, img_size)
    check_values(model, state, source)
    model.load_state_dict(state)
    return model.state_dict()
