"""Training runs, read only: what `ftrace train` wrote (run.json, complete checkpoints with their states and
optimizer state) and which checkpoints an index traces with. ftrace.train writes runs; ingest and bench read
them through here only."""

from ftrace.runs.checkpoints import checkpoint_dirs, load_trainer, read_state
from ftrace.runs.errors import TrainError
from ftrace.runs.layout import MOMENTS, TRAINER, read_run
from ftrace.runs.select import TracedRun, select_checkpoints, traced_run

__all__ = ["MOMENTS", "TRAINER", "TracedRun", "TrainError", "checkpoint_dirs", "load_trainer", "read_run",
           "read_state", "select_checkpoints", "traced_run"]
