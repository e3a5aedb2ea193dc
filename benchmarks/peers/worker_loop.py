"""The request loop every peer worker runs inside its own virtual environment (standard library only: it is
imported by path from the worker scripts beside it, never from attn_probe).

One JSON request per line on stdin (``{"cmd": ...}``), one JSON reply per line on the original stdout; whatever
a library prints goes to stderr, so it cannot corrupt a reply. A failing command is answered with its error and
traceback (the caller raises them), ``quit`` ends the loop.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TextIO


def claim_stdout() -> TextIO:
    """The original stdout, for replies only; from now on anything printed goes to stderr. Call it before
    importing libraries that print at import time."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return protocol


def serve(commands: dict[str, Callable[[dict[str, Any]], dict[str, Any]]], protocol: TextIO | None = None) -> None:
    """Answer requests with ``commands[request["cmd"]](request)`` until stdin closes or ``quit`` arrives."""
    protocol = protocol if protocol is not None else claim_stdout()
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "quit":
            break
        try:
            reply = {"ok": True, **commands[request["cmd"]](request)}
        except Exception as error:  # reported to the caller, who raises with the traceback
            reply = {"ok": False, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        protocol.write(json.dumps(reply) + "\n")
