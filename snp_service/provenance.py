"""Where a number came from: the code version, the hardware and the time, recorded in every manifest
and shown in every report (a rebuilt report reads them from the manifest, never from the machine that
redraws it). No Ray, no storage."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from snp_service import __version__


def timestamp() -> str:
    """The time now as stage records, manifests and leases write it: UTC, ISO 8601, whole seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        rev, dirty = "", ""
    return f"{__version__}+{rev}{'.dirty' if dirty else ''}" if rev else __version__


def hardware() -> dict:
    """This machine: platform, Python, torch, CPU model and count, GPU if any."""
    import torch  # here, not at the top: `snp-service validate` imports this module's neighbours without torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def describe_hardware(h: dict | None) -> str:
    """One line for a report: CPU, CPU count, GPU, torch."""
    if not h:
        return "n/a (not recorded)"
    return f"{h.get('cpu')}, {h.get('cpu_count')} CPUs{', ' + h['gpu'] if h.get('gpu') else ''}; torch {h.get('torch')}"
