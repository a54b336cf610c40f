"""Reading a job file: bounded, strict YAML (no key given twice, no exploding anchors), the
command line's `--set path=value` and `--store ROOT` applied to it, then validation into a JobSpec
whose every problem is named by file and field (SpecError)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from snp_service.errors import SpecError
from snp_service.spec.base import format_validation_error
from snp_service.spec.job import JobSpec

MAX_YAML_BYTES = 1_000_000
MAX_YAML_NODES = 100_000  # bounds alias expansion ("billion laughs") before validation


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
    """A job file's text (at most MAX_YAML_BYTES when bytes, UTF-8) as a mapping of job fields;
    SpecError naming `source` and the line otherwise."""
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


def spec_from_dict(data: dict, source: str = "<spec>") -> JobSpec:
    """`data` (a parsed job file, or a stored spec.json) validated into a JobSpec; SpecError naming
    `source` and every problem's field otherwise."""
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
    """The job spec as JSON schema (`snp-service schema`)."""
    return JobSpec.model_json_schema()
