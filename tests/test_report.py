"""The report, as a person sees it: every figure present and loaded in a real headless Chromium."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import chromium, inspect_page

pytestmark = pytest.mark.slow
ARTEFACTS = Path(os.environ.get("SNP_TEST_ARTEFACTS", Path(__file__).resolve().parents[1] / ".test-artefacts"))


def test_report_has_every_section_and_figure(full_job):
    _, spec, job = full_job
    page = job.read_bytes("report/report.html").decode()
    for section in ("Training", "Single-nodal performance", "SNP matrices", "Attention heads", "ANDC pruning",
                    "Structural pruning", "Provenance", "Definitions", "Job spec"):
        assert section in page, section
    names = {Path(f.path).name for f in job.files() if "/report/figures/" in f.path}
    expected = {"training", "layers", "cluster_sizes", "heads_blocks_0_attn_heads", "pruning"} | {
        "snp_" + p.replace(".", "_") for p in spec.selected_points()}
    for name in expected:
        assert {f"{name}.png", f"{name}.svg"} <= names, name
    assert page.count("<img src='data:image/png;base64,") == len(expected)
    assert "synth_000" in page  # label names from the dataset, not indices


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (.ci/run installs Debian's chromium)")
def test_report_renders_in_headless_chromium(full_job, tmp_path):
    _, _, job = full_job
    html = tmp_path / "report.html"
    html.write_bytes(job.read_bytes("report/report.html"))
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTEFACTS / "report-screenshot.png"
    result = inspect_page(html.as_uri(), shot)
    assert result["images"], "no images on the page"
    broken = [i["alt"] for i in result["images"] if not (i["complete"] and i["width"] > 0)]
    assert not broken, f"broken images: {broken}"
    assert not result["console_errors"] and not result["exceptions"] and not result["failed_requests"], result
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:4] == b"\x89PNG"


def test_cli_results_lists_and_prints_tables(full_job):
    _, spec, job = full_job
    root = spec.storage.root
    run = [sys.executable, "-m", "snp_service.cli"]
    listing = subprocess.run(run + ["results", "--store", root], capture_output=True, text=True)
    assert listing.returncode == 0 and job.job_id in listing.stdout and "complete" in listing.stdout
    table = subprocess.run(run + ["results", job.job_id, "--table", "andc", "--store", root], capture_output=True,
                           text=True)
    assert table.returncode == 0 and "magnitude" in table.stdout
    missing = subprocess.run(run + ["results", "../etc", "--store", root], capture_output=True, text=True)
    assert missing.returncode == 2 and "not a job id" in missing.stderr and "Traceback" not in missing.stderr
    absent = subprocess.run(run + ["results", "nothere-0123", "--store", root], capture_output=True, text=True)
    assert absent.returncode == 2 and "no job" in absent.stderr and "Traceback" not in absent.stderr
    rebuilt = subprocess.run(run + ["report", job.job_id, "--store", root], capture_output=True, text=True)
    assert rebuilt.returncode == 0, rebuilt.stderr
    intact = subprocess.run(run + ["verify", job.job_id, "--store", root], capture_output=True, text=True)
    assert intact.returncode == 0, intact.stdout + intact.stderr  # the rebuilt report does not damage its job
    again = subprocess.run(run + ["results", job.job_id, "--table", "layers", "--store", root], capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr
