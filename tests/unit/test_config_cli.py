"""research/config/cli.py: the command line checked before Hydra composes, one sentence with the closest name."""

from __future__ import annotations

import pytest
from conftest import ROOT
from helpers import one_sentence

from research.config.cli import check_cli

CLI_CASES = [
    (["model=nano_zz"], "model=nano_zz is not a config in conf/model; did you mean nano_s? choose one of gpt1"),
    (["data=shakespear"], "data=shakespear is not a config in conf/data; did you mean shakespeare?"),
    (["-m", "model=nano_xs,nano_q"], "model=nano_q is not a config in conf/model"),
    (["mesh=ddp"], "mesh=ddp is not a config in conf/mesh"),
    (["train.stepz=5"], "train.stepz is not a setting of train (did you mean train.steps?)"),
    (["model.n_heads=4"], "model.n_heads is not a setting of model (did you mean model.n_head?)"),
]


@pytest.mark.parametrize(("argv", "expected"), CLI_CASES, ids=[c[0][-1] for c in CLI_CASES])
def test_command_line_names_are_checked_before_hydra(argv, expected):
    message = check_cli(argv, ROOT / "conf")
    assert message is not None and expected in message
    one_sentence(message)


def test_command_line_accepts_good_names():
    good = [
        "model=nano_xs",
        "-m",
        "model=nano_xs,nano_s",
        "train.steps=3",
        "+train.new_key=1",
        "hydra.run.dir=x",
        "optim=adamw",
        "mesh.rules.batch=data",
        "model=glob(*)",
        "output=json",
    ]
    assert check_cli(good, ROOT / "conf") is None
