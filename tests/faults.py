"""Faults injected into a Ray Train worker for the reliability tests (tests/test_train_ray.py), as
snp_service.train.WorkerHook objects passed to `fit(worker_hooks=...)`: the production training loop
only calls its hooks and knows of no fault.

The hooks travel to the workers in their train_loop_config. Ray puts the driver's working directory
(the repository root, where pytest runs) on the workers' path, so `tests.faults` imports there; this
module is also pickled by value (cloudpickle), so a worker that cannot import it gets its code anyway."""

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from ray import cloudpickle

from snp_service.train import WorkerHook

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass
class FailAfterEpoch(WorkerHook):
    """Raise in every worker once `epoch` is reported (its checkpoint written): the run fails there,
    and a run with the same name and storage resumes after it."""

    epoch: int

    def after_epoch(self, epoch: int) -> None:
        if epoch == self.epoch:
            raise RuntimeError(f"injected failure after epoch {epoch}")


@dataclass
class KillMidEpoch(WorkerHook):
    """SIGKILL the worker process halfway through `epoch`, once: the file `marker` records that it
    happened, so the worker Ray Train restarts runs on."""

    epoch: int
    marker: str

    def before_step(self, epoch: int, step: int, steps_per_epoch: int) -> None:
        if epoch != self.epoch or step != steps_per_epoch // 2:
            return
        marker = Path(self.marker)
        if marker.exists():
            return
        marker.write_text(f"killed at epoch {epoch} step {step}\n")
        os.kill(os.getpid(), signal.SIGKILL)
