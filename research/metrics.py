"""Run records: TensorBoard events (tensorboard's own writer, no TensorFlow), metrics.jsonl, progress."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

# metrics.jsonl key -> TensorBoard tag
TB_TAGS = {
    "loss": "train/loss",
    "val_loss": "val/loss",
    "val_loss_stderr": "val/loss_stderr",
    "val_bpb": "val/bpb",
    "lr": "lr",
    "grad_norm": "grad_norm",
    "tokens_per_second": "tokens_per_second",
    "mfu": "mfu",
    "tokens": "tokens",
    "flops": "flops",
    "nonfinite_steps": "health/nonfinite_steps",
    "spike_steps": "health/spike_steps",
    "skipped_steps": "health/skipped_steps",
    "rollbacks": "health/rollbacks",
}


class TensorBoardWriter:
    def __init__(self, logdir: Path) -> None:
        logdir.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(logdir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        summary = Summary(
            value=[
                Summary.Value(tag=TB_TAGS.get(k, k), simple_value=float(v))
                for k, v in values.items()
                if isinstance(v, (int, float)) and k != "step"
            ]
        )
        self._writer.add_event(Event(wall_time=time.time(), step=int(step), summary=summary))

    def restart_at(self, step: int) -> None:
        """After a resume from step s, call with s + 1: TensorBoard drops the events an interrupted
        session logged at `step` or later (its SessionLog START purges steps >= `step`)."""
        self._writer.add_event(
            Event(wall_time=time.time(), step=int(step), session_log=SessionLog(status=SessionLog.START))
        )

    def hparams(self, values: dict[str, Any], trial_id: str | None = None) -> None:
        """The run's hyperparameters for TensorBoard's HParams dashboard (a session-start summary; no
        TensorFlow needed). `tensorboard --logdir <sweep dir>` then tabulates every member against its metrics."""
        from tensorboard.plugins.hparams import summary_v2

        clean = {k: v for k, v in values.items() if isinstance(v, bool | int | float | str)}
        summary = summary_v2.hparams_pb(clean, trial_id=trial_id)
        self._writer.add_event(Event(wall_time=time.time(), step=0, summary=summary))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class JsonlWriter:
    """Appends one JSON object per logged step; on resume, drops rows past the restored step."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        if resume_step is not None and path.exists():
            rows = [r for r in read_jsonl(path) if r.get("step", 0) <= resume_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        elif resume_step is None and path.exists():
            path.unlink()
        self._file = path.open("a")

    def write(self, row: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash mid-write
                continue
    return rows


def format_count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"
