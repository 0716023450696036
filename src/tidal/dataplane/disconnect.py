"""Cancel a request's work when its HTTP client goes away (issue 13, cancellation).

`await until_disconnect(receive, coro)` runs `coro` in the calling task while a watcher reads
the ASGI `receive()` channel (the body has been read whole before): when the server reports
`http.disconnect`, the calling task is cancelled, which cancels the request inside the data
plane (`Stage.submit` removes it from its lane's queue, or drops its result if its batch is
already running, and counts it `cancelled`), and :class:`ClientGone` is raised: there is no
one to answer. Cost: one small task per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its answer was ready; the work was cancelled."""


async def until_disconnect(receive: Callable[[], Awaitable[Any]], coro: Awaitable[T]) -> T:
    """`await coro`, cancelled (ClientGone) if `receive()` yields `http.disconnect` first."""
    me = asyncio.current_task()
    gone = False

    async def watch() -> None:
        nonlocal gone
        while True:
            msg = await receive()
            if msg.get("type") == "http.disconnect":
                gone = True
                if me is not None:
                    me.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await coro
    except asyncio.CancelledError:
        if gone:
            me_task = asyncio.current_task()
            if me_task is not None:
                me_task.uncancel()
            raise ClientGone("client disconnected") from None
        raise
    finally:
        watcher.cancel()


__all__ = ["ClientGone", "until_disconnect"]
