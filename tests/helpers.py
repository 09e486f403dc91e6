"""Small assertions and file helpers shared by unit and integration tests."""

from __future__ import annotations

from pathlib import Path


def one_sentence(message: str) -> None:
    assert message.count("\n") == 0, message
    assert message.rstrip().endswith("."), message
    assert "Traceback" not in message


def checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def largest_file(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
