"""The error `ftrace train`, and anything reading its runs, raises for what a user can act on."""

from ftrace import FtraceError


class TrainError(FtraceError):
    pass
