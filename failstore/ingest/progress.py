"""Progress of an ingest on stderr: what is loading, then a rich bar on a terminal or a plain
line every few seconds otherwise (logs, CI, ``2> file``). Both show the same rate and ETA,
from :class:`RateMeter`: images per second over the last ``RATE_WINDOW_S`` seconds, counted
from the first image read (so the workers' start-up does not drag the rate down)."""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from failstore.errors import ConfigError

PROGRESS_SECONDS_ENV = "FAILSTORE_PROGRESS_SECONDS"
DEFAULT_PROGRESS_SECONDS = 5.0  # between two plain progress lines when stderr is not a terminal
RATE_WINDOW_S = 30.0  # the rate is measured over this much recent time
_SAMPLE_EVERY_S = 0.25


def progress_seconds() -> float:
    """``$FAILSTORE_PROGRESS_SECONDS`` (default 5): seconds between two plain progress lines."""
    raw = os.environ.get(PROGRESS_SECONDS_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_PROGRESS_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ConfigError(
            f"{PROGRESS_SECONDS_ENV} must be a positive number of seconds, got {raw!r}",
            hint=f"unset it for the default, {DEFAULT_PROGRESS_SECONDS:g}",
        )
    return value


def say(message: str) -> None:
    """One status line on stderr, shown at once."""
    print(message, file=sys.stderr, flush=True)


def format_duration(seconds: float) -> str:
    """``45 s``, ``3 min 05 s``, ``2 h 07 min``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


class RateMeter:
    """Images per second over the last ``window`` seconds, and the time left at that rate.

    ``update(done)`` after each image. The first update starts the clock (the time before the
    first image, e.g. starting decode workers, is not counted); ``rate`` and ``eta`` stay None
    until ``min_span`` seconds of reading have passed. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        total: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        window: float = RATE_WINDOW_S,
        min_span: float = 1.0,
    ) -> None:
        self.total = total
        self.done = 0
        self.rate: float | None = None
        self.eta: float | None = None
        self._clock = clock
        self._window = window
        self._min_span = min_span
        self._samples: deque[tuple[float, int]] = deque()

    def update(self, done: int) -> None:
        now = self._clock()
        self.done = done
        s = self._samples
        if not s:
            s.append((now, done))
            return
        if now - s[-1][0] >= _SAMPLE_EVERY_S:
            s.append((now, done))
        while len(s) > 1 and now - s[1][0] >= self._window:
            s.popleft()  # s[0] stays the newest sample at least a window old
        t0, d0 = s[0]
        if now - t0 < self._min_span:
            return
        rate = (done - d0) / (now - t0)
        self.rate = rate
        self.eta = max(self.total - done, 0) / rate if rate > 0 else None

    def text(self) -> str:
        """``85.3 images/s, ETA 45 s`` (dashes until the rate is known)."""
        rate = "--" if self.rate is None else f"{self.rate:.1f}"
        eta = "--" if self.eta is None else format_duration(self.eta)
        return f"{rate} images/s, ETA {eta}"

    def line(self) -> str:
        """``ingest: 1200/5000 images, 85.3 images/s, ETA 45 s``."""
        return f"ingest: {self.done}/{self.total} images, {self.text()}"


class Progress(Protocol):
    def advance(self) -> None: ...

    def close(self) -> None: ...


class LineProgress:
    """A plain line on stderr every ``interval`` seconds (stderr is not a terminal)."""

    def __init__(
        self,
        total: int,
        *,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        write: Callable[[str], None] = say,
    ) -> None:
        self.meter = RateMeter(total, clock=clock)
        self.interval = progress_seconds() if interval is None else interval
        self._clock = clock
        self._write = write
        self._last = clock()

    def advance(self) -> None:
        self.meter.update(self.meter.done + 1)
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            self._write(self.meter.line())

    def close(self) -> None:
        pass


class ProgressBar:
    """A rich progress bar on stderr: done/total, rate and ETA, elapsed time."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        meter = self.meter = RateMeter(total)

        class _RateEta(TextColumn):
            def render(self, task: Any) -> Any:
                from rich.text import Text

                return Text(meter.text())  # floats set by the main thread; read-only here

        self.progress = RichProgress(
            TextColumn("ingest"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateEta(""),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("ingest", total=total)

    def advance(self) -> None:
        self.meter.update(self.meter.done + 1)
        self.progress.advance(self.task)

    def close(self) -> None:
        self.progress.stop()


def open_progress(total: int, *, tty: bool | None = None) -> Progress:
    """A rich bar when stderr is a terminal, plain lines every few seconds otherwise."""
    if tty is None:
        tty = sys.stderr.isatty()
    return ProgressBar(total) if tty else LineProgress(total)
