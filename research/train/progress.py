"""Progress bar with tokens/s and ETA (tqdm); quiet when disabled or not the main process."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

from research.metrics import format_count


class Progress:
    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "") -> None:
        self._bar = (
            tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
                mininterval=1.0,
            )
            if enabled
            else None
        )
        self._done = initial

    def update(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(step - self._done)
        self._done = step

    def show(self, row: dict[str, Any]) -> None:
        if self._bar is None:
            return
        post = {"loss": f"{row['loss']:.3f}"}
        if row.get("val_loss") is not None:
            post["val"] = f"{row['val_loss']:.3f}"
        if row.get("tokens_per_second"):
            post["tok/s"] = format_count(row["tokens_per_second"])
        self._bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
