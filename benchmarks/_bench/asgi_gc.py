"""The test settings' ASGI application, with its garbage collections on record.

``sse_fanout.py`` serves it. Each collection's end is written to ``BENCH_GC_LOG`` (wall
time, generation, pause in ms); ``BENCH_GC_FREEZE=1`` freezes what the server loaded at
start out of the collector (``gc.freeze()``: a full collection walks only what came
since); ``BENCH_GC_THRESHOLD=a,b,c`` sets the collector's thresholds.
"""

import gc
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.asgi import application

__all__ = ["application"]

_log = open(os.environ["BENCH_GC_LOG"], "a", buffering=1)  # noqa: SIM115 (the process's)
_started: list[float] = []


def _record(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started.append(time.perf_counter())
    elif _started:
        pause = time.perf_counter() - _started.pop()
        _log.write(f"{time.time():.4f} {info['generation']} {pause * 1000:.2f}\n")


gc.callbacks.append(_record)
if os.environ.get("BENCH_GC_THRESHOLD"):
    gc.set_threshold(*(int(n) for n in os.environ["BENCH_GC_THRESHOLD"].split(",")))
if os.environ.get("BENCH_GC_FREEZE") == "1":
    gc.freeze()
