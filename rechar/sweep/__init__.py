"""Orchestration: the sweep over models x backends x batch sizes (local), on a Ray cluster
(cluster), one worker process per (model, backend) (worker, unit, supervise), run folders
(rundir) and the options of a run (options).

    >>> from rechar.sweep import RunOptions, run_sweep
"""

from rechar.sweep.local import SweepInterrupted, resume_sweep, run_sweep
from rechar.sweep.options import DEFAULT_BATCH_SIZES, RunOptions, WorkloadOptions

__all__ = ["DEFAULT_BATCH_SIZES", "RunOptions", "SweepInterrupted", "WorkloadOptions", "resume_sweep", "run_sweep"]
