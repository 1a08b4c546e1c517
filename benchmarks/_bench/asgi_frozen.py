"""The test settings' ASGI application, with what it loaded at start frozen out of the
garbage collector (``gc.freeze()``): a full collection walks only what came since.
``sse_fanout.py --gc-freeze`` serves it."""

import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.asgi import application

__all__ = ["application"]

gc.freeze()
