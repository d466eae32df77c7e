"""How much context a trained run uses: its validation loss scored with the state carried from N characters back.

    python -m tools.bench.context_reach RUN_DIR [--contexts 0,16,32,64,128] [--checkpoint best]

``textstream eval`` carries the LSTM state through the whole validation text
(every character has at least 512 characters before it, the way generation
reads). Here the text is cut into strips that each start from a zero state
``N`` characters before their first scored character (``evaluation.score``
with ``burn_in=N``), so each character is predicted from ``N`` to
``N + strip length`` characters; strips are ``max(N, 16)`` characters long,
so context ``N`` means "N to 2N". A model whose loss stops falling at some
``N`` uses no more context than that, whatever it is scored with. Prints one
line per context and a JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from textstream.errors import TextstreamError
from textstream.model.checkpoint import load_model
from textstream.model.run import RunPaths
from textstream.training.evaluation import DEFAULT_BURN_IN, run_validation, score


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--contexts", default="0,16,32,64,128",
                   help="comma-separated context lengths N (default %(default)s)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--max-chars", type=int, default=200_000,
                   help="score at most the first N validation characters (default %(default)s)")
    args = p.parse_args(argv)
    try:
        contexts = [int(c) for c in args.contexts.split(",")]
        if any(c < 0 for c in contexts):
            raise ValueError
    except ValueError:
        p.error(f"--contexts: comma-separated integers >= 0 (got {args.contexts!r})")
    try:
        cfg, vocab, model = load_model(args.run_dir, args.checkpoint)
        if cfg.objective != "sequence":
            raise TextstreamError(f"{args.run_dir}: a '{cfg.objective}' model reads a fixed window of "
                                  f"{cfg.seq_len}; only sequence models carry a state")
        stream = run_validation(RunPaths(args.run_dir), vocab.dtype, cfg.seq_len)
    except TextstreamError as e:
        print(f"context_reach: {e}", file=sys.stderr)
        return 2
    n = min(len(stream.body), max(1, args.max_chars))
    rows = []
    as_eval = (DEFAULT_BURN_IN, 64, f"{DEFAULT_BURN_IN}+ (as eval, 64 strips)")
    for c, strips, label in [(c, max(1, n // max(c, 16)), f"{c} to {c + max(c, 16)}") for c in contexts] + [as_eval]:
        s = score(model, cfg.objective, cfg.seq_len, stream, batch_size=strips, burn_in=c, vocab=vocab,
                  max_targets=n)
        rows.append({"context": label, "burn_in": c, "strips": strips, "nats_per_char": round(s.nats_per_char, 4)})
        print(f"context {label:>24}: {s.nats_per_char:.4f} nats/char over {s.chars:,} characters", flush=True)
    print(json.dumps({"run": str(args.run_dir), "checkpoint": args.checkpoint, "seq_len": cfg.seq_len,
                      "contexts": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
