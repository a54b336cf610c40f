"""The training data path that keeps a GPU busy and the CPU free: each split is decoded once, at
the job's resolution, into a uint8 tensor (N, 3, S, S), cached on disk, and kept on the training
device; every batch is cut from it by a seeded permutation and augmented there (horizontal flip;
up to 64 px the random crop with 4 px reflect padding, above it RandomResizedCrop; mixup / cutmix by
the training loop's batch mixer on the same device), so epochs never decode a JPEG again. The
DataLoader path (per-image PIL transforms on CPU worker processes) stays for RandAugment, whose
per-image PIL operations have no batched form here.

Same recipe as snp_service.data.transforms (crop, flip, normalisation), other random streams: a job
trained through this path is the same experiment, not the same bits (compute.data_on_device is
outside the job id, like the precision a device picks). Above 64 px the crops are cut from the image
at the job's resolution (the evaluation framing: shorter side resized to S, centre square), where the
DataLoader path cuts them from the decoded original: a crop of a fraction of the image is magnified
from fewer pixels, and nothing outside the centre square is ever in a crop.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import roi_align
from torchvision.transforms import v2

if TYPE_CHECKING:  # DeviceBatches and crop_flip run without pydantic (bench/paper_gpu.py on a bare GPU machine)
    from snp_service.spec import DatasetSpec

AUTO_MAX_SIZE = 64  # `auto` takes this path up to this size; `true` at any (the splits held as N x 3 x S x S bytes)


def normalisation(ds: DatasetSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The dataset's per-channel mean and std (snp_service.data's, the DataLoader path's)."""
    from snp_service.data import IMAGENET, NORMALISATION  # local: see TYPE_CHECKING above

    return NORMALISATION.get(ds.name, IMAGENET)


def usable(ds: DatasetSpec, setting, device: torch.device) -> bool:
    """Whether training takes this path, never with RandAugment nor for text: compute.data_on_device true (any
    image size), or auto on a GPU for images up to AUTO_MAX_SIZE px."""
    if setting is False or ds.augment.randaugment or ds.name == "text":  # word ids are no images
        return False
    return setting is True or (device.type == "cuda" and ds.image_size <= AUTO_MAX_SIZE)


def decode(dataset: Dataset, ds: DatasetSpec, key: dict, num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The split as uint8 images (N, 3, S, S) and int64 labels, decoded once through the split's
    evaluation transform (resize, centre crop, no augmentation) and cached under
    <cache>/decoded/<digest>.npz (the digest covers `key`: the dataset's description and the spec's
    dataset section, not the files' bytes: archives are extracted to content-named folders, but a
    dataset rewritten in place under the same root needs that cache file removed)."""
    from snp_service.data import cache_dir  # local: see TYPE_CHECKING above

    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = cache_dir() / "decoded" / f"{digest}.npz"
    if path.exists():
        with np.load(path) as z:
            return torch.from_numpy(z["images"]), torch.from_numpy(z["labels"])
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalisation(ds))
    images, labels = [], []
    for x, y in DataLoader(dataset, batch_size=512, shuffle=False, num_workers=num_workers):
        # the transform's ToTensor divided by 255 and Normalize shifted and scaled: undone exactly
        images.append(((x * std + mean) * 255).round().clamp(0, 255).to(torch.uint8))
        labels.append(torch.as_tensor(y, dtype=torch.int64))
    out = torch.cat(images), torch.cat(labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, images=out[0].numpy(), labels=out[1].numpy())
    tmp.rename(path)  # atomic: a concurrent reader sees the whole file or none
    return out


def resized_crop_boxes(n: int, size: int, generator: torch.Generator, tries: int = 10) -> torch.Tensor:
    """n crop boxes (x1, y1, x2, y2) in an S x S image, float32 on the generator's device, drawn as
    torchvision's v2.RandomResizedCrop.make_params draws one (its default area 8-100% and aspect ratio
    3/4-4/3, as snp_service.data.transforms: up to `tries` of a uniform area and log-uniform ratio,
    the first that fits, else the whole square), for all n at once. make_params itself draws one box
    per Python call from the global CPU stream (about 60 us each on a CPU core; a device generator
    would add a sync per batch): here a batch's boxes never leave the device."""
    rrc = v2.RandomResizedCrop(size)
    new = functools.partial(torch.empty, (n, tries), device=generator.device)
    area = size * size * new().uniform_(*rrc.scale, generator=generator)
    aspect = torch.exp(new().uniform_(math.log(rrc.ratio[0]), math.log(rrc.ratio[1]), generator=generator))
    w, h = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    fits = (w > 0) & (w <= size) & (h > 0) & (h <= size)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first try that fits (0 when none does)
    some, whole = fits.any(1), torch.full((n,), float(size), device=generator.device)
    w, h = torch.where(some, w.gather(1, first)[:, 0], whole), torch.where(some, h.gather(1, first)[:, 0], whole)
    u = torch.rand(2, n, device=generator.device, generator=generator)
    top, left = (u[0] * (size - h + 1)).floor(), (u[1] * (size - w + 1)).floor()
    return torch.stack([left, top, left + w, top + h], 1)


