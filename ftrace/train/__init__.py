"""`ftrace train`: fine-tune a causal LM on a corpus, saving checkpoints (weights, second moments)
to trace with. See trainer.py for the run, layout.py and checkpoints.py for the output directory (read
through ftrace.runs)."""

from ftrace.runs import TracedRun, TrainError, checkpoint_dirs, select_checkpoints, traced_run
from ftrace.train.trainer import TrainRun, train, train_command

__all__ = ["TracedRun", "TrainError", "TrainRun", "checkpoint_dirs", "select_checkpoints", "traced_run", "train",
           "train_command"]
