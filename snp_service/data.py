"""Datasets: CIFAR-10, CIFAR-100 (fine labels) and Flowers-102 through torchvision in their
official layouts, from a folder or a .tar.gz archive of one (local or s3://), image-folder trees and
archives of them, text split files (snp_service.text) the same ways, and synthetic data in the
official layouts (snp_service.synthetic). Also the CCT recipe's transforms and subsetting.

`materialise()` makes the data loadable (generate, extract or download: idempotent, cached, safe to
call from every Ray worker); `build_datasets()` returns the train and evaluation splits.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tvd
from torchvision import transforms as T
from torchvision.datasets.utils import check_integrity

from snp_service import synthetic, text
from snp_service.errors import DatasetError, StoreError
from snp_service.spec import DatasetSpec, StorageSpec, resolve_path
from snp_service.store import Store

NORMALISATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Up to this size the training crop is CIFAR's (4 px reflect padding), above it RandomResizedCrop;
# snp_service.devicedata follows the same rule on the batch.
PAD_CROP_MAX_SIZE = 64


def cache_dir() -> Path:
    return Path(os.environ.get("SNP_CACHE", Path.home() / ".cache" / "snp-service"))


@dataclass
class DataBundle:
    train: Dataset
    eval: Dataset
    classes: list[str]
    root: str
    train_split: str
    eval_split: str
    text: text.TextData | None = None  # a text dataset's tokenizer and statistics

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict:
        return {"root": self.root, "train_split": self.train_split, "eval_split": self.eval_split,
                "train_size": len(self.train), "eval_size": len(self.eval), "num_classes": self.num_classes,
                **(self.text.describe() if self.text is not None else {})}


@contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# Limits on a dataset archive, checked from its member list before anything is extracted. Image
# datasets barely compress (JPEG, PNG; CIFAR's pickles ~1.1x), so a ratio far above MAX_RATIO is a
# decompression bomb, not a dataset.
MAX_MEMBERS = int(os.environ.get("SNP_MAX_ARCHIVE_MEMBERS", 5_000_000))
MAX_BYTES = int(os.environ.get("SNP_MAX_ARCHIVE_BYTES", 200 * 2**30))
MAX_RATIO = 100


def check_archive(archive: Path, tf: tarfile.TarFile) -> None:
    """Refuse, before extracting, an archive with links (a link can make a directory cycle that the
    dataset scan follows forever), more than MAX_MEMBERS members, more than MAX_BYTES unpacked, or
    unpacked over MAX_RATIO x its own size."""
    members = total = 0
    for m in tf:
        members += 1
        if m.issym() or m.islnk():
            raise DatasetError(f"dataset archive {archive}: member {m.name!r} is a link (to {m.linkname!r}); "
                               "dataset archives may hold only folders and files")
        total += m.size
        if members > MAX_MEMBERS:
            raise DatasetError(f"dataset archive {archive}: more than {MAX_MEMBERS:,} members "
                               "(SNP_MAX_ARCHIVE_MEMBERS raises the limit)")
        if total > MAX_BYTES or total > MAX_RATIO * max(archive.stat().st_size, 1):
            raise DatasetError(f"dataset archive {archive}: unpacks to more than {total:,} bytes from "
                               f"{archive.stat().st_size:,} (limits: {MAX_BYTES:,} bytes, SNP_MAX_ARCHIVE_BYTES; "
                               f"{MAX_RATIO}x the archive): refused as a decompression bomb")


def image_problem(path: str) -> str | None:
    """Why an image file cannot be a training image, from its header and its end (cheap: no decode),
    or None: unreadable or unknown format, empty, or a JPEG / PNG cut short (no end marker)."""
    from PIL import Image, UnidentifiedImageError

    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        with Image.open(path) as im:
            fmt = im.format
        with open(path, "rb") as f:
            f.seek(max(0, size - 16))
            tail = f.read()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        return f"not a readable image ({type(e).__name__})"
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        return "JPEG cut short (no end-of-image marker)"
    if fmt == "PNG" and b"IEND" not in tail:
        return "PNG cut short (no IEND chunk)"
    return None


def check_images(paths: list[str], root: Path) -> None:
    """The dataset preflight's rule: every image must pass image_problem, else the dataset is refused
    naming the files (a bad image found mid-training would fail it late, or be learnt from)."""
    bad = [(p, why) for p in paths if (why := image_problem(p))]
    if bad:
        shown = "; ".join(f"{os.path.relpath(p, root)}: {why}" for p, why in bad[:5])
        raise DatasetError(f"dataset {root}: {len(bad)} of {len(paths)} image(s) cannot be read ({shown}"
                           f"{' ...' if len(bad) > 5 else ''}); remove or replace them")


def check_images_once(paths: list[str], root: Path, extracted: Path) -> None:
    """check_images, remembered when `extracted` is an extracted archive (its folder is named by the
    archive's content, so one check holds for good)."""
    marker = extracted / ".images-checked" if (extracted / ".complete").exists() else None
    if marker is None or not marker.exists():
        check_images(paths, root)
        if marker is not None:
            marker.touch()


def check_flowers102(root: Path, origin: str, official: bool) -> None:
    """The Flowers-102 preflight, before any compute: torchvision's layout under `root`
    (flowers-102/jpg/, imagelabels.mat, setid.mat), the official .mat files (torchvision's MD5s;
    `official` False for synthetic data, whose marker stands in), every image that setid.mat lists
    present in jpg/ and readable. A bad or partial dataset is refused naming what is wrong."""
    from scipy.io import loadmat

    base, where = root / synthetic.FLOWERS_DIR, f"flowers102 dataset {origin}"
    layout = "flowers-102/jpg/image_NNNNN.jpg, flowers-102/imagelabels.mat and flowers-102/setid.mat"
    missing = [f"flowers-102/{f}" for f in ("jpg/", "imagelabels.mat", "setid.mat") if not (base / f).exists()]
    if missing:
        raise DatasetError(f"{where}: {', '.join(missing)} missing; expected torchvision's Flowers-102 layout, "
                           f"{layout}, at the top level of the folder or archive")
    if official:
        for key in ("label", "setid"):
            name, md5 = tvd.Flowers102._file_dict[key]
            if not check_integrity(str(base / name), md5):
                raise DatasetError(f"{where}: flowers-102/{name} is not the official file (MD5 {md5} expected): "
                                   "the official labels and split need the official .mat files; replace it")
    try:
        n_labels = loadmat(base / "imagelabels.mat", squeeze_me=True)["labels"].size
        setid = loadmat(base / "setid.mat", squeeze_me=True)
        ids = sorted({int(i) for key in ("trnid", "valid", "tstid") for i in np.atleast_1d(setid[key])})
    except (KeyError, OSError, TypeError, ValueError) as e:
        raise DatasetError(f"{where}: imagelabels.mat / setid.mat cannot be read ({type(e).__name__}: {e}); "
                           f"expected {layout}") from None
    if ids and (ids[0] < 1 or ids[-1] > n_labels):
        raise DatasetError(f"{where}: setid.mat lists image ids {ids[0]}-{ids[-1]}, imagelabels.mat labels "
                           f"images 1-{n_labels}; the two files do not belong together")
    files = [base / "jpg" / f"image_{i:05d}.jpg" for i in ids]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise DatasetError(f"{where}: {len(absent)} of the {len(files)} images setid.mat lists are missing from "
                           f"flowers-102/jpg/ ({', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''}): the "
                           "dataset is partial; extract or download it again")
    try:
        check_images_once([str(f) for f in files], base, root)
    except DatasetError as e:  # name the user's dataset, not only the folder it was extracted to
        raise DatasetError(f"{where}: {e}") from None


def check_folder(root: Path) -> None:
    """Refuse a dataset folder with a link to a directory (the scan follows links: a cycle never ends)."""
    for d, dirs, _files in os.walk(root, followlinks=False):
        for name in dirs:
            if os.path.islink(os.path.join(d, name)):
                raise DatasetError(f"dataset folder {root}: {os.path.join(d, name)} is a link to a directory; "
                                   "dataset folders may not link to directories (a link can make a cycle)")


def extract_archive(archive: Path) -> Path:
    """Extract a .tar(.gz) once into the cache (keyed by its SHA-256); returns the extracted dir."""
    digest = synthetic.sha256_file(archive)[:16]
    dest = cache_dir() / "archives" / digest
    done = dest / ".complete"
    with _lock(cache_dir() / "archives" / f"{digest}.lock"):
        if done.exists():
            return dest
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            with tarfile.open(archive) as tf:
                check_archive(archive, tf)
                tf.extractall(tmp, filter="data")
        except DatasetError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DatasetError(f"dataset archive {archive} is corrupt or unreadable ({e}); copy or download "
                               "it again") from None
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        done.touch()
    return dest


def _split_root(base: Path, origin: Path) -> Path:
    """The directory holding train/ and test/ (base itself, or its only subdirectory)."""
    candidates = [base] + sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    for c in candidates:
        if (c / "train").is_dir() and (c / "test").is_dir():
            return c
    raise DatasetError(f"{origin}: not an image-folder dataset; expected train/<class>/ and test/<class>/ "
                       "directories at its top level or one level down")


def _fetch_file(store, src: str, dest: Path, size: int) -> None:
    """Download one object to `dest` atomically and check its size against the object's."""
    tmp = dest.with_name(dest.name + f".part-{os.getpid()}")
    dest.parent.mkdir(parents=True, exist_ok=True)

    def get():
        with store.fs.open_input_stream(src, compression=None) as f, open(tmp, "wb") as out:
            while chunk := f.read(1 << 22):
                out.write(chunk)

    try:
        store.call(f"downloading {src}", get)
        if tmp.stat().st_size != size:
            raise DatasetError(f"s3://{src}: downloaded {tmp.stat().st_size} bytes, the object has {size}")
        tmp.rename(dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch_s3(uri: str, endpoint: str | None) -> Path:
    """Fetch s3://bucket/key (an archive) or s3://bucket/prefix/ (a tree) once per node into the cache.

    A cached copy is reused while the object's size and modification time are unchanged (recorded
    next to it with the copy's SHA-256); otherwise it is downloaded again, size-checked, and the
    archive cache downstream is keyed by content hash, so a changed object is re-extracted."""
    path = uri[5:].rstrip("/")
    store = Store.from_spec(StorageSpec(root=f"s3://{path.split('/', 1)[0]}", endpoint=endpoint))
    try:
        info = store.call(f"looking up {uri}", store.fs.get_file_info, path)
        if info.type == pafs.FileType.File:
            objects = [info]
        elif info.type == pafs.FileType.Directory:
            objects = [i for i in store.call(f"listing {uri}", store.fs.get_file_info,
                                             pafs.FileSelector(path, recursive=True))
                       if i.type == pafs.FileType.File]
        else:
            objects = []
        if not objects:
            raise DatasetError(f"dataset {uri} not found at endpoint {endpoint or 'AWS'}")
        local_root = cache_dir() / "s3" / path
        with _lock(cache_dir() / "s3" / f"{path.replace('/', '_')}.lock"):
            for o in objects:
                dest = local_root if info.type == pafs.FileType.File else local_root / o.path[len(path) + 1:]
                meta = dest.with_name(dest.name + ".s3meta.json")
                stamp = {"size": o.size, "mtime": str(o.mtime)}
                if dest.exists() and meta.exists() and {k: json.loads(meta.read_text()).get(k) for k in stamp} == stamp:
                    continue
                _fetch_file(store, o.path, dest, o.size)
                meta.write_text(json.dumps({**stamp, "sha256": synthetic.sha256_file(dest)}))
    except StoreError as e:
        raise DatasetError(f"dataset {uri}: {e}") from None
    return local_root


def materialise(ds: DatasetSpec, endpoint: str | None = None) -> Path:
    """Make the dataset loadable and return the local root the loaders read from. An s3:// root is
    fetched from `endpoint` (the job's storage endpoint) into the local cache first."""
    if ds.root.startswith("s3://"):
        local = fetch_s3(ds.root, endpoint)
        base = extract_archive(local) if local.is_file() else local
        return _split_root(base, Path(ds.root)) if ds.name == "imagefolder" else base
    root = resolve_path(ds.root)
    if ds.synthetic is not None:
        s = ds.synthetic
        with _lock(root / ".synthetic.lock"):
            if ds.name == "cifar100":
                synthetic.write_cifar100(root, s.num_classes, s.train_per_class, s.test_per_class, s.noise, s.seed)
            else:
                synthetic.write_flowers102(root, s.num_classes, s.train_per_class, s.test_per_class,
                                           s.image_size, s.noise, s.seed)
        return root
    if not root.exists() and not ds.download:
        raise DatasetError(f"dataset root {root} does not exist")
    base = extract_archive(root) if root.is_file() else root  # a local archive is read like an s3:// one
    if ds.name in ("imagefolder", "text"):
        check_folder(base)
    if ds.name == "imagefolder":
        return _split_root(base, root)
    if ds.download:
        root.mkdir(parents=True, exist_ok=True)
    return base


class _SyntheticCheck:
    """Mixin: accept files written by snp_service.synthetic (checked against its SHA-256 marker)
    in place of torchvision's md5 check of the official files. Parsing stays torchvision's."""

    _synthetic_dir: str

    def _check_integrity(self) -> bool:
        return synthetic.verify(Path(self.root) / self._synthetic_dir)


class SyntheticCIFAR100(_SyntheticCheck, tvd.CIFAR100):
    _synthetic_dir = synthetic.CIFAR_DIR
    meta = {**tvd.CIFAR100.meta, "md5": None}  # the marker already covers the meta file


class SyntheticFlowers102(_SyntheticCheck, tvd.Flowers102):
    _synthetic_dir = synthetic.FLOWERS_DIR


def _targets(ds: Dataset) -> list[int]:
    if isinstance(ds, Subset):
        inner = _targets(ds.dataset)
        return [inner[i] for i in ds.indices]
    if isinstance(ds, torch.utils.data.ConcatDataset):
        return [t for d in ds.datasets for t in _targets(d)]
    for attr in ("targets", "_labels"):
        if hasattr(ds, attr):
            return list(getattr(ds, attr))
    raise TypeError(f"cannot read labels of {type(ds).__name__}")


def targets(ds: Dataset) -> np.ndarray:
    return np.asarray(_targets(ds), dtype=np.int64)


def subset_per_class(ds: Dataset, max_per_class: int | None, seed: int) -> Dataset:
    """At most `max_per_class` images of each class, chosen by a seeded permutation (kept in order)."""
    if max_per_class is None:
        return ds
    y = targets(ds)
    order = np.random.default_rng(seed).permutation(len(y))
    keep, seen = [], {}
    for i in order:
        c = int(y[i])
        if seen.get(c, 0) < max_per_class:
            seen[c] = seen.get(c, 0) + 1
            keep.append(int(i))
    return Subset(ds, sorted(keep))


RANDOM_LABELS_STREAM = 0x52414E44  # keys the label-blind control's generator apart from every other seeded draw


class RandomLabels(Dataset):
    """A split whose labels are drawn uniformly at random from `num_labels`, independent of the images
    (the label-blind control, dataset.random_labels): the same images, the same order, a seeded label
    for each (`stream` keeps the splits' draws apart)."""

    def __init__(self, base: Dataset, num_labels: int, seed: int, stream: int):
        self.base = base
        rng = np.random.default_rng([RANDOM_LABELS_STREAM, seed, stream])
        self.targets = rng.integers(0, num_labels, size=len(base)).tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.base[i][0], self.targets[i]


class ResizeIfNeeded:
    """The evaluation framing, Resize(size) then CenterCrop(size), for images of another size (a
    non-square image is cropped, not squashed, so training sees what evaluation sees); images already
    that size pass untouched (the same pixels, without the cost: 10% of the CIFAR loader's time)."""

    def __init__(self, size: int):
        self.size = size
        self.resize = T.Compose([T.Resize(size, antialias=True), T.CenterCrop(size)])

    def __call__(self, img):
        if getattr(img, "size", None) == (self.size, self.size):
            return img
        return self.resize(img)

    def __repr__(self) -> str:
        return f"ResizeIfNeeded({self.size})"


def transforms(ds: DatasetSpec, train: bool) -> T.Compose:
    mean, std = NORMALISATION.get(ds.name, IMAGENET)
    size, a = ds.image_size, ds.augment
    steps: list = []
    if train and a.crop:
        steps.append(T.RandomCrop(size, padding=4, padding_mode="reflect") if size <= PAD_CROP_MAX_SIZE
                     else T.RandomResizedCrop(size, antialias=True))
        if size <= PAD_CROP_MAX_SIZE:
            steps.insert(0, ResizeIfNeeded(size))
    else:
        steps += [T.Resize(size, antialias=True), T.CenterCrop(size)]
    if train and a.flip:
        steps.append(T.RandomHorizontalFlip())
    if train and a.randaugment:
        steps.append(T.RandAugment())
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def _check_classes(names: list[str], origin: Path) -> list[str]:
    if len(names) < 2:
        raise DatasetError(f"{origin}: found {len(names)} class(es); at least 2 are needed")
    return names


def build_datasets(ds: DatasetSpec, seed: int = 0, augment: bool = True, endpoint: str | None = None) -> DataBundle:
    """Train and evaluation splits with the spec's transforms and subsets (materialise() runs first;
    `endpoint` serves an s3:// root)."""
    root = materialise(ds, endpoint)
    if ds.name == "text":
        t, k = ds, ds.tokenizer
        td = text.load(root, ds.root, t.subset, t.text_column, t.label_column, t.row_filter, t.file_format,
                       t.max_length, k.kind, k.vocab_size, k.min_frequency, k.lowercase)
        _check_classes(td.classes, root)
        return DataBundle(subset_per_class(td.train, ds.max_per_class, seed),
                          subset_per_class(td.eval, ds.eval_max_per_class, seed), td.classes, str(td.folder),
                          "train", "test", td)
    tr, ev = transforms(ds, train=augment), transforms(ds, train=False)
    try:
        if ds.name in ("cifar10", "cifar100"):
            cls = {"cifar10": tvd.CIFAR10, "cifar100": SyntheticCIFAR100 if ds.synthetic else tvd.CIFAR100}[ds.name]
            train = cls(str(root), train=True, transform=tr, download=ds.download)
            evald = cls(str(root), train=False, transform=ev, download=False)
            classes, splits = list(train.classes), ("train", "test")
        elif ds.name == "flowers102":
            cls = SyntheticFlowers102 if ds.synthetic else tvd.Flowers102
            if ds.download:
                cls(str(root), download=True)  # torchvision fetches the official files (MD5-checked) once
            check_flowers102(root, ds.root, official=ds.synthetic is None)
            parts = ["train", "val"] if ds.train_split == "trainval" else ["train"]  # the official split
            sets = [cls(str(root), split=p, transform=tr) for p in parts]
            train = sets[0] if len(sets) == 1 else torch.utils.data.ConcatDataset(sets)
            evald = cls(str(root), split="test", transform=ev)
            # the 102 official category names in label order, as torchvision ships them with Flowers102;
            # checked against a second public copy, the Udacity AIPND flower project's cat_to_name.json
            # (read from github.com/Fatma-Hamouda/aipnd-project at 8433131): the same but for two
            # spellings there ("pink-yellow dahlia" without "?", "lotus lotus" for "lotus")
            classes = synthetic.class_names(ds.synthetic.num_classes) if ds.synthetic else list(tvd.Flowers102.classes)
            splits = ("+".join(parts), "test")
        else:
            train = tvd.ImageFolder(str(root / "train"), transform=tr)
            evald = tvd.ImageFolder(str(root / "test"), transform=ev)
            if train.classes != evald.classes:
                raise DatasetError(f"{root}: train/ and test/ have different class folders")
            check_images_once([p for p, _ in train.samples + evald.samples], root, root.parent)
            classes, splits = list(train.classes), ("train", "test")
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise DatasetError(f"{ds.name} at {root}: {e} (expected the official layout under this root)") from None
    except (FileNotFoundError, OSError, ValueError) as e:
        message = str(e)  # torchvision lists every class folder it found empty: thousands, on one line
        message = message if len(message) <= 300 else f"{message[:300]} ... ({len(message):,} characters in all)"
        raise DatasetError(f"{ds.name} at {root}: cannot load: {message}") from None
    _check_classes(classes, root)
    train = subset_per_class(train, ds.max_per_class, seed)
    evald = subset_per_class(evald, ds.eval_max_per_class, seed)
    if ds.random_labels:  # after the subsets: the same images as the job on real labels
        train, evald = (RandomLabels(d, len(classes), seed, i) for i, d in enumerate((train, evald)))
    return DataBundle(train, evald, classes, str(root), splits[0], splits[1])
