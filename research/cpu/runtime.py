"""CPU runtime settings for training, sweeps and benchmarks: the allocator and the XLA CPU flags.

With glibc malloc, XLA's CPU runtime page-faults on every train step; tcmalloc removes those faults (what
it is worth on the benchmark shapes: docs/performance.md, "allocator"). No XLA flag has measured better than
the defaults of this jaxlib, so none is added by default; the mechanism stays for the ones that will
(RESEARCH_XLA_CPU_FLAGS).

The allocator has to be in place before the process starts (LD_PRELOAD), so the Makefile runs the
entry points through this module's launcher, which sets the environment and execs the command:

    python -m research.cpu.runtime -- python experiments/train.py ...    # what `make train/sweep/bench` do
    python -m research.cpu.runtime --print                                # show what would be applied

It prints one line saying what it applied, or that tcmalloc is missing and how to install it; a
missing allocator is never an error. Overrides (environment):
    RESEARCH_TCMALLOC=0              do not preload tcmalloc (or =PATH: preload that library)
    RESEARCH_XLA_CPU_FLAGS="..."     the XLA CPU flags to add instead of DEFAULT_XLA_CPU_FLAGS ("" = none)
Flags already present in XLA_FLAGS are left as the user set them. This module imports no JAX.
"""

from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence

# XLA CPU flags the launcher adds, each measured in docs/performance.md before it goes in: none today (the
# flags tried and why each was dropped are listed there; the oneDNN dot fusion also aborts the process on a
# jit with two chained matmuls). An unknown flag aborts every process at start-up, another reason to add one
# only with a jaxlib that has it.
DEFAULT_XLA_CPU_FLAGS: tuple[str, ...] = ()

TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so")
TCMALLOC_DIRS = ("/usr/lib/{arch}-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib", "/lib/{arch}-linux-gnu")
INSTALL_HINT = "apt-get install libtcmalloc-minimal4"
# tcmalloc reports every allocation above 1 GiB on stderr by default; large arrays are normal here.
TCMALLOC_QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}
APPLIED_MARK = "RESEARCH_RUNTIME_APPLIED"


def find_tcmalloc() -> str | None:
    """Path of an installed tcmalloc shared library, or None."""
    arch = platform.machine() or "x86_64"
    for d in TCMALLOC_DIRS:
        for name in TCMALLOC_NAMES:
            path = os.path.join(d.format(arch=arch), name)
            if os.path.isfile(path):
                return path
    for pattern in ("/usr/lib/*/libtcmalloc_minimal.so*", "/usr/lib/*/libtcmalloc.so*"):
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    return None


def _flag_name(flag: str) -> str:
    return flag.split("=", 1)[0].strip()


def merge_xla_flags(existing: str, extra: Sequence[str]) -> str:
    """XLA_FLAGS with `extra` appended, except flags the user already set (theirs win)."""
    have = {_flag_name(f) for f in existing.split()}
    added = [f for f in extra if _flag_name(f) not in have]
    return " ".join([existing.strip(), *added]).strip()


def cpu_runtime_env(environ: Mapping[str, str] | None = None) -> tuple[dict[str, str], str]:
    """(environment for the child process, one line saying what was applied). Pure: reads `environ`
    (default os.environ) and the filesystem only."""
    env = dict(os.environ if environ is None else environ)
    notes = []
    choice = env.get("RESEARCH_TCMALLOC", "").strip()
    if choice.lower() in ("0", "off", "false", "no"):
        notes.append("tcmalloc off (RESEARCH_TCMALLOC=0), glibc malloc")
    else:
        lib = choice or find_tcmalloc()
        if lib and not os.path.isfile(lib):
            notes.append(f"RESEARCH_TCMALLOC={lib} does not exist, glibc malloc")
            lib = None
        if lib:
            preload = [p for p in env.get("LD_PRELOAD", "").split(":") if p]
            if not any("tcmalloc" in os.path.basename(p) for p in preload):
                env["LD_PRELOAD"] = ":".join([lib, *preload])
            for k, v in TCMALLOC_QUIET.items():
                env.setdefault(k, v)
            notes.append(f"tcmalloc ({lib})")
        elif not choice:
            notes.append(
                f"tcmalloc not found, glibc malloc: CPU steps run slower (page faults); install it with `{INSTALL_HINT}`"
            )
    flags_env = env.get("RESEARCH_XLA_CPU_FLAGS")
    extra = list(DEFAULT_XLA_CPU_FLAGS) if flags_env is None else flags_env.split()
    merged = merge_xla_flags(env.get("XLA_FLAGS", ""), extra)
    if merged:
        env["XLA_FLAGS"] = merged
    notes.append(f"XLA_FLAGS={merged!r}" if merged else "XLA flags: jaxlib defaults")
    env[APPLIED_MARK] = "1"
    return env, "runtime: " + "; ".join(notes)


def configure_cpu_runtime(verbose: bool = True) -> str:
    """In-process variant for programs started without the launcher: adds the XLA flags to os.environ
    (effective only before JAX initialises its CPU backend) and says whether tcmalloc is loaded (it
    cannot be loaded from inside the process). Returns the line it printed."""
    if os.environ.get(APPLIED_MARK):
        return ""
    env, line = cpu_runtime_env()
    os.environ["XLA_FLAGS"] = env.get("XLA_FLAGS", "")
    os.environ[APPLIED_MARK] = "1"
    if "jax" in sys.modules:
        line += " (jax was already imported: flags may come too late)"
    if "tcmalloc (" in line and "tcmalloc" not in os.environ.get("LD_PRELOAD", ""):
        line = line.replace(
            "tcmalloc (", "tcmalloc available but not preloaded (start through `python -m research.cpu.runtime --`; "
        )
    if verbose:
        print(line, file=sys.stderr, flush=True)
    return line


def install_tcmalloc(quiet: bool = True) -> bool:
    """Best effort, for `make setup`: apt-get install libtcmalloc-minimal4 when running as root on a
    Debian/Ubuntu system without it. Never raises; True when tcmalloc is available afterwards."""
    if find_tcmalloc():
        return True
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        print(f"setup: tcmalloc not found; for faster CPU training: {INSTALL_HINT}", file=sys.stderr)
        return False
    print("setup: installing libtcmalloc-minimal4 (faster CPU training, docs/performance.md)", file=sys.stderr)
    out = subprocess.DEVNULL if quiet else None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "libtcmalloc-minimal4"]
    try:
        if subprocess.run(cmd, stdout=out, stderr=out, env=env, timeout=300).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], stdout=out, stderr=out, env=env, timeout=300)
            subprocess.run(cmd, stdout=out, stderr=out, env=env, timeout=300)
    except (OSError, subprocess.SubprocessError):
        pass
    ok = find_tcmalloc() is not None
    if not ok:
        print(f"setup: could not install it (non-fatal); later: {INSTALL_HINT}", file=sys.stderr)
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--install-tcmalloc"]:
        install_tcmalloc()
        return 0
    if args[:1] == ["--print"] or not args:
        print(cpu_runtime_env()[1])
        return 0
    if args[0] == "--":
        args = args[1:]
    if not args:
        print("usage: python -m research.cpu.runtime [--print | --install-tcmalloc | -- COMMAND ...]", file=sys.stderr)
        return 2
    env, line = cpu_runtime_env()
    print(line, file=sys.stderr, flush=True)
    try:
        os.execvpe(args[0], args, env)
    except OSError as e:
        print(f"runtime: cannot run {args[0]!r}: {e}", file=sys.stderr)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
