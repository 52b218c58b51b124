"""The HTTP server: `spiga serve` (FastAPI + uvicorn), dynamic batching, the web page.

    from spiga.serve import create_app, ServeSettings
    app = create_app("wflw", ServeSettings(max_batch=16, max_wait_ms=10))

Needs the `serve` extra (`pip install "spiga[serve]"`).
"""

from .app import ServeSettings, create_app
from .batcher import Batcher
from .errors import CODES, ApiError

__all__ = ["ApiError", "Batcher", "CODES", "ServeSettings", "create_app", "run"]


def run(model, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000,
        log_level: str = "warning", access_log: bool = False) -> None:
    """Serve `model` with uvicorn until interrupted (SIGINT / SIGTERM stop it cleanly)."""
    import uvicorn

    app = create_app(model, settings)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log,
                server_header=False, timeout_graceful_shutdown=10)
