"""ftrace: retrieval backend for fact tracing and training-data attribution."""

__version__ = "0.1.0"


class FtraceError(Exception):
    """An error a user can act on; the CLI prints it as one line and exits non-zero."""
