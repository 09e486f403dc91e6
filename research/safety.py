"""File safety: what a run may read.

- Restores read only paths inside the run directory (links resolved), unless the user names an
  outside source with train.resume_from and sets train.allow_external_resume=true.
- Nothing here or in the loaders unpickles a user-provided file: checkpoints are orbax arrays plus
  JSON, data is raw token files plus JSON metadata, configs are YAML read by Hydra/OmegaConf (which
  use yaml safe loaders) and results/metrics are JSON. tests/test_bad_input.py scans the sources
  for unpickling calls, numpy pickle loading and unsafe YAML loaders so this stays true.
"""

from __future__ import annotations

from pathlib import Path

from research.errors import ConfigError


def is_inside(path: Path, root: Path) -> bool:
    """True when `path`, with every link resolved, lies in `root` (also resolved)."""
    return Path(path).resolve().is_relative_to(Path(root).resolve())


def check_checkpoint_dir(ckpt_dir: Path, run_dir: Path) -> None:
    """The run's own checkpoints folder must not lead outside the run directory (e.g. a link)."""
    if (ckpt_dir.exists() or ckpt_dir.is_symlink()) and not is_inside(ckpt_dir, run_dir):
        raise ConfigError(
            f"{ckpt_dir} leads to {ckpt_dir.resolve()}, outside the run directory {run_dir}, and restores only read "
            "inside it; remove the link, or set train.resume_from to that folder with train.allow_external_resume=true."
        )


def resolve_resume_source(resume_from: str, run_dir: Path, allow_external: bool) -> Path:
    """The checkpoints folder that train.resume_from names (relative paths are inside the run directory)."""
    given = Path(resume_from).expanduser()
    path = given if given.is_absolute() else run_dir / given
    if not path.exists():
        raise ConfigError(
            f"train.resume_from={resume_from} does not exist ({path}); point it at a checkpoints folder or a run "
            "directory that holds one, or set it to null."
        )
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if not is_inside(path, run_dir) and not allow_external:
        raise ConfigError(
            f"train.resume_from={resume_from} is outside the run directory {run_dir}; set "
            "train.allow_external_resume=true to start from checkpoints there."
        )
    if not any(p.is_dir() and p.name.isdigit() for p in path.iterdir()):
        raise ConfigError(
            f"train.resume_from={resume_from} holds no checkpoint steps ({path}); point it at a run's checkpoints "
            "folder."
        )
    return path.resolve()
