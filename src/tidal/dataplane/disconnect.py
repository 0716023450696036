"""Cancel a request's work when its HTTP client goes away (issue 13, cancellation).

`await until_disconnect(receive, coro)` runs `coro` in the calling task while a watcher reads
the ASGI `receive()` channel (the body has been read whole before): when the server reports
`http.disconnect`, the calling task is cancelled, which cancels the request inside the data
plane (`Stage.submit` removes it from its lane's queue, or drops its result if its batch is
already running, and counts it `cancelled`), and :class:`ClientGone` is raised: there is no
one to answer. Cost: one small task per request, or none when the server offers the
`tidal.on_disconnect` hook (Tidal's own server and the front-end ingress do).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its answer was ready; the work was cancelled."""


OnDisconnect = Callable[[Callable[[], None]], Callable[[], None]]
"""`scope["state"]["tidal.on_disconnect"]` (Tidal's HTTP server and the front-end ingress):
`on_disconnect(cb)` calls `cb()` once when the client goes away and returns a function that
unregisters `cb`. Lets `until_disconnect` watch without a task per request."""


def unregister(fut: asyncio.Future[Any], fn: Callable[[asyncio.Future[Any]], None]) -> None:
    """Remove done-callback `fn` from `fut` (what a hook's unregister function does)."""
    fut.remove_done_callback(fn)


def disconnect_hook(scope: Any) -> OnDisconnect | None:
    """The server's disconnect hook in `scope`, if it offers one."""
    state = scope.get("state") if isinstance(scope, dict) else None
    hook = state.get("tidal.on_disconnect") if isinstance(state, dict) else None
    return hook if callable(hook) else None


async def until_disconnect(
    receive: Callable[[], Awaitable[Any]],
    coro: Awaitable[T],
    on_disconnect: OnDisconnect | None = None,
) -> T:
    """`await coro`, cancelled (ClientGone) if `receive()` yields `http.disconnect` first
    (or, when the server offers `on_disconnect`, when it reports the client gone)."""
    me = asyncio.current_task()
    gone = False
    if on_disconnect is not None:

        def hang_up() -> None:
            nonlocal gone
            gone = True
            if me is not None:
                me.cancel()

        undo = on_disconnect(hang_up)
        try:
            return await coro
        except asyncio.CancelledError:
            if gone and me is not None:
                me.uncancel()
                raise ClientGone("client disconnected") from None
            raise
        finally:
            undo()

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


__all__ = ["ClientGone", "OnDisconnect", "disconnect_hook", "unregister", "until_disconnect"]
