"""What a failure was, read from an exception and the ones it was raised from (Ray passes a worker's
error on as text): a full disk, an S3 outage; and one line of an error message without secrets."""

from __future__ import annotations

import errno
import os
import re

_S3_OUTAGE = re.compile(r"AWS Error (NETWORK_CONNECTION|SERVICE_UNAVAILABLE|SLOW_DOWN|INTERNAL_FAILURE|REQUEST_TIMEOUT|"
                        r"UNKNOWN \(HTTP status 5\d\d\))[^\n]*")


def s3_outage(e: BaseException) -> str | None:
    """The S3 error at the root of a failure (an outage: no connection, 5xx, throttling), found in its
    text or its causes' (Ray wraps a worker's pyarrow OSError into its own errors as text), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        m = _S3_OUTAGE.search(str(e))
        if m:
            secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
            text = m.group(0).strip()
            return text.replace(secret, "***") if secret and len(secret) >= 6 else text
        e = e.__cause__ or e.__context__
    return None


def clean_error(e: Exception, line: int = 0) -> str:
    """One line of an error message (the first, or e.g. -1 for the last), without secrets
    (pyarrow/AWS messages do not carry the secret key, but be sure)."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    text = lines[line].strip() if lines else type(e).__name__
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    return text.replace(secret, "***") if secret and len(secret) >= 6 else text


def is_disk_full(e: BaseException) -> bool:
    """Whether an error (or one it was raised from; Ray passes a worker's as text) is a full disk,
    a quota or a file-size limit."""
    seen: BaseException | None = e
    chain: set[int] = set()
    while seen is not None and id(seen) not in chain:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return True
        chain.add(id(seen))
        seen = seen.__cause__ or seen.__context__
    return any(text in str(e) for text in ("No space left on device", "Disk quota exceeded", "File too large"))
