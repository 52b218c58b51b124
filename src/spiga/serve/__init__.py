"""The HTTP server: `spiga serve` (FastAPI + uvicorn), dynamic batching, admission
control with per-request deadlines, the web page and its live webcam stream.

    from spiga.serve import create_app, ServeSettings
    app = create_app("wflw", ServeSettings(max_batch=16, max_wait_ms=10))

Needs the `serve` extra (`pip install ".[serve]"` in a clone; see docs/install.md).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

from .app import create_app
from .batcher import Batcher
from .errors import CODES, ApiError
from .settings import ServeSettings

__all__ = ["ApiError", "Batcher", "CODES", "ServeSettings", "create_app", "limit_malloc_arenas", "run"]

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # glibc's mallopt parameter number
#: Seconds a thread may hold the GIL while another waits for it, in the server (default 0.005).
SWITCH_INTERVAL = 0.0005


def limit_malloc_arenas(count: int = 2) -> bool:
    """Cap glibc's malloc arenas, as `MALLOC_ARENA_MAX=count` would.

    glibc gives busy threads their own arenas and rarely returns their memory: with the
    server's decode and inference threads, resident memory otherwise climbs by tens of
    MiB in steps before it levels off (measured with the load test). Does nothing
    when `MALLOC_ARENA_MAX` is already set or the C library is not glibc.

    Returns:
        whether the cap was applied.
    """
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, int(count)))
    except (OSError, AttributeError):
        return False


def run(model, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000,
        log_level: str = "warning", access_log: bool = False) -> None:
    """Serve `model` with uvicorn until interrupted (SIGINT / SIGTERM stop it cleanly)."""
    import uvicorn

    limit_malloc_arenas()
    # The event loop shares the GIL with the decode threads, and pure-Python work there (Pillow
    # walking a header of many chunks or markers) would make it wait the default 5 ms for the
    # GIL after every system call: /healthz took 0.2-0.6 s while such a header was read. A
    # shorter switch interval keeps the loop answering (this process only: it is the server's).
    sys.setswitchinterval(SWITCH_INTERVAL)
    app = create_app(model, settings)
    # ws_max_size: a webcam frame is at most one upload (plus its 8-byte header)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log,
                server_header=False, timeout_graceful_shutdown=10, ws_max_size=settings.max_image_bytes + 1024)
