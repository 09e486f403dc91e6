"""SIGTERM / SIGINT during training: stop at the next step boundary with a checkpoint."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

log = logging.getLogger("train")


class Preempted(Exception):
    """A signal asked the run to stop; a checkpoint was written."""


class SignalFlag:
    """First SIGTERM/SIGINT: stop at the next step boundary with a checkpoint; a second: exit now
    (os._exit: no waiting for a save in flight; its temporary folder is cleaned at the next start,
    the previous checkpoint stands and results.json still says running)."""

    def __init__(self, exit_now: Any = os._exit) -> None:
        self.raised: int | None = None
        self._previous: dict[int, Any] = {}
        self._exit_now = exit_now

    def __enter__(self) -> SignalFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised is not None:
            print(
                f"received {signal.Signals(signum).name} again: exiting now; rerun the same command to resume "
                "from the last checkpoint",
                file=sys.stderr,
                flush=True,
            )
            self._exit_now(128 + signum)
            return
        self.raised = signum
        log.warning(
            "received %s: saving a checkpoint at the next step boundary (again to exit now)",
            signal.Signals(signum).name,
        )

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
