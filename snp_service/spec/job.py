"""The job spec: one pydantic model that a whole run flows from (its sections in
snp_service.spec.sections), its id (snp_service.spec.identity) and what the pipeline asks of it: the
measurement points it selects, its network, its stages. The jobs derived from it and the cross-checks
between its sections are in snp_service.spec.derived."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from snp_service.models.registry import match_points, measurement_points
from snp_service.spec.base import NAME_PATTERN, SHELL_EXPANSION, STAGE_ORDER, Strict, resolve_path
from snp_service.spec.derived import check_sections, compare_jobs, heads_jobs
from snp_service.spec.identity import PATH_FIELDS, job_digest
from snp_service.spec.sections import (
    AnalysisSpec,
    CompareSpec,
    ComputeSpec,
    DatasetSpec,
    HeadsSpec,
    HeadsStudySpec,
    MeasureSpec,
    ModelSpec,
    PruningSpec,
    StorageSpec,
    SweepSpec,
    TrainSpec,
)


class JobSpec(Strict):
    """A job: train a network, then measure it. Results go to `<storage.root>/<job_id>/`."""

    name: str = Field(..., pattern=NAME_PATTERN, description="letters, digits, _ . -; no path separators")
    description: str = ""
    dataset: DatasetSpec
    model: ModelSpec
    train: TrainSpec = Field(..., description="training; may be omitted when model.weights is given (then only "
                             "its seed, batch size, lr and precision serve the fine-tunes and data order)")
    measure: MeasureSpec = MeasureSpec()
    analysis: AnalysisSpec = AnalysisSpec()
    heads: HeadsSpec = HeadsSpec()
    pruning: PruningSpec = PruningSpec()
    sweep: SweepSpec | None = None
    compare: CompareSpec | None = Field(None, description="run several models x seeds as jobs and compare them "
                                        "(snp_service.compare); the job's own id ignores this section")
    heads_study: HeadsStudySpec | None = Field(None, description="run the job at several head counts and compare "
                                               "the heads (snp_service.studies); the job's own id ignores this section")
    storage: StorageSpec = StorageSpec()
    compute: ComputeSpec = ComputeSpec()
    workdir: str | None = Field(
        None, description="the directory this job's relative paths (dataset.root, model.weights, storage.root) "
        "resolve against; default: the working directory where the job file is loaded, recorded then and kept with "
        "the job (spec.json, Tune trials, study members). A dataset root or weights file inside it counts by its "
        "path relative to it in the job id and stage keys, so a job has one id from any directory, in a Tune trial "
        "and on a cluster (which loads the job in its copy of the uploaded working directory)")

    @model_validator(mode="before")
    @classmethod
    def _resolve_against_workdir(cls, data: Any) -> Any:
        """Relative paths made absolute against `workdir` (default: the working directory now), once,
        where the job is loaded; the workdir is recorded with the job. Paths a shell would expand are
        left for the field validators to refuse with their own message."""
        if not isinstance(data, dict):
            return data
        base = data.get("workdir")
        if base is None:
            base = str(Path.cwd().resolve())
        elif not isinstance(base, str) or not os.path.isabs(base) or SHELL_EXPANSION.search(base) or "\x00" in base:
            return data  # the field validator refuses it
        data = {**data, "workdir": base}
        for section, key in PATH_FIELDS + (("storage", "root"),):
            sec = data.get(section)
            value = sec.get(key) if isinstance(sec, dict) else None
            if (isinstance(value, str) and value and "://" not in value and not os.path.isabs(value)
                    and not SHELL_EXPANSION.search(value) and "\x00" not in value):
                data[section] = {**sec, key: os.path.join(base, value)}
        return data

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).is_absolute():
            raise ValueError(f"workdir {v!r} is not an absolute path")
        return v if v is None else str(resolve_path(v))

    @model_validator(mode="before")
    @classmethod
    def _train_optional_with_weights(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("train") is None and isinstance(data.get("model"), dict) \
                and data["model"].get("weights"):
            data = {**data, "train": {"epochs": 1}}  # nothing is trained: the epochs are never used
        return data

    @field_validator("name")
    @classmethod
    def _no_dots(cls, v: str) -> str:
        if ".." in v:
            raise ValueError("job name must not contain '..'")
        return v

    @model_validator(mode="after")
    def _points(self) -> JobSpec:
        return check_sections(self)  # model and dataset agree, point patterns match, the studies fit

    def compare_jobs(self) -> list[tuple[str, int, JobSpec]]:
        """(label, seed, job) of every run of the compare section, seeds outer, models inner
        (snp_service.spec.derived.compare_jobs)."""
        return compare_jobs(self)

    def heads_jobs(self, heads: list[int] | None = None) -> list[JobSpec]:
        """The job at each head count (default heads_study.num_heads), the width fixed: `<name>-h<heads>`
        (snp_service.spec.derived.heads_jobs)."""
        return heads_jobs(self, heads)

    def feature_estimate(self) -> dict:
        """Captured features of the selected points (float16: images x nodes x positions x 2 bytes),
        per image and, where the split sizes are known, for the job: what one SNP / prune actor holds at
        most (one group of points, compute.feature_budget_gb, or the largest point when it alone is
        larger) against the whole network's. The README states the same formula."""
        info = self.points()
        per_image = {p: info[p].nodes * info[p].positions * 2 for p in self.selected_points()}
        out = {"largest_point_bytes_per_image": max(per_image.values()), "all_points_bytes_per_image":
               sum(per_image.values()), "largest_point": max(per_image, key=per_image.get)}
        sizes = self.dataset.known_sizes()
        if sizes:
            images = sum(sizes)
            out["images"] = images
            out["all_points_gb"] = out["all_points_bytes_per_image"] * images / 2**30
            out["actor_peak_gb"] = max(out["largest_point_bytes_per_image"] * images / 2**30,
                                       min(self.compute.feature_budget_gb, out["all_points_gb"]))
        return out

    def stage_names(self) -> list[str]:
        """The stages this job runs, in order: with model.weights, `load` takes the place of `train`."""
        return [("load" if s == "train" and self.model.weights else s) for s in STAGE_ORDER]

    def head_points(self) -> list[str]:
        """Selected MHA points the heads stage analyses."""
        selected = {n: self.points()[n] for n in self.selected_points()}
        mha = {n: i for n, i in selected.items() if i.kind == "mha"}
        if self.heads.points == ["all"]:
            return list(mha)
        chosen = {n for names in match_points(mha, self.heads.points).values() for n in names}
        return [n for n in mha if n in chosen]

    def prune_points(self) -> list[str]:
        selected = self.selected_points()
        if self.pruning.points == ["all"]:
            return selected
        avail = {n: self.points()[n] for n in selected}
        chosen = {n for names in match_points(avail, self.pruning.points).values() for n in names}
        return [n for n in selected if n in chosen]

    def andc_threshold(self) -> float:
        """The threshold the ANDC masks are chosen at: pruning.threshold, or analysis.threshold when unset."""
        return self.analysis.threshold if self.pruning.threshold is None else self.pruning.threshold

    def points(self):
        return measurement_points(self.model.config(), self.dataset.input_size())

    def build_model(self, num_classes: int):
        """The job's network, untrained: the model section at the dataset's input size (a text model with
        the tokenizer's vocabulary size as its embedding's rows)."""
        vocab = self.dataset.tokenizer.vocab_size if self.dataset.name == "text" else None
        return self.model.build(num_classes, self.dataset.input_size(), vocab)

    def selected_points(self) -> list[str]:
        chosen = set()
        for names in match_points(self.points(), self.measure.points).values():
            chosen.update(names)
        return [n for n in self.points() if n in chosen]

    def job_id(self) -> str:
        """`<name>-<hash>`: the hash covers everything that changes results (not storage or compute):
        snp_service.spec.identity, the rule the stage keys follow too."""
        return f"{self.name}-{job_digest(self.model_dump(mode='json'))}"
