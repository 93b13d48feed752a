"""Progress for long work, on stderr, shown only once it has run a few seconds.

On a terminal (or in a notebook) a tqdm bar; elsewhere (CI logs, ``| tee``, files) a few plain
lines such as ``evaluate: 40% (1,234/3,086 items, 12 s)``: one at each quarter (25, 50, 75,
100%) and at most one every ``PLAIN_EVERY_S`` seconds between them, never carriage returns.
"""

from __future__ import annotations

import sys
import time

DELAY_S = 5.0  # nothing is shown for work that ends sooner
PLAIN_EVERY_S = 30.0  # plain mode: at most one line this often, quarters apart
_clock = time.monotonic


def _interactive(stream) -> bool:
    """A terminal, or a Jupyter kernel's stream (where tqdm draws a widget)."""
    if type(stream).__module__.startswith("ipykernel"):
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):
        return False


class _PlainProgress:
    """Plain progress lines for a non-interactive stream."""

    def __init__(self, total: int, what: str, stream):
        self.total, self.what, self.stream = max(int(total), 0), what, stream
        self.done, self.start = 0, _clock()
        self.last_line, self.last_quarter, self.last_done = None, 0, 0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = _clock()
        if now - self.start < DELAY_S:
            return
        quarter = 4 * self.done // self.total if self.total else 4
        if quarter > self.last_quarter or (
            self.done < self.total and (self.last_line is None or now - self.last_line >= PLAIN_EVERY_S)
        ):
            self._line(now)
            self.last_quarter = max(self.last_quarter, quarter)

    def close(self) -> None:
        # a run that printed anything ends with its last state, even if the count fell short
        if self.last_line is not None and self.done != self.last_done:
            self._line(_clock())

    def _line(self, now: float) -> None:
        percent = f"{100 * self.done // self.total}%" if self.total else "?"
        self.stream.write(f"{self.what}: {percent} ({self.done:,}/{self.total:,} items, {now - self.start:.0f} s)\n")
        self.stream.flush()
        self.last_line, self.last_done = now, self.done


class progress_bar:
    """``with progress_bar(enabled, total, what) as update:`` ``update(n)`` after n items of ``total``
    (``update`` is None when not ``enabled``). A tqdm bar on an interactive stderr, plain lines
    otherwise (see the module docstring)."""

    def __init__(self, enabled: bool, total: int, what: str):
        self.enabled, self.total, self.what, self.bar = enabled, total, what, None

    def __enter__(self):
        if not self.enabled:
            return None
        stream = sys.stderr
        if not _interactive(stream):
            self.bar = _PlainProgress(self.total, self.what, stream)
            return self.bar.update
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=self.total,
            desc=self.what,
            unit="item",
            unit_scale=True,
            mininterval=2.0,
            delay=DELAY_S,
            leave=False,
            file=stream,
        )
        return self.bar.update

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False
