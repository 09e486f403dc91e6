"""The PyTorch reference of issue 8, to run side by side with `make bench` on the same machine.

A nanoGPT-style GPT (pre-LN, GELU, biases, tied embeddings, learned positions), trained eagerly with
non-fused AdamW and gradient clipping at 1.0, batch 16 x 256 tokens, vocab 2048, 2 threads, float32:

    python scripts/torch_reference.py s          # 4 layers, d 128, 4 heads (1.09M parameters)
    python scripts/torch_reference.py m          # 6 layers, d 384, 6 heads (11.5M)
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python scripts/torch_reference.py s

Prints one line: median and best step time, tokens/s, CPU seconds per step and the load average.
Needs torch (a dev dependency); scripts/perf_cpu.sh runs it next to the JAX step.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch
import torch.nn.functional as F
from torch import nn

SHAPES = {"s": (4, 128, 4), "m": (6, 384, 6)}  # layers, d_model, heads
VOCAB, SEQ, BATCH = 2048, 256, 16


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.d, self.heads = d, heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.fc_out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(self.d, dim=2)
        q, k, v = (t.view(B, T, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, self.d)
        x = x + self.proj(y)
        return x + self.fc_out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, layers: int, d: int, heads: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, d), nn.Embedding(SEQ, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB, bias=False)
        self.head.weight = self.wte.weight  # tied

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("shape", choices=sorted(SHAPES))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (mixed precision), for comparison")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(*SHAPES[args.shape])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, foreach=False, fused=False)
    data = torch.randint(0, VOCAB, (BATCH, SEQ + 1))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(data[:, :-1], data[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(3):
        step()
    times, cpu = [], []
    for _ in range(args.steps):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    times.sort()
    cpu.sort()
    med, best = times[len(times) // 2], times[0]
    alloc = "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "glibc malloc"
    n = sum(p.numel() for p in model.parameters())
    print(
        f"torch {torch.__version__} {args.shape} ({n:,} params), {'bf16 autocast' if args.bf16 else 'float32'}, "
        f"{alloc}, {args.threads} threads: "
        f"step {1e3 * med:.1f} ms median (best {1e3 * best:.1f}), {BATCH * SEQ / med:,.0f} tokens/s "
        f"(best {BATCH * SEQ / best:,.0f}), {1e3 * cpu[len(cpu) // 2]:.0f} ms CPU/step, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
