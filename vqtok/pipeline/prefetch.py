"""`prefetch`: iterate in a background thread, a bounded number of items ahead, so reading and
decoding a video's frames overlaps the model working on the previous window."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Generator, Iterable
from queue import Empty, Full, Queue
from typing import Any, TypeVar

__all__ = ["prefetch"]

T = TypeVar("T")


def prefetch(items: Iterable[T], depth: int = 2) -> Generator[T, None, None]:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead.

    An exception in the thread is raised here, in the consumer; stopping early (``close()``)
    stops the thread and closes the underlying iterator.
    """
    queue: Queue[tuple[bool, Any]] = Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            with contextlib.suppress(Full):
                queue.put(entry, timeout=0.05)
                return True
        return False

    def work() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put((False, item)):
                    return
            put((True, None))
        except BaseException as e:  # handed to the consumer, which re-raises it
            put((True, e))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="vqtok-reader", daemon=True)
    thread.start()
    try:
        while True:
            with contextlib.suppress(Empty):
                end, value = queue.get(timeout=0.1)
                if end and value is not None:
                    raise value
                if end:
                    return
                yield value
                continue
            if not thread.is_alive() and queue.empty():
                return
    finally:
        stop.set()
        thread.join()
