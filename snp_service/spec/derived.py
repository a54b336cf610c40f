"""Jobs derived from a job, and the checks between a job's sections that every job, derived or not,
passes: the members of a comparison (compare_jobs) and of a head-count study (heads_jobs) and the
sweep's trials (snp_service.sweep), all made by derive_job; check_sections, the rules no single
section can state (model and dataset agree, the point patterns match, the studies fit the model).

`spec` here is a JobSpec (snp_service.spec.job), which calls these; it is not imported, so the job
module stays the one that builds on this one."""

from __future__ import annotations

from pydantic import ValidationError

from snp_service.errors import SpecError
from snp_service.models.registry import match_points
from snp_service.spec.base import MAX_COMPARE_RUNS, format_validation_error
from snp_service.spec.sections import HeadsStudySpec
from snp_service.units import units_removed


def check_sections(spec):
    """JobSpec's cross-checks (its last validator): `spec` when every rule between its sections holds,
    else ValueError naming the fields (the first rule broken, in this order)."""
    cfg = spec.model.config()
    _model_fits_dataset(spec, cfg)
    _point_patterns_match(spec)
    _studies_fit_the_network(spec, cfg)
    _one_study(spec)
    return spec


def _model_fits_dataset(spec, cfg) -> None:
    """A text model on a text dataset, an image model on images, at an input size the family takes."""
    if cfg.text != (spec.dataset.name == "text"):
        raise ValueError(f"model {spec.model.name} is {'a text' if cfg.text else 'an image'} "
                         f"model and dataset {spec.dataset.name} {'is' if spec.dataset.name == 'text' else 'is not'}"
                         " text; text models (text_*) go with name: text")
    problem = cfg.input_problem(spec.dataset.input_size(), spec.model.name)  # the family's own rule
    if problem:
        raise ValueError(problem)
    if cfg.text and spec.model.weights is not None:
        raise ValueError("model.weights: loading a text model trained elsewhere is not supported yet")


def _point_patterns_match(spec) -> None:
    """measure.points match points of the model; heads.points and pruning.points selected ones."""
    available = spec.points()
    for pat, names in match_points(available, spec.measure.points).items():
        if not names:
            raise ValueError(f"measure.points: {pat!r} matches no measurement point of {spec.model.name}; "
                             f"it has {', '.join(available)}")
    selected = {n: available[n] for n in spec.selected_points()}
    if spec.heads.points != ["all"]:
        for pat, names in match_points(selected, spec.heads.points).items():
            if not names:
                raise ValueError(f"heads.points: {pat!r} matches no selected measurement point "
                                 f"({', '.join(selected)})")
            no_heads = [n for n in names if selected[n].kind != "mha"]
            if no_heads:
                raise ValueError(f"heads.points: {', '.join(no_heads)} has no attention heads; head analysis "
                                 "needs an MHA point (blocks.<m>.attn.heads)")
    if spec.pruning.points != ["all"]:
        for pat, names in match_points(selected, spec.pruning.points).items():
            if not names:
                raise ValueError(f"pruning.points: {pat!r} matches no selected measurement point "
                                 f"({', '.join(selected)})")


def _studies_fit_the_network(spec, cfg) -> None:
    """Head counts divide the width; structural pruning leaves units of a CCT."""
    if spec.heads_study is not None and not cfg.cct:
        raise ValueError(f"heads_study: varies the heads of a CCT; {spec.model.name} is not a CCT")
    for where, heads in (("sweep.num_heads", spec.sweep.num_heads if spec.sweep else None),
                         ("heads_study.num_heads", spec.heads_study.num_heads if spec.heads_study else None)):
        bad = [h for h in heads or [] if cfg.cct and cfg.embedding_dim % h]
        if bad:
            raise ValueError(f"{where}: {bad} do not divide the width embedding_dim {cfg.embedding_dim}")
    frac = spec.pruning.structural_fraction
    if frac > 0:
        if not cfg.cct:
            raise ValueError("pruning.structural_fraction: structural pruning removes CCT FF units and heads; "
                             f"{spec.model.name} is not a CCT")
        for what, count in (("FF hidden units", cfg.mlp_hidden), ("heads", cfg.num_heads)):
            if units_removed(frac, count) >= count:
                raise ValueError(f"pruning.structural_fraction: {frac} would remove all {count} {what} of "
                                 f"every block; use a fraction below {(count - 0.5) / count:.3f}")


