"""Errors a user can act on. The CLI prints them as one paragraph and exits with code 2."""


class SnpError(Exception):
    """Base class: an error caused by the user's input or environment, not by a bug."""


class SpecError(SnpError):
    """A job file that cannot be read or does not validate."""


class DatasetError(SnpError):
    """A dataset that is missing, corrupt or not in the expected layout."""


class StoreError(SnpError):
    """A results store that cannot be reached or holds something unexpected."""


class DamagedError(StoreError):
    """A stored artefact that is damaged: not readable, or not what its job's manifest says."""


class JobBusyError(StoreError):
    """Another run holds the job's lease (store.JobStore.lease)."""


class CheckpointError(SnpError):
    """A checkpoint that cannot be read safely, or does not fit the job's model or dataset."""
