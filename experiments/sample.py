"""Generate text from a trained run, streamed to the terminal as it is sampled.

    python experiments/sample.py run=runs/default/nano_s-seed0 prompt="ROMEO:"
    python experiments/sample.py run=... prompt="..." max_new_tokens=300 temperature=0.8 top_k=200 top_p=0.95 seed=1

Settings (key=value): run (required), prompt (default: empty = a document start), max_new_tokens
(200), temperature (0.8; 0 = greedy), top_k (200; 0 = off), top_p (1.0 = off), seed (0), step
(checkpoint step; default the newest), stop_at_eos (true), kv_cache (true; false recomputes the
whole window per token, for comparison). A typed \\n in the prompt is a newline. The run's own
config names the model and tokenizer.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from research.errors import ConfigError  # noqa: E402
from research.inference.load import load_run  # noqa: E402
from research.inference.sampling import Generator, generate_full  # noqa: E402

DEFAULTS: dict[str, object] = {
    "run": None,
    "prompt": "",
    "max_new_tokens": 200,
    "temperature": 0.8,
    "top_k": 200,
    "top_p": 1.0,
    "seed": 0,
    "step": None,
    "stop_at_eos": True,
    "kv_cache": True,
}


def parse_args(argv: list[str]) -> dict[str, object]:
    """key=value pairs (a leading -- or + is ignored); types follow DEFAULTS."""
    out = dict(DEFAULTS)
    for arg in argv:
        key, sep, value = arg.lstrip("-+").partition("=")
        if not sep or key not in DEFAULTS:
            raise ConfigError(f"{arg!r} is not a setting; use key=value with key one of {', '.join(DEFAULTS)}.")
        default = DEFAULTS[key]
        try:
            if isinstance(default, bool):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                out[key] = value.lower() in ("true", "1", "yes")
            elif key == "step":
                out[key] = None if value.lower() in ("", "null", "none") else int(value)
            elif isinstance(default, int):
                out[key] = int(value)
            elif isinstance(default, float):
                out[key] = float(value)
            else:
                out[key] = value
        except ValueError as e:
            raise ConfigError(f"{key}={value!r} is not a valid {type(default).__name__}; fix its value.") from e
    if not out["run"]:
        raise ConfigError("run= is missing; give a run directory, e.g. run=runs/default/nano_s-seed0.")
    if int(out["max_new_tokens"]) < 1:  # type: ignore[call-overload]
        raise ConfigError(f"max_new_tokens={out['max_new_tokens']} must be at least 1.")
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        run = load_run(str(args["run"]), args["step"])  # type: ignore[arg-type]
        tok = run.tokenizer()
        prompt = str(args["prompt"]).replace("\\n", "\n")  # a typed \n means a newline
        # Documents in the training data follow an EOS token, so EOS + prompt reads as "a document starting so".
        ids = [tok.eos_id, *tok.encode(prompt)]
        kw = dict(
            temperature=float(args["temperature"]),  # type: ignore[arg-type]
            top_k=int(args["top_k"]),  # type: ignore[call-overload]
            top_p=float(args["top_p"]),  # type: ignore[arg-type]
            seed=int(args["seed"]),  # type: ignore[call-overload]
            stop_ids=(tok.eos_id,) if args["stop_at_eos"] else (),
        )
        n = int(args["max_new_tokens"])  # type: ignore[call-overload]
        print(
            f"[sample] {run.model_cfg.name} from {run.run_dir} step {run.step}; "
            f"temperature {kw['temperature']} top_k {kw['top_k']} top_p {kw['top_p']} seed {kw['seed']}",
            file=sys.stderr,
        )
        if args["kv_cache"]:
            tokens = Generator(run.model).generate(ids, n, **kw)
        else:
            tokens = iter(generate_full(run.model, ids, n, **kw))
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    sys.stdout.write(prompt)
    sys.stdout.flush()
    generated: list[int] = []
    shown = ""
    started = time.perf_counter()
    stamps: list[float] = []  # when each token arrived
    for token in tokens:
        stamps.append(time.perf_counter())
        if token == tok.eos_id:
            break
        generated.append(token)
        text = tok.decode(generated)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            sys.stdout.write(text[len(shown) :])
            sys.stdout.flush()
            shown = text
    text = tok.decode(generated)
    sys.stdout.write(text[len(shown) :] + "\n")
    sys.stdout.flush()
    # the first two tokens carry the compilations (prefill, then the one-token step)
    warm = stamps[2:]
    rate = (len(warm) - 1) / (warm[-1] - warm[0]) if len(warm) > 1 and warm[-1] > warm[0] else float("nan")
    print(
        f"[sample] {len(stamps)} tokens; the first two after {(stamps[1:2] or stamps or [started])[0] - started:.2f} s "
        f"(prefill, compilation), then {rate:.1f} tokens/s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