def _one_study(spec) -> None:
    """At most one study section, each within its limits; every member of a comparison a valid job."""
    if spec.sweep is not None and spec.train.eval_every != 1:
        raise ValueError("sweep: ASHA compares trials on every epoch's eval_accuracy; train.eval_every must be 1")
    studies = [k for k in ("compare", "sweep", "heads_study") if getattr(spec, k) is not None]
    if len(studies) > 1:
        raise ValueError(f"{' and '.join(studies)} exclude each other: a job file runs one study")
    if spec.compare is not None:
        runs = len(spec.compare.models) * len(spec.compare.seeds)
        if runs > MAX_COMPARE_RUNS:
            raise ValueError(f"compare: {len(spec.compare.models)} models x {len(spec.compare.seeds)} seeds = "
                             f"{runs:,} jobs; at most {MAX_COMPARE_RUNS}")
        try:
            spec.compare_jobs()  # every (model, seed) must be a valid job
        except SpecError as e:
            raise ValueError(str(e)) from None


def compare_jobs(spec) -> list[tuple]:
    """(label, seed, job) of every run of the compare section, seeds outer, models inner (so a
    study cut short has every model at the first seed). Each model's sections are merged field
    by field into the base job; `model` replaces the base model whole when given."""
    if spec.compare is None:
        raise SpecError(f"job {spec.name} has no compare section")
    out = []
    for seed in spec.compare.seeds:
        for m in spec.compare.models:
            over = {section: getattr(m, section) for section in ("train", "measure", "analysis", "pruning")}
            over["train"] = {**over["train"], "seed": seed}
            if m.model is not None:
                over["model"] = m.model
            if m.dataset is not None:
                over["dataset"] = m.dataset
            try:
                out.append((m.label, seed, derive_job(spec, f"{spec.name}-{m.label}-s{seed}", over,
                                                      f"compare model {m.label!r} (seed {seed})",
                                                      replace=("model", "dataset"))))
            except SpecError as e:
                raise SpecError(f"compare: {e}") from None
    return out


def heads_jobs(spec, heads: list[int] | None = None) -> list:
    """The job at each head count (default heads_study.num_heads), the width fixed: `<name>-h<heads>`."""
    if heads is None:
        if spec.heads_study is None:
            raise SpecError(f"job {spec.name} has no heads_study section; give the head counts")
        heads = spec.heads_study.num_heads
    try:  # `--heads` obeys the file form's rules: a count given twice would run one member twice at once
        heads = HeadsStudySpec(num_heads=list(heads)).num_heads
    except ValidationError as e:
        raise SpecError(f"head counts {list(heads)}: " + "; ".join(
            err["msg"].removeprefix("Value error, ") for err in e.errors())) from None
    out = []
    for h in heads:
        try:
            out.append(derive_job(spec, f"{spec.name}-h{h}", {"model": {"num_heads": h}},
                                  f"{spec.name} with model.num_heads={h}"))
        except SpecError as e:
            raise SpecError(f"head-count study: {e}") from None
    return out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def derive_job(base, name: str, overrides: dict, source: str, replace: tuple[str, ...] = ()):
    """A job derived from `base`: `overrides` (nested like the job file) merged field by field, the
    sections named in `replace` replaced whole; the base's study sections (compare, sweep, heads_study) dropped;
    validated like a job file (errors name `source`). The one way the unified study, the heads
    study and the sweep make their member jobs."""
    d = base.model_dump(mode="json", exclude={"compare", "sweep", "heads_study"})
    for k, v in overrides.items():
        d[k] = v if k in replace or not (isinstance(v, dict) and isinstance(d.get(k), dict)) else _merge(d[k], v)
    d["name"] = name[:64]
    try:
        return type(base).model_validate(d)  # a JobSpec, as snp_service.spec.loading.spec_from_dict makes it
    except ValidationError as e:
        raise SpecError(format_validation_error(e, source)) from None
