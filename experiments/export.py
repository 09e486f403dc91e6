"""Export a run's checkpoint in the Hugging Face layout (GPT-2 runs: GPT2LMHeadModel; GPT-1: OpenAIGPTLMHeadModel).

    python experiments/export.py run=runs/default/nano_s-seed0 out=exports/nano_s [step=N]

Writes out/config.json, out/model.safetensors and out/tokenizer.model (SentencePiece). Load with
    AutoModelForCausalLM.from_pretrained("exports/nano_s")     # transformers, no custom code
and tokenize with sentencepiece.SentencePieceProcessor(model_file="exports/nano_s/tokenizer.model").
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from research.errors import ConfigError  # noqa: E402
from research.inference.export import export_run  # noqa: E402


def parse_args(argv: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {"run": None, "out": None, "step": None}
    for arg in argv:
        key, sep, value = arg.lstrip("-+").partition("=")
        if not sep or key not in out:
            raise ConfigError(f"{arg!r} is not a setting; use run=<run dir> out=<export dir> [step=N].")
        out[key] = value
    if not out["run"] or not out["out"]:
        raise ConfigError("run= and out= are both required, e.g. run=runs/default/nano_s-seed0 out=exports/nano_s.")
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        step = None if args["step"] in (None, "", "null") else int(str(args["step"]))
        out = export_run(str(args["run"]), str(args["out"]), step)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args['run']} to {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
