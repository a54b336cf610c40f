"""The job spec: one pydantic model that a whole run flows from, loaded from YAML.

Every field is documented and exported as JSON schema (`snp-service schema`). Unknown keys are
rejected everywhere, so a typo never silently falls back to a default. The package is split by what
changes together; this module is its one import path (`from snp_service.spec import JobSpec`):

- base: the strict base model, shared field types and limits, names, paths, endpoints, error text
- sections: the config models of the job's sections (dataset, model, train, ..., compute)
- identity: what results depend on: the one rule of job ids and stage keys (STAGE_INPUTS)
- job: JobSpec, the whole job, and what the pipeline asks of it (points, network, stages)
- derived: the jobs derived from a job (comparison and head-count members, sweep trials) and the
  checks between sections
- loading: YAML files, `--set` and `--store` overrides, validation with errors naming file and field
"""

from snp_service.spec.base import (
    MAX_COMPARE_RUNS,
    MAX_GRID_VALUES,
    MAX_PARAMETERS,
    MAX_TRIALS,
    NAME_PATTERN,
    STAGE_ORDER,
    Fraction01,
    Seed,
    check_endpoint,
    format_validation_error,
    is_valid_name,
    resolve_path,
    without_userinfo,
)
from snp_service.spec.derived import derive_job
from snp_service.spec.identity import (
    CLUSTER_FIELDS,
    LEGACY_STAGE_INPUTS,
    NEUTRAL_DEFAULTS,
    PATH_FIELDS,
    STAGE_INPUTS,
    TEXT_ONLY_FIELDS,
    hashed_dataset,
    identity_content,
    job_digest,
    portable_paths,
    stage_key,
    stage_keys,
    without_neutral_defaults,
)
from snp_service.spec.job import JobSpec
from snp_service.spec.loading import (
    MAX_YAML_BYTES,
    MAX_YAML_NODES,
    apply_overrides,
    json_schema,
    load_spec,
    parse_yaml,
    spec_from_dict,
)
from snp_service.spec.sections import (
    AnalysisSpec,
    AugmentSpec,
    CompareModel,
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
    SyntheticSpec,
    TokenizerSpec,
    TrainSpec,
    input_size,
)

__all__ = [
    "CLUSTER_FIELDS", "LEGACY_STAGE_INPUTS", "MAX_COMPARE_RUNS", "MAX_GRID_VALUES", "MAX_PARAMETERS", "MAX_TRIALS",
    "MAX_YAML_BYTES", "MAX_YAML_NODES", "NAME_PATTERN", "NEUTRAL_DEFAULTS", "PATH_FIELDS", "STAGE_INPUTS",
    "STAGE_ORDER", "TEXT_ONLY_FIELDS", "AnalysisSpec", "AugmentSpec", "CompareModel", "CompareSpec", "ComputeSpec",
    "DatasetSpec", "Fraction01", "HeadsSpec", "HeadsStudySpec", "JobSpec", "MeasureSpec", "ModelSpec",
    "PruningSpec", "Seed", "StorageSpec", "SweepSpec", "SyntheticSpec", "TokenizerSpec", "TrainSpec",
    "apply_overrides", "check_endpoint", "derive_job", "format_validation_error", "hashed_dataset",
    "identity_content", "input_size", "is_valid_name", "job_digest", "json_schema", "load_spec", "parse_yaml",
    "portable_paths", "resolve_path", "spec_from_dict", "stage_key", "stage_keys", "without_neutral_defaults",
    "without_userinfo",
]
