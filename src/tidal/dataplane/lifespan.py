"""The ASGI lifespan protocol driven from the server side, and the uvicorn layer kept for A/B
runs (`TIDAL_HTTP_SERVER=uvicorn`): helpers of `tidal.dataplane.server` and the front ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
ASGI = {"version": "3.0", "spec_version": "2.3"}


class Lifespan:
    """The ASGI lifespan protocol, driven from the server side."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": ASGI, "state": {}}
        try:
            await self.app(scope, self.to_app.get, self.from_app.put)
        except Exception as e:
            await self.from_app.put({"type": "lifespan.startup.failed", "message": repr(e)})

    async def startup(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._main())
        await self.to_app.put({"type": "lifespan.startup"})
        msg = await self.from_app.get()
        if msg["type"] != "lifespan.startup.complete":
            raise RuntimeError(msg.get("message") or "application startup failed")

    async def shutdown(self) -> None:
        if self.task is None or self.task.done():
            return
        await self.to_app.put({"type": "lifespan.shutdown"})
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.from_app.get(), timeout=60)


def serve_uvicorn(app: ASGIApp, config: Any, limits: Any,
                   on_start: Callable[[], Any] | None, log_level: str) -> None:  # fmt: skip
    """uvicorn + httptools (the layer before this module), with the limits it has."""
    import uvicorn

    async def lifespan_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan" or on_start is None:
            await app(scope, receive, send)
            return

        async def snd(msg: dict[str, Any]) -> None:
            if msg["type"] == "lifespan.startup.complete":
                out = on_start()
                if asyncio.iscoroutine(out):
                    await out
            await send(msg)

        await app(scope, receive, snd)

    uvicorn.run(
        lifespan_app,
        host=config.host,
        port=config.port,
        log_level=log_level,
        access_log=False,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        proxy_headers=False,
        server_header=False,
        timeout_keep_alive=int(max(1, limits.keepalive_timeout_s)),
        limit_concurrency=limits.max_connections,
        ssl_certfile=getattr(config, "tls_certfile", None),
        ssl_keyfile=getattr(config, "tls_keyfile", None),
    )


__all__ = ["ASGI", "Lifespan", "serve_uvicorn"]
