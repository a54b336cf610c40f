"""Local files the service reads whole (a checkpoint, a stored artefact): refused by kind and size
before they are read, and the nearest existing folder of a path not created yet."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from snp_service.errors import StoreError


def nearest_existing(path: Path) -> Path:
    """`path`, or its nearest parent that exists (a store's folder is created on its first write)."""
    while not path.exists():
        path = path.parent
    return path


def too_large(what: str, size: int, limit: int) -> str:
    return (f"{what} is {size:,} bytes, over the limit of {limit:,} for a file the service reads whole "
            "(SNP_MAX_WEIGHTS_BYTES raises it for weights)")


def read_regular_file(path: Path, limit: int | None, what: str) -> bytes:
    """A local file's bytes, checked before it is read: a regular file (a FIFO would block, a device
    such as /dev/zero never end; links are followed to what they name) of at most `limit` bytes by
    its size (a 40 GB sparse file is refused, not read); opened without blocking and checked on the
    open descriptor, so what is checked is what is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise StoreError(f"{what} not found") from None
    except OSError as e:
        raise StoreError(f"{what}: cannot read: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            kind = ("a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode)
                    else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "a socket")
            raise StoreError(f"{what}: not a regular file ({kind}); refused before reading")
        if limit is not None and info.st_size > limit:
            raise StoreError(too_large(what, info.st_size, limit))
        try:
            data = f.read() if limit is None else f.read(limit + 1)  # bounded even if it grows meanwhile
        except OSError as e:
            raise StoreError(f"{what}: cannot read: {e.strerror or e}") from None
    if limit is not None and len(data) > limit:
        raise StoreError(too_large(what, len(data), limit))
    return data
