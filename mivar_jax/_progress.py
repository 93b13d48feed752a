"""Progress bars for long work (tqdm on stderr, shown only after a few seconds)."""

from __future__ import annotations


class progress_bar:
    """A tqdm bar (on stderr) for runs that take a while; a no-op otherwise."""

    def __init__(self, enabled: bool, total: int, what: str):
        self.enabled, self.total, self.what, self.bar = enabled, total, what, None

    def __enter__(self):
        if not self.enabled:
            return None
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=self.total, desc=self.what, unit="item", unit_scale=True, mininterval=2.0, delay=5.0, leave=False
        )
        return self.bar.update

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False
