"""`make bench-data`: preparing corpora of 0.3 GB and 3 GB (synthetic, reproducible, no download).

    python experiments/bench_data.py [--sizes-gb 0.3 3] [--vocab 8192] [--out data/bench]

For each size: peak RSS of the preparation (the whole process tree, sampled every 0.1 s, and its largest
process), wall time per stage, MB/s and tokens/s with 1 and 2 workers, and the tokenizer's own encode rate
on the same text in this process; then the 40 GB extrapolation for a 16-core host. The corpora are written
once under --out (10 files of 0.3 GB for 3 GB) and reused.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from research.data.synthetic import write_jsonl  # noqa: E402
from research.data.tokenizer import load_tokenizer  # noqa: E402

PART_GB = 0.3


def corpus(out: Path, size_gb: float) -> Path:
    """A folder of synthetic jsonl parts of PART_GB each (written in parallel, once)."""
    folder = out / f"synthetic-{size_gb:g}gb"
    n = max(1, round(size_gb / PART_GB))
    todo = [folder / f"part-{i:02d}.jsonl" for i in range(n) if not (folder / f"part-{i:02d}.jsonl").exists()]
    if todo:
        print(f"writing {size_gb:g} GB of synthetic text into {folder} ...", flush=True)
        with ProcessPoolExecutor(2) as pool:
            list(pool.map(_part, todo))
    return folder


def _part(path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    write_jsonl(tmp, int(PART_GB * 1e9), seed=int(path.stem.split("-")[1]))
    tmp.rename(path)


def _tree_rss(pid: int) -> tuple[int, int]:
    """(sum, largest) resident set size in bytes of a process and its descendants."""
    total = largest = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
        total += rss
        largest = max(largest, rss)
    return total, largest


def prepare_measured(folder: Path, cache: Path, vocab: int, workers: int, tokenizer: Path | None) -> dict:
    """One preparation in a subprocess (python -m research.data), its process tree's RSS sampled."""
    overrides = [f"data.sources=[{folder}]", f"data.name={folder.name}", f"data.cache_dir={cache}"]
    overrides += [f"model.vocab_size={vocab}", f"data.workers={workers}"]
    if tokenizer is not None:
        overrides.append(f"data.tokenizer={tokenizer}")
    cmd = [sys.executable, "-m", "research.data", *overrides, "--json"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak_total = peak_one = 0
    while proc.poll() is None:
        total, one = _tree_rss(proc.pid)
        peak_total, peak_one = max(peak_total, total), max(peak_one, one)
        time.sleep(0.1)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"preparation failed ({proc.returncode}): {' '.join(cmd)}")
    meta = json.loads(out)
    return {
        "wall_s": time.perf_counter() - t0,
        "peak_rss_tree_gb": peak_total / 1e9,
        "peak_rss_process_gb": peak_one / 1e9,
        "stages": meta["stage_seconds"],
        "bytes": sum(s["train_bytes"] + s["val_bytes"] for s in meta["sources"]),
        "tokens": meta["n_train_tokens"] + meta["n_val_tokens"],
        "dir": str(next(cache.glob("*/meta.json")).parent),
    }


def raw_encode_rate(tokenizer: Path, folder: Path, n_bytes: int = 60_000_000) -> dict:
    """The tokenizer alone, one thread, on the corpus's own documents (read beforehand)."""
    tok = load_tokenizer(tokenizer)
    docs, size = [], 0
    with open(sorted(folder.glob("*.jsonl"))[0], encoding="utf-8") as f:
        for line in f:
            docs.append(json.loads(line)["text"])
            size += len(docs[-1].encode())
            if size >= n_bytes:
                break
    t0 = time.perf_counter()
    tokens = sum(len(ids) for i in range(0, len(docs), 256) for ids in tok.encode_batch(docs[i : i + 256]))
    dt = time.perf_counter() - t0
    return {"mb_per_s": size / dt / 1e6, "tokens_per_s": tokens / dt}


def row(label: str, r: dict) -> str:
    enc = r["stages"].get("encode", float("nan"))
    stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stages"].items())
    return (
        f"  {label:<26} wall {r['wall_s']:7.1f} s | encode {r['bytes'] / enc / 1e6:6.2f} MB/s "
        f"{r['tokens'] / enc / 1e6:5.2f} M tok/s | peak RSS tree {r['peak_rss_tree_gb']:.2f} GB, largest process "
        f"{r['peak_rss_process_gb']:.2f} GB | stages (s): {stages}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes-gb", type=float, nargs="+", default=[0.3, 3.0])
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--out", type=Path, default=Path("data/bench"))
    args = p.parse_args()
    results = {}
    for size in args.sizes_gb:
        folder = corpus(args.out, size)
        cache = args.out / f"cache-{size:g}gb"
        print(
            f"\n{size:g} GB ({sum(f.stat().st_size for f in folder.glob('*.jsonl')) / 1e9:.2f} GB on disk)", flush=True
        )
        one = prepare_measured(folder, cache / "w1", args.vocab, 1, None)
        tok = Path(one["dir"]) / "tokenizer.model"
        two = prepare_measured(folder, cache / "w2", args.vocab, 2, tok)  # the same tokenizer: encoding only
        raw = raw_encode_rate(tok, folder)
        enc1, enc2 = one["bytes"] / one["stages"]["encode"] / 1e6, two["bytes"] / two["stages"]["encode"] / 1e6
        print(row("1 worker, from scratch", one))
        print(row("2 workers, given tokenizer", two))
        print(f"  tokenizer alone            {raw['mb_per_s']:.2f} MB/s, {raw['tokens_per_s'] / 1e6:.2f} M tok/s")
        print(f"  per worker / raw encode    {enc1 / raw['mb_per_s']:.2f};  2 workers / 1 worker {enc2 / enc1:.2f}")
        results[f"{size:g}gb"] = {"one_worker": one, "two_workers": two, "raw_encode": raw}
    largest = results[f"{max(args.sizes_gb):g}gb"]
    fixed = sum(v for k, v in largest["one_worker"]["stages"].items() if k != "encode")
    per_worker = largest["two_workers"]["bytes"] / largest["two_workers"]["stages"]["encode"] / 2
    hours = (fixed + 40e9 / (16 * per_worker)) / 3600
    print(f"\n40 GB on a 16-core host at this per-worker rate: about {hours:.1f} h ({fixed:.0f} s of it fixed)")
    (args.out / "bench_data.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
