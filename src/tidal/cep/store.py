"""Event repositories: the queue stores operators and hosts talk through.

One small command set, Redis' own, is all the CEP runtime uses:
``rpush, lpush, lrange, ltrim, llen, incr, del, set, get`` applied atomically as a batch
(`Store.execute`, Redis MULTI/EXEC), plus a blocking ``blpop`` for control signals.

Implementations (this module and `sockstore`) are the only code that touches the substrate:

- `MemoryStore`: in-process lists under one lock (the embedded default);
- `RedisStore`: a real redis-server through redis-py (`redis://host:port/db`);
- `tidal.cep.sockwire.SocketStore`: a `MemoryStore` served by its host process over a
  unix socket (`unix:///path`), for operator processes on the same machine, no server.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

from tidal.core.errors import TidalError

Op = tuple[Any, ...]

_OPS = {"rpush", "lpush", "lrange", "ltrim", "llen", "incr", "del", "set", "get"}


def check_ops(ops: Sequence[Op]) -> None:
    """Raise TidalError naming the first op whose command is unknown."""
    for op in ops:
        if not op or op[0] not in _OPS:
            raise TidalError(f"unknown store command {op[:1]!r}; known: {sorted(_OPS)}")


class Store(Protocol):
    """A queue store. `execute` is atomic: no other client's command interleaves."""

    url: str

    def execute(self, ops: Sequence[Op]) -> list[Any]:
        """Apply `ops` atomically, return one result per op (Redis reply semantics)."""
        ...

    def push(self, key: str, items: Sequence[bytes]) -> None:
        """RPUSH items (pipelined; atomic not required)."""
        ...

    def blpop(self, key: str, timeout: float) -> bytes | None:
        """Pop the head of `key`, waiting up to `timeout` seconds; None on timeout."""
        ...

    def wait(self, key: str, timeout: float) -> bool:
        """Block until list `key` is non-empty (True) or `timeout` seconds pass (False);
        the list is left as it was (Redis: BLMOVE key key LEFT LEFT, a no-op rotation)."""
        ...

    def close(self) -> None: ...


class MemoryStore:
    """Thread-safe in-process store with Redis list/string semantics."""

    def __init__(self, name: str = "embedded") -> None:
        self.url = f"mem://{name}"
        self._lists: dict[str, deque[bytes]] = {}
        self._vals: dict[str, bytes] = {}
        self._cond = threading.Condition()

    def _list(self, key: str) -> deque[bytes]:
        d = self._lists.get(key)
        if d is None:
            d = self._lists[key] = deque()
        return d

    def _apply(self, op: Op) -> Any:
        cmd, key = op[0], op[1]
        if cmd == "rpush":
            d = self._list(key)
            d.extend(op[2])
            return len(d)
        if cmd == "lpush":
            d = self._list(key)
            d.extendleft(op[2])
            return len(d)
        if cmd == "lrange":
            d0 = self._lists.get(key)
            if not d0:
                return []
            d = d0
            start, stop = int(op[2]), int(op[3])
            n = len(d)
            stop = n - 1 if stop < 0 else min(stop, n - 1)
            if start == 0 and stop == n - 1:
                return list(d)
            return [d[i] for i in range(start, stop + 1)]
        if cmd == "ltrim":
            d1 = self._lists.get(key)
            if d1 is None:
                return True
            d = d1
            start, stop = int(op[2]), int(op[3])
            if stop != -1 or start < 0:
                raise TidalError(f"MemoryStore supports only LTRIM key n -1, got {op!r}")
            for _ in range(min(start, len(d))):
                d.popleft()
            return True
        if cmd == "llen":
            return len(self._lists.get(key, ()))
        if cmd == "incr":
            v = int(self._vals.get(key, b"0")) + 1
            self._vals[key] = str(v).encode()
            return v
        if cmd == "del":
            n = int(self._lists.pop(key, None) is not None) + int(
                self._vals.pop(key, None) is not None
            )
            return n
        if cmd == "set":
            v = op[2]
            self._vals[key] = v if isinstance(v, bytes) else str(v).encode()
            return True
        if cmd == "get":
            return self._vals.get(key)
        raise TidalError(f"unknown store command {cmd!r}")

    def execute(self, ops: Sequence[Op]) -> list[Any]:
        check_ops(ops)
        with self._cond:
            out = [self._apply(op) for op in ops]
            if any(op[0] in ("rpush", "lpush") for op in ops):
                self._cond.notify_all()
            return out

    def push(self, key: str, items: Sequence[bytes]) -> None:
        if items:
            self.execute([("rpush", key, list(items))])

    def blpop(self, key: str, timeout: float) -> bytes | None:
        with self._cond:
            ok = self._cond.wait_for(lambda: bool(self._lists.get(key)), timeout=timeout)
            if not ok:
                return None
            return self._lists[key].popleft()

    def wait(self, key: str, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: bool(self._lists.get(key)), timeout=timeout)

    def close(self) -> None:
        return None


class RedisStore:
    """A redis-server through redis-py. `execute` is one MULTI/EXEC round trip."""

    def __init__(self, url: str) -> None:
        import redis

        self.url = url
        try:
            self._r = redis.Redis.from_url(url, socket_timeout=30)
            self._r.ping()
        except (redis.RedisError, ValueError) as e:
            raise TidalError(f"cannot reach redis at {url!r}: {e}") from None

    def execute(self, ops: Sequence[Op]) -> list[Any]:
        check_ops(ops)
        pipe = self._r.pipeline(transaction=True)
        for op in ops:
            cmd = op[0]
            if cmd in ("rpush", "lpush"):
                if op[2]:
                    getattr(pipe, cmd)(op[1], *op[2])
                else:
                    pipe.llen(op[1])
            elif cmd == "del":
                pipe.delete(op[1])
            else:
                getattr(pipe, cmd)(*op[1:])
        return list(pipe.execute())

    def push(self, key: str, items: Sequence[bytes]) -> None:
        if not items:
            return
        pipe = self._r.pipeline(transaction=False)
        step = 1000  # bounded command size
        for i in range(0, len(items), step):
            pipe.rpush(key, *items[i : i + step])
        pipe.execute()

    def blpop(self, key: str, timeout: float) -> bytes | None:
        r = self._r.blpop([key], timeout=max(timeout, 0.01))
        if r is None:
            return None
        v = r[1]
        return v if isinstance(v, bytes) else str(v).encode()

    def wait(self, key: str, timeout: float) -> bool:
        # the head moves to the head of the same list: nothing changes, atomically
        t = max(timeout, 0.01)
        return self._r.execute_command("BLMOVE", key, key, "LEFT", "LEFT", t) is not None

    def close(self) -> None:
        self._r.close()


_MEMORY: dict[str, MemoryStore] = {}
_MEMORY_LOCK = threading.Lock()


def open_store(url: str) -> Store:
    """Open a store by URL: ``mem://name``, ``redis://host:port/db``, ``unix:///path``."""
    if url.startswith("mem://"):
        with _MEMORY_LOCK:
            name = url[len("mem://") :]
            if name not in _MEMORY:
                _MEMORY[name] = MemoryStore(name)
            return _MEMORY[name]
    if url.startswith(("redis://", "rediss://")):
        return RedisStore(url)
    if url.startswith("unix://"):
        from tidal.cep.sockwire import SocketStore  # function-local: a socket client

        return SocketStore(url)
    raise TidalError(f"unknown store url {url!r}; use mem://name, redis://host:port or unix://path")
