"""Compile ahead (local sweeps on the CPU): while member k trains, a background thread compiles member k+1's
init, train and eval programs into JAX's persistent compilation cache, and member k+1 then loads them.

The sweep's Hydra callback (research/sweep/callback.py) starts and joins the thread; the entry point hands
`mark_compiled` to the train loop, which calls it once the current member's own programs are compiled, so
the two compiles never share the CPU. Nothing in the model, the step or the loop knows about threads.
"""

from __future__ import annotations

import logging
import threading
import time

from research.config.schema import Config
from research.train.programs import configure_compilation_cache, precompile

log = logging.getLogger("sweep")

# Set once the current member's programs are compiled; the thread compiling the next member waits for it.
_member_compiled = threading.Event()


def mark_compiled() -> None:
    _member_compiled.set()


class CompileAhead:
    """At most one background compile at a time, of the member numbered `num`."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.result: dict[int, float] = {}  # job number -> compile seconds

    def wait(self, num: int) -> tuple[float, float | None]:
        """Wait for the compile started for job `num`: (seconds waited, seconds the compile took)."""
        t0 = time.perf_counter()
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        return time.perf_counter() - t0, self.result.pop(num, None)

    def start(self, num: int, cfg: Config) -> None:
        """Compile job `num` (its typed config, composed by the caller) once the current member has compiled."""
        configure_compilation_cache()
        _member_compiled.clear()

        def work() -> None:
            try:
                _member_compiled.wait()  # the current member's own compile first
                self.result[num] = round(precompile(cfg), 3)
            except Exception as e:  # the member itself reports a bad config
                log.debug("compile ahead of job %d failed: %s", num, e)

        self.thread = threading.Thread(target=work, name=f"compile-ahead-{num}", daemon=True)
        self.thread.start()

    def release(self) -> None:
        """A member that ended before compiling lets the compile ahead go."""
        mark_compiled()


def runs_here(launcher_target: str, process_count: int, platform: str) -> bool:
    """Local (in-process) sweeps on the CPU only: the members of a SLURM sweep start on other machines, and on a
    GPU a member's compile is small next to its training while XLA's GPU autotuner would run kernels on the
    device the current member trains on."""
    return launcher_target.endswith("BasicLauncher") and process_count == 1 and platform == "cpu"