def crop_flip(x: torch.Tensor, crop: bool, flip: bool, generator: torch.Generator,
              resized: bool = False) -> torch.Tensor:
    """Random crop of the same size after 4 px reflect padding (with `resized`: a RandomResizedCrop
    box resized back to S x S, bilinear), and a horizontal flip with probability 1/2, per image of a
    float batch (B, C, S, S), on its device."""
    b, c, s, _ = x.shape
    if crop and resized:
        # one roi_align call crops and resizes every image of the batch: bilinear samples at the output
        # pixels' centres (aligned=True, one sample each), i.e. interpolate(crop, S) but for the samples
        # that fall less than half a pixel outside the box, which weigh the image there instead of
        # repeating the box's edge
        boxes = resized_crop_boxes(b, s, generator)
        rois = torch.cat([torch.arange(b, device=x.device, dtype=boxes.dtype)[:, None], boxes], 1)
        x = roi_align(x.contiguous(), rois.to(x.dtype), output_size=(s, s), spatial_scale=1.0, sampling_ratio=1,
                      aligned=True)
    elif crop:
        padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
        dy, dx = (torch.randint(0, 9, (b,), device=x.device, generator=generator) for _ in range(2))
        ar = torch.arange(s, device=x.device)
        rows = (dy[:, None] + ar)[:, None, :, None].expand(b, c, s, s)
        cols = (dx[:, None] + ar)[:, None, None, :].expand(b, c, s, s)
        x = padded[torch.arange(b, device=x.device)[:, None, None, None],
                   torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    if flip:
        mirrored = torch.rand(b, device=x.device, generator=generator) < 0.5
        x = torch.where(mirrored[:, None, None, None], x.flip(3), x)
    return x


class DeviceBatches:
    """One split on a device as uint8, served in normalised float batches (channels_last). With
    `train`, each epoch is a seeded permutation, this rank's share of it (rank::world, so ranks see
    disjoint images, like a distributed sampler), cropped and flipped; without, the split in order,
    unaugmented (evaluation: every rank sees the whole split). `for_dataset` fills the recipe in
    from a job's dataset section."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device, *,
                 mean: tuple[float, ...], std: tuple[float, ...], train: bool, crop: bool = True, flip: bool = True,
                 resized_crop: bool = False, rank: int = 0, world: int = 1, drop_last: bool = False):
        self.images, self.labels = images.to(device), labels.to(device)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.batch_size, self.device, self.train, self.crop, self.flip = batch_size, device, train, crop, flip
        self.resized_crop = resized_crop
        self.rank, self.world, self.drop_last = rank, world, drop_last
        self.generator = torch.Generator(device=device)
        self.epoch_seed = 0

    def set_epoch_seed(self, seed: int) -> None:
        self.epoch_seed = seed

    def _images(self) -> int:
        """Images this rank sees per pass: an equal share of the split when training, else all."""
        return len(self.labels) // self.world if self.train else len(self.labels)

    def _rows(self) -> torch.Tensor:
        if not self.train:
            return torch.arange(len(self.labels), device=self.device)
        self.generator.manual_seed(self.epoch_seed)
        order = torch.randperm(len(self.labels), device=self.device, generator=self.generator)
        return order[self.rank::self.world][:self._images()]

    def __len__(self) -> int:
        n = self._images()
        return n // self.batch_size if self.train and self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rows = self._rows()
        for i in range(len(self)):
            idx = rows[i * self.batch_size:(i + 1) * self.batch_size]
            x = (self.images[idx].float() - self.mean) / self.std
            if self.train:
                x = crop_flip(x, self.crop, self.flip, self.generator, self.resized_crop)
            yield x.contiguous(memory_format=torch.channels_last), self.labels[idx]


def for_dataset(images: torch.Tensor, labels: torch.Tensor, ds: DatasetSpec, batch_size: int, device: torch.device,
                train: bool, **kw) -> DeviceBatches:
    """DeviceBatches with the dataset's normalisation and its crop / flip settings."""
    from snp_service.data import PAD_CROP_MAX_SIZE  # local: see TYPE_CHECKING above

    mean, std = normalisation(ds)
    return DeviceBatches(images, labels, batch_size, device, mean=mean, std=std, train=train,
                         crop=ds.augment.crop, flip=ds.augment.flip,
                         resized_crop=ds.image_size > PAD_CROP_MAX_SIZE, **kw)
