"""research/train/guards.py and signals.py: the bad-step guard inside the step, and the signal flag."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT


def test_second_signal_exits_at_once():
    from research.train.signals import SignalFlag

    def exit_now(code):  # the real one is os._exit
        raise SystemExit(code)

    before = signal.getsignal(signal.SIGTERM)
    with SignalFlag(exit_now) as flag:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert flag.raised == signal.SIGINT  # first: noted, the loop saves at the next step boundary
        with pytest.raises(SystemExit) as exit_:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert exit_.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_second_signal_really_exits_now():
    script = (
        "import os, signal, time\n"
        "from research.train.signals import SignalFlag\n"
        "with SignalFlag():\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.2)\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)\n"
        "print('still here')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 128 + signal.SIGTERM and "still here" not in out.stdout
    assert "received SIGTERM again: exiting now" in out.stderr


def test_guard_flags_spikes_against_running_statistics():
    from research.train.guards import GuardConfig, guard_step, init_guard

    cfg = GuardConfig(spike_factor=6.0, spike_window=10, max_bad_steps=2)
    step_fn = jax.jit(lambda g, s, loss: guard_step(g, s, loss, jnp.float32(1.0), cfg))
    g = init_guard()
    rng = np.random.default_rng(0)
    losses = list(3.0 + 0.05 * rng.standard_normal(30)) + [3.6, 3.0, 30.0, 3.0, float("nan"), float("nan")]
    flags = []
    for s, loss in enumerate(losses, start=1):
        ok, g = step_fn(g, jnp.int32(s), jnp.float32(loss))
        flags.append(bool(ok))
    assert all(flags[:30]) and flags[30:34] == [False, True, False, True]  # 3.6 and 30 are > mean + 6 std
    assert flags[34:] == [False, False]
    assert (int(g.spikes), int(g.nonfinite), int(g.skipped)) == (2, 2, 4)
    assert int(g.streak_step) == 36 and int(g.last_bad_step) == 36
    assert abs(float(g.loss_mean) - 3.0) < 0.2  # spikes enter clipped: the statistics stay sane
