"""Wait until a Qdrant cluster has all its peers, then run a command: `wait-for-cluster.py URL PEERS -- CMD...`.

A collection created before every node has joined gets its shards (and replicas) on the nodes present
only, so the compose file's ingest waits here first. Standard library only (runs before anything else).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request


def peers(cluster: dict) -> int:
    """Peers a GET /cluster answer names (0 when cluster mode is off)."""
    result = cluster.get("result") or {}
    return len(result.get("peers") or {}) if result.get("status") == "enabled" else 0


def main(argv: list[str]) -> None:
    url, wanted, sep, *command = argv
    if sep != "--" or not command:
        sys.exit("usage: wait-for-cluster.py URL PEERS -- COMMAND...")
    seen, deadline = -1, time.monotonic() + float(os.environ.get("CLUSTER_WAIT_S", "300"))
    while seen < int(wanted):
        if time.monotonic() > deadline:
            sys.exit(f"{url}: {seen} of {wanted} Qdrant peers after waiting; is every node up?")
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/cluster", timeout=5) as r:
                seen = peers(json.load(r))
        except OSError:
            seen = -1
        if seen < int(wanted):
            time.sleep(2)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
