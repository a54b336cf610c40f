"""What every section of the job spec is built from: the strict base model, the shared field types
and documented limits, the rules for names, paths and S3 endpoints, and how a validation error reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# snp_service.pipeline.STAGES; jobs finished before issue 27 recorded one `snp` stage in place of measure + cluster
STAGE_ORDER = ("data", "train", "evaluate", "measure", "cluster", "heads", "prune", "structure", "report")
# documented limits, checked in bounded time before anything runs (README, "Job spec in brief")
MAX_GRID_VALUES = 100  # values of one sweep dimension
MAX_TRIALS = 500  # sweep trials
MAX_COMPARE_RUNS = 200  # (model, seed) jobs of one comparison
MAX_PARAMETERS = 2_000_000_000  # a CCT's parameters (a 64-block 4096-wide CCT has 13 billion)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # job and study names: they name folders
Fraction01 = Annotated[float, Field(gt=0.0, lt=1.0)]
# `$NAME`, `${NAME}` or a leading `~`: what a shell would expand (refused in paths, see resolve_path)
SHELL_EXPANSION = re.compile(r"^~|\$\{?[A-Za-z_]")


class Strict(BaseModel):
    # strict: `epochs: yes` is not 1, and `lr: "1e-3"` not a number; no inf or nan anywhere
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True, allow_inf_nan=False)


Seed = Annotated[int, Field(ge=0, le=2**32 - 1, description="random seed (0 to 2^32 - 1, what the generators take)")]


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
    if SHELL_EXPANSION.search(p):
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


def format_validation_error(err: ValidationError, source: str) -> str:
    """A pydantic validation error as the user reads it: one line per problem, naming the field
    (`source`: the job file, or what a derived job was made from)."""
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

