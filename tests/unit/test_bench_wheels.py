"""`make bench-wheels` carries every package the bare GPU image lacks for `bash experiments/bench_device.sh`.

The image (Python 3.12) has JAX, Flax, Optax, Orbax, SentencePiece, TensorBoard and Matplotlib, not Hydra or
grain: whatever those two pull in beyond what the image's packages pull in must be a wheel in .whl/. A
missing one (cloudpickle, once) only shows on the device, where time is short, so it is checked here from
this venv's package metadata."""

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "sentencepiece", "tensorboard", "matplotlib")
NOT_IN_IMAGE = ("hydra-core", "grain")
BUILT_HERE = {"antlr4-python3-runtime"}  # no wheel on PyPI: `pip wheel` builds it (see the Makefile)


def closure(names: tuple[str, ...]) -> set[str]:
    """The packages `names` need, themselves included, from the installed distributions' metadata."""
    seen: set[str] = set()
    todo = [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for spec in metadata.requires(name) or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def bench_wheels() -> set[str]:
    match = re.search(r"^BENCH_WHEELS := (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, "the Makefile defines BENCH_WHEELS"
    return {canonicalize_name(n) for n in match.group(1).split()}


def test_bench_wheels_cover_what_the_image_lacks():
    needed = closure(NOT_IN_IMAGE) - closure(IMAGE)
    carried = bench_wheels() | BUILT_HERE
    missing = needed - carried
    assert {"hydra-core", "omegaconf", "grain", "cloudpickle"} <= needed  # the closure is really computed
    assert not missing, f"make bench-wheels misses {sorted(missing)}: add them to BENCH_WHEELS in the Makefile."
