"""What one run computes, from its config alone: sizes, steps, tokens, training FLOPs.

    b = budget(cfg)      # b.steps, b.warmup, b.tokens, b.flops, b.flops_model, ...

The one place that turns the budget settings (train.steps / tokens / tokens_per_param) into steps;
the train programs, results.json, the planner and the sweep's rules all read it from here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from research import flops
from research.config.derived import batch_tokens, total_steps, train_seq_len, warmup_steps


@dataclasses.dataclass(frozen=True)
class Budget:
    params: int
    params_nonembed: int
    params_embed: int
    steps: int
    warmup: int
    seq_len: int
    batch_tokens: int
    flops_per_token: int  # 6N + 12LHQT convention (MFU uses it)

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_tokens

    @property
    def flops(self) -> int:
        """Training FLOPs as 6 N_nonembed D (Kaplan's C)."""
        return 6 * self.params_nonembed * self.tokens

    @property
    def flops_model(self) -> int:
        """Training FLOPs in the 6N + 12LHQT convention, times D."""
        return self.flops_per_token * self.tokens

    def record(self) -> dict[str, Any]:
        """The budget fields of results.json."""
        return {
            "params": self.params,
            "params_nonembed": self.params_nonembed,
            "params_embed": self.params_embed,
            "steps": self.steps,
            "batch_tokens": self.batch_tokens,
            "seq_len": self.seq_len,
            "tokens": self.tokens,
            "flops": self.flops,
            "flops_model": self.flops_model,
        }


def budget(cfg: Any) -> Budget:
    """The run's budget; cfg is a Config or anything with its attributes (a resolver's config node)."""
    counts = flops.param_counts(cfg.model)
    seq_len = train_seq_len(cfg)
    steps = total_steps(cfg, counts["params_nonembed"])
    return Budget(
        params=counts["params"],
        params_nonembed=counts["params_nonembed"],
        params_embed=counts["params_embed"],
        steps=steps,
        warmup=warmup_steps(cfg, steps),
        seq_len=seq_len,
        batch_tokens=batch_tokens(cfg),
        flops_per_token=flops.flops_per_token(cfg.model, seq_len)["flops_per_token"],
    )
