"""The error `ftrace train` raises for anything a user can act on."""

from ftrace import FtraceError


class TrainError(FtraceError):
    pass
