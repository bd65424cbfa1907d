"""One render thread per browser: the latest request wins, a still view is refined.

The GUI and the camera callbacks only *post* requests; this thread renders them. While the
camera moves, each new pose replaces the one waiting (nothing queues up behind a slow
render) and is drawn at the low "moving" resolution; once no new pose has come for
``still_delay`` seconds, the last one is drawn again at full resolution. An exception in a
render goes to ``on_error`` and the thread carries on with the next request.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable, ContextManager, Deque, Generic, Optional, Tuple, TypeVar

RequestT = TypeVar("RequestT")  # what a worker renders: the session's ViewPose, or a query's key


class FairSlots:
    """At most ``n`` holders at once, granted first come, first served.

    A plain semaphore wakes an arbitrary waiter, so with many browsers some would starve; here
    a released slot goes straight to the longest-waiting render thread. Use as a context manager.
    """

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"need at least one slot, got {n}")
        self._free = n
        self._lock = threading.Lock()
        self._waiting: Deque[threading.Event] = collections.deque()

    def __enter__(self) -> "FairSlots":
        with self._lock:
            if self._free > 0 and not self._waiting:
                self._free -= 1
                return self
            turn = threading.Event()
            self._waiting.append(turn)
        turn.wait()  # the releasing thread hands its slot over
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()
            else:
                self._free += 1


class RenderWorker(Generic[RequestT]):
    """A daemon thread that calls ``render(request, moving)`` for the newest request.

    Args:
        render: draws one request; ``moving`` asks for the low resolution.
        on_error: called with the exception when ``render`` raises (in this thread).
        still_delay: seconds without a new request before a moving view is redrawn still.
        slots: optional :class:`FairSlots` (or any context manager) shared by all workers,
            bounding concurrent renders.
        name: the thread's name.
    """

    def __init__(
        self,
        render: Callable[[RequestT, bool], None],
        on_error: Callable[[BaseException], None],
        *,
        still_delay: float = 0.3,
        slots: Optional[ContextManager] = None,
        name: str = "featgs-render",
    ) -> None:
        self._render = render
        self._on_error = on_error
        self._still_delay = still_delay
        self._slots = slots
        self._cond = threading.Condition()
        self._pending: Optional[Tuple[RequestT, bool]] = None
        self._closed = False
        self._busy = False
        self.renders = 0  # renders finished (ok or not), for status lines and tests
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, request: RequestT, *, moving: bool = False) -> None:
        """Replace any waiting request by ``request`` (drawn low-res first if ``moving``)."""
        with self._cond:
            if self._closed:
                return
            self._pending = (request, moving)
            self._cond.notify_all()

    @property
    def busy(self) -> bool:
        """True while a render runs or one is waiting."""
        with self._cond:
            return self._busy or self._pending is not None

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the render in progress (if any); waits up to ``timeout`` seconds."""
        with self._cond:
            self._closed = True
            self._pending = None
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _take(self) -> Optional[Tuple[RequestT, bool]]:
        with self._cond:
            while self._pending is None and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            job, self._pending = self._pending, None
            self._busy = True
            return job

    def _settle(self, request: RequestT) -> None:
        """After a moving render: if the camera stays put for ``still_delay``, queue it still."""
        deadline = time.monotonic() + self._still_delay
        with self._cond:
            while self._pending is None and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._pending = (request, False)
                    break
                self._cond.wait(left)

    def _loop(self) -> None:
        while True:
            job = self._take()
            if job is None:
                return
            request, moving = job
            try:
                if self._slots is not None:
                    with self._slots:
                        self._render(request, moving)
                else:
                    self._render(request, moving)
            except Exception as e:  # one failed render must not end the thread (nor the server)
                try:
                    self._on_error(e)
                except Exception:
                    pass
            finally:
                with self._cond:
                    self._busy = False
                    self.renders += 1
            if moving:
                self._settle(request)
