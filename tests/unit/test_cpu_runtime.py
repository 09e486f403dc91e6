"""CPU runtime launcher (research/runtime.py) and the blocked CPU attention kernel (research/layers.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from research.cpu import runtime

ROOT = Path(__file__).resolve().parents[2]


def test_env_with_tcmalloc(tmp_path):
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    lib.write_bytes(b"")
    env, line = runtime.cpu_runtime_env({"RESEARCH_TCMALLOC": str(lib), "LD_PRELOAD": "/x/other.so"})
    assert env["LD_PRELOAD"] == f"{lib}:/x/other.so"
    assert "tcmalloc (" in line and env.get("XLA_FLAGS", "") == " ".join(runtime.DEFAULT_XLA_CPU_FLAGS)
    again, _ = runtime.cpu_runtime_env(env)  # idempotent: a nested launch does not preload twice
    assert again["LD_PRELOAD"] == env["LD_PRELOAD"]


def test_env_without_tcmalloc_says_how_to_install(monkeypatch):
    monkeypatch.setattr(runtime, "find_tcmalloc", lambda: None)
    env, line = runtime.cpu_runtime_env({})
    assert "LD_PRELOAD" not in env
    assert "tcmalloc not found" in line and runtime.INSTALL_HINT in line


def test_env_opt_outs_and_user_flags_win():
    env, line = runtime.cpu_runtime_env({"RESEARCH_TCMALLOC": "0", "RESEARCH_XLA_CPU_FLAGS": ""})
    assert "LD_PRELOAD" not in env and "XLA_FLAGS" not in env and "tcmalloc off" in line
    env, _ = runtime.cpu_runtime_env({"RESEARCH_TCMALLOC": "0", "XLA_FLAGS": "--xla_cpu_use_onednn=false --foo=1"})
    flags = env["XLA_FLAGS"].split()
    assert "--xla_cpu_use_onednn=false" in flags and "--xla_cpu_use_onednn=true" not in flags and "--foo=1" in flags


def test_launcher_execs_with_the_environment():
    code = "import os; print(os.environ['XLA_FLAGS']); print(os.environ.get('RESEARCH_RUNTIME_APPLIED'))"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["RESEARCH_TCMALLOC"] = "0"  # the preload itself is exercised by `make bench`; keep this hermetic
    env["RESEARCH_XLA_CPU_FLAGS"] = "--xla_cpu_enable_fast_min_max=true"
    out = subprocess.run(
        [sys.executable, "-m", "research.cpu.runtime", "--", sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split("\n")[:2] == ["--xla_cpu_enable_fast_min_max=true", "1"]
    assert out.stderr.startswith("runtime: tcmalloc off")
