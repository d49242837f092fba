"""Should ftrace's pydantic-to-CLI bridge (`ftrace.options` over typer) give way to a maintained library?
Issue 29, item 3: adopt one only if it keeps the one-line errors and the option names, and measure its cold-start
cost first. The candidates: tyro and pydantic-settings' CLI (`CliApp`).

    python perf/cli_bridge.py [--repeats 9] [--out perf/results/cli_bridge-cpu.json]

Protocol
- The two libraries (pinned) are installed by pip into a temporary directory put on PYTHONPATH, outside the timed
  region, with only the dependencies the project's environment lacks (pydantic, rich, typing-extensions stay the
  project's own, for every process timed).
- Cold start: the wall clock of a fresh `python -c` process importing ftrace's CLI module alone, and with each library
  imported beside it (what adopting it would add to every `ftrace` command); one untimed warm-up each, then
  --repeats rounds, each round running every command once (so a load spike hits all alike); min / median / max.
- Errors: one bad value (`--depth 0` against a `ge=1` field) and one misspelt option (`--mdoe full`) given to the
  same three-field config (index, mode, depth) declared the way each library wants it, and to `ftrace bench`; the
  output's lines are counted and kept.
- Writes perf/results/cli_bridge-cpu.json and .md (--out).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from common import ROOT, command_of, machine_busy_seconds, results_path, spread, write_results

PACKAGES = ["tyro==1.0.17", "pydantic-settings==2.16.3"]  # the newest on this machine's index

PROTOTYPES = {
    "tyro": '''
from typing import Annotated, Literal
from pydantic import BaseModel, Field
import tyro
class BenchConfig(BaseModel):
    index: str
    mode: Literal["rerank", "full"] = "rerank"
    depth: Annotated[int, Field(ge=1, description="Full mode: sentences each method retrieves.")] = 100
tyro.cli(BenchConfig)
''',
    "pydantic-settings": '''
from typing import Annotated, Literal
from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict
class BenchConfig(BaseSettings):
    model_config = SettingsConfigDict(cli_parse_args=True, cli_kebab_case=True, cli_exit_on_error=True)
    index: str
    mode: Literal["rerank", "full"] = "rerank"
    depth: Annotated[int, Field(ge=1, description="Full mode: sentences each method retrieves.")] = 100
CliApp.run(BenchConfig)
''',
}
BAD = {"bad value": ["--index", "x", "--depth", "0"], "misspelt option": ["--index", "x", "--mdoe", "full"]}
IMPORTS = {"ftrace's CLI (typer + the bridge)": "import ftrace.cli",
           "ftrace's CLI + tyro": "import ftrace.cli, tyro",
           "ftrace's CLI + pydantic-settings": "import ftrace.cli, pydantic_settings"}


def install(target: Path) -> dict:
    """The libraries and the dependencies the project's environment lacks (a dependency it has stays its own: the
    same pydantic, rich, typing-extensions for every process timed); {distribution: version} of what was added."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target), *PACKAGES],
                   check=True, capture_output=True)
    added = {}
    for info in sorted(target.glob("*.dist-info")):
        name, version = info.name.removesuffix(".dist-info").rsplit("-", 1)
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            added[name] = version
            continue
        for line in (info / "RECORD").read_text().splitlines():  # the project has it: remove this copy
            (target / line.split(",")[0]).unlink(missing_ok=True)
        shutil.rmtree(info, ignore_errors=True)
    return added


def run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, cwd=ROOT)


def shown(text: str, tmp: str) -> str:
    """An output as the results file keeps it: no path of this machine (the temporary directory, the repository)."""
    return text.strip().replace(tmp, "$TMP").replace(f"{ROOT}/", "")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        libs = Path(tmp) / "libs"
        versions = install(libs)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(libs), os.environ.get("PYTHONPATH")])))
        py = [sys.executable, "-c"]
        for code in IMPORTS.values():  # warm-up (and a check that each imports)
            subprocess.run([*py, code], env=env, check=True)
        times: dict[str, list[float]] = {k: [] for k in IMPORTS}
        busy = machine_busy_seconds()
        start = time.perf_counter()
        for _ in range(a.repeats):
            for name, code in IMPORTS.items():
                t = time.perf_counter()
                subprocess.run([*py, code], env=env, check=True)
                times[name].append(time.perf_counter() - t)
        others = (machine_busy_seconds() - busy) / (time.perf_counter() - start)
        errors = {}
        for lib, code in PROTOTYPES.items():
            script = Path(tmp) / f"prototype-{lib}.py"  # not named like the library it imports
            script.write_text(code)
            errors[lib] = {what: shown(run([sys.executable, str(script), *bad], env).stderr, tmp)
                           for what, bad in BAD.items()}
        ftrace = [sys.executable, "-m", "ftrace.cli", "bench"]
        errors["ftrace (typer + the bridge)"] = {what: shown(run([*ftrace, *bad], env).stderr, tmp)
                                                 for what, bad in BAD.items()}
    base = statistics.median(times[next(iter(IMPORTS))])
    result = {"command": command_of("perf/cli_bridge.py", argv), "versions": versions,
              "busy_cores_meanwhile": round(others, 2),
              "cold_import_s": {k: spread(v) for k, v in times.items()},
              "added_s": {k: statistics.median(v) - base for k, v in times.items()},
              "errors": errors}
    md = [f"# A library for the pydantic-to-CLI bridge? (issue 29, item 3)\n\nCommand: `{result['command']}`; "
          f"{', '.join(f'{k} {v}' for k, v in sorted(versions.items()))}; machine busy meanwhile "
          f"(all processes, counting this one's children): {others:.2f} cores.\n",
          "| process | cold start, s (min / median / max) | added to ftrace's CLI import, s |", "|---|---|---|"]
    for k, v in result["cold_import_s"].items():
        md.append(f"| `python -c \"{IMPORTS[k]}\"` | {v['min']:.3f} / {v['median']:.3f} / {v['max']:.3f} | "
                  f"{result['added_s'][k]:+.3f} |")
    md.append("\nWhat a user sees for a bad value (`--depth 0`) and a misspelt option (`--mdoe full`), lines of "
              "output:\n\n| | " + " | ".join(BAD) + " |\n|---|" + "---|" * len(BAD))
    for lib, by in errors.items():
        md.append(f"| {lib} | " + " | ".join(str(len(by[w].splitlines())) for w in BAD) + " |")
    for lib, by in errors.items():
        for what, text in by.items():
            md.append(f"\n{lib}, {what}:\n\n```\n{text}\n```")
    write_results(results_path(a.out, "cli_bridge"), result, "\n".join(md) + "\n")
    return result


if __name__ == "__main__":
    main()
