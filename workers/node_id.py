"""This node's id: the ``node`` of its results, its metrics' ``node`` label and its entry in ``GET /cluster``.

``Cluster.node`` when set; otherwise ``<host name>:<HTTP port>`` — unique on one machine as long as the HTTP
ports differ (two nodes cannot share one), and across machines by their host names (a container's is its own) —
or ``<host name>:<process id>`` for a node without an HTTP API.
"""
from __future__ import annotations

import os
import re
import socket

_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]")


def node_id(configured: str | None, http_port: int | None, *, host: str | None = None, pid: int | None = None) -> str:
    """The configured id, else one made from the host name and the HTTP port (or the process id)."""
    if configured:
        return configured
    name = _UNSAFE.sub("-", host if host is not None else socket.gethostname()).strip("-") or "node"
    return f"{name}:{http_port if http_port is not None else (pid if pid is not None else os.getpid())}"
