#!/usr/bin/env python3
"""nanoGPT's CPU character-level configuration, trained on a corpus and scored on every validation character.

The same-run baseline of ``python -m tools.bench.quality --baseline nanogpt``. It runs
nanoGPT itself: ``model.py`` (``GPT``, ``GPTConfig``, ``configure_optimizers``)
is imported from a nanoGPT checkout, never copied into this repository. The
training loop is nanoGPT's ``train.py`` re-implemented for one process on the
CPU, so that it can also stop on a wall-clock budget.

Setup (once; torch is a dependency of this benchmark only, never of textstream)::

    python3 -m venv /work/venv-torch
    /work/venv-torch/bin/pip install torch==2.13.0 numpy   # this machine's CPU wheel (/opt/wheels);
                                                           # elsewhere add --index-url https://download.pytorch.org/whl/cpu
    git clone https://github.com/karpathy/nanoGPT /work/nanogpt   # or set NANOGPT_DIR / --nanogpt-dir

Usage, from the repository root (the last line of stdout is JSON)::

    /work/venv-torch/bin/python -m tools.baselines.nanogpt CORPUS.txt --minutes 5
    /work/venv-torch/bin/python -m tools.baselines.nanogpt CORPUS.txt --iters 2000   # the README's CPU run

Configuration: the nanoGPT README's CPU command, ``python train.py
config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
--log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4
--n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0``, i.e. 4
layers, 4 heads, width 128, block 64, batch 12, dropout 0, ``bias=False``
(train.py's default; neither the config nor the command sets it), AdamW
lr 1e-3, betas (0.9, 0.99), weight decay 0.1 on 2-D parameters only (nanoGPT's
``configure_optimizers``), gradient clipping at norm 1.0, warm-up
``lr * (it + 1) / 101`` for 100 iterations, then cosine to ``min_lr`` 1e-4,
float32, ``torch.manual_seed(1337)``, random batches exactly as train.py's
``get_batch`` (``torch.randint(len(train) - 64, (12,))``).

Length: ``--iters N`` decays over N iterations (``lr_decay_iters = N``) as
train.py does; nanoGPT's loop evaluates at ``iter_num == max_iters`` and then
takes one more step that it never evaluates, so here the run stops at that
evaluation (N updates). ``--minutes M`` trains until M minutes of wall clock
have passed since the loop started and runs the cosine over the fraction of
the budget spent, as ``textstream train --time-budget`` does (its
``lr_at(progress=...)``); the warm-up stays nanoGPT's.

Data: the file is read as UTF-8 with CRLF -> LF (textstream's normalisation);
the vocabulary is every character of the whole file, sorted (nanoGPT's
``data/shakespeare_char/prepare.py``); the split is textstream's: the last
``floor(chars * val_fraction)`` characters are validation, the rest training
(nanoGPT's prepare.py puts ``int(n * 0.9)`` in training: one character apart).

Scores:

- ``val_nats_per_char``: every validation character exactly once (see
  ``score_plan``). Windows of 64 characters start every 32 characters of the
  validation text; a window predicts the 64 characters after each of its
  positions and the last 32 of those predictions are scored, so each of those
  characters is predicted from the 33 to 64 characters before it (positions
  32 to 63 of the window). The first window scores all its predictions
  (characters 1 to 64 of the validation text, from 1 to 64 characters of
  context), and validation character 0 is predicted from the last 64
  characters of the training split, as ``textstream eval`` gives the first
  validation characters the end of the training split as context.
- ``nanogpt_estimate``: train.py's ``estimate_loss``: the mean loss of
  ``--eval-iters`` random batches of 12 x 64 from each split, so every
  context length from 1 to 64 equally; the README's "loss 1.88" is this
  figure (eval_iters 20) after 2000 iterations. As train.py with the
  config's ``always_save_checkpoint = False``, it runs every
  ``--eval-interval`` iterations (250) and at the end (its time counts in a
  budget, and its random batches move the training batches, as in nanoGPT),
  and the weights of the lowest val estimate are kept (nanoGPT's
  ``ckpt.pt``): ``val_nats_per_char`` scores those (``kept_iter``), as
  ``textstream eval`` scores the ``best`` checkpoint;
  ``final_val_nats_per_char`` scores the last weights.

``chars_per_s``: characters of training input per second (batch * block per
iteration) over the time spent in training steps, the first two steps left
out as textstream leaves out its compiling steps.

Threads: by default (``--threads auto``) each training step runs on all the
cores the process may use or on one, whichever ``Threads`` measured faster
lately. torch's OpenMP threads spin while they wait: on an idle machine all
cores are fastest (2 cores here: ~21,000 chars/s against ~13,500 for one
thread), but when other processes load the machine spinning threads
collapse (seen here: 241 to 3,400 chars/s on 2 cores at load averages of 3
to 9, where one thread kept 8,000 to 13,000). ``--threads N`` fixes the count
(all cores: nanoGPT as it runs; with ``--threads 2`` here, nanoGPT's own
train.py and this loop printed the same estimates to the last digit over 60
iterations, warm-up and cosine). A figure from a busy machine says
little: the JSON records the 1-minute load average at the start and the end
of training (``loadavg``) and the steps run at each thread count.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

DEFAULT_NANOGPT_DIR = Path("/work/nanogpt")
TORCH_SETUP = ("python3 -m venv /work/venv-torch && /work/venv-torch/bin/pip install torch==2.13.0 numpy, "
               "then run this tool with /work/venv-torch/bin/python")


@dataclass
class NanoConfig:
    """nanoGPT's CPU shakespeare_char configuration (README command over config/train_shakespeare_char.py)."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    batch_size: int = 12
    dropout: float = 0.0
    bias: bool = False
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_iters: int = 20
    seed: int = 1337


# ----------------------------------------------------------------------------- data (torch-free)

def load_split(path: Path, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(train ids, val ids, chars)``: whole-file sorted vocabulary, textstream's split (val = last floor(n*f))."""
    text = Path(path).read_text(encoding="utf-8").replace("\r\n", "\n")
    chars = sorted(set(text))
    lut = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((lut[c] for c in text), dtype=np.int64, count=len(text))
    n_val = math.floor(len(ids) * val_fraction)
    return ids[:len(ids) - n_val], ids[len(ids) - n_val:], chars


def score_plan(n_val: int, n_context: int, block: int = 64, stride: int = 32) -> list[tuple[int, int, int]]:
    """Windows ``(start, n, first)`` over the stream ``context + val`` scoring every val character once.

    A window reads ``stream[start:start+n]``, predicts ``stream[start+1:start+n+1]``
    and scores its predictions ``first..n-1``; prediction ``j`` sees ``j + 1``
    characters. ``n_context`` characters of the training split's end precede the
    validation text in the stream (at most ``block`` are used).
    """
    if n_val <= 0:
        return []
    c = min(n_context, block)
    plan = [(0, c, c - 1)] if c > 0 else []  # validation character 0 from the end of the training split
    s, covered = 0, 0  # covered: the last validation index scored so far
    while covered < n_val - 1:
        n = min(block, n_val - 1 - s)
        plan.append((c + s, n, 0 if s == 0 else block - stride))
        covered = s + n
        s += stride
    return plan


# ----------------------------------------------------------------------------- nanoGPT and torch

def import_torch() -> ModuleType:
    """``torch``, or exit with how to install the benchmark's CPU torch."""
    try:
        import torch
    except ImportError:
        raise SystemExit(f"tools.baselines.nanogpt: torch is not installed in {sys.executable}; {TORCH_SETUP}") from None
    return torch


def load_nanogpt(directory: Path) -> ModuleType:
    """nanoGPT's ``model.py`` from a checkout, imported as module ``nanogpt_model``."""
    path = Path(directory) / "model.py"
    if not path.is_file():
        raise SystemExit(f"tools.baselines.nanogpt: {path}: not found; get nanoGPT with "
                         f"`git clone https://github.com/karpathy/nanoGPT {directory}` or pass --nanogpt-dir")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_lr(cfg: NanoConfig, it: int, decay_iters: int | None, progress: float | None) -> float:
    """train.py's ``get_lr``; with ``progress`` (budget spent) the cosine runs over it, as textstream's."""
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if progress is not None:
        ratio = min(1.0, max(0.0, progress))
    else:
        if it >= decay_iters:  # train.py: > (at == the cosine gives min_lr, or 0/0 when decay_iters is the warm-up)
            return cfg.min_lr
        ratio = (it - cfg.warmup_iters) / (decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


class Batches:
    """train.py's ``get_batch`` over in-memory splits (same draws from torch's global generator)."""

    def __init__(self, torch, cfg: NanoConfig, train: np.ndarray, val: np.ndarray):
        self.torch, self.cfg = torch, cfg
        self.data = {"train": torch.from_numpy(train), "val": torch.from_numpy(val)}
        self.offsets = torch.arange(cfg.block_size)

    def get(self, split: str):
        data, t = self.data[split], self.cfg.block_size
        ix = self.torch.randint(len(data) - t, (self.cfg.batch_size,))
        return data[ix[:, None] + self.offsets], data[ix[:, None] + self.offsets + 1]


def estimate_loss(torch, model, batches: Batches, eval_iters: int) -> dict[str, float]:
    """train.py's ``estimate_loss``: mean loss of ``eval_iters`` random batches per split."""
    out = {}
    model.eval()
    with torch.no_grad():
        for split in ("train", "val"):
            losses = torch.zeros(eval_iters)
            for k in range(eval_iters):
                x, y = batches.get(split)
                losses[k] = model(x, y)[1].item()
            out[split] = float(losses.mean())
    model.train()
    return out


class Threads:
    """The torch thread count per training step: fixed, or ``auto``: one or all cores, whichever is faster now.

    torch's OpenMP threads spin while they wait; when other processes load
    the machine, all-core steps can take 5 to 50 times longer than one-thread
    steps (seen here on 2 cores), while on an idle machine all cores are
    ~1.6x faster. ``auto`` times ``probe`` steps of each (real training steps,
    after one step to settle each), stops probing an option as soon as one of
    its steps takes over twice the other's median, keeps the faster by median
    and probes again ``every_s`` later (doubled, up to 8x, after each probe cut
    short). Only the parallelism changes, not what is computed (up to
    floating-point summation order).
    """

    def __init__(self, torch, cores: int, auto: bool, probe: int = 8, every_s: float = 20.0):
        self.torch, self.probe, self.every_s = torch, probe, every_s
        self.options = [1, cores] if auto and cores > 1 else [cores]
        self.current, self.wait, self.next_probe = cores, every_s, 0.0
        self.queue: list[int] = []
        self.times: dict[int, list[float]] = {}
        self.used: dict[int, int] = {}

    def pick(self, now: float) -> int:
        """The thread count for the next step (set in torch)."""
        if not self.queue and len(self.options) > 1 and now >= self.next_probe:
            self.queue = [c for c in self.options for _ in range(self.probe + 1)]
            self.times = {c: [] for c in self.options}
        threads = self.queue[0] if self.queue else self.current
        if threads != self.torch.get_num_threads():
            self.torch.set_num_threads(threads)
        return threads

    def record(self, threads: int, dt: float, now: float) -> None:
        """The step just run with ``threads`` took ``dt`` seconds."""
        self.used[threads] = self.used.get(threads, 0) + 1
        if not self.queue:
            return
        self.queue.pop(0)
        if self.queue.count(threads) == self.probe:
            return  # the settling step
        self.times[threads].append(dt)
        others = [float(np.median(v)) for c, v in self.times.items() if c != threads and v]
        cut = bool(others) and dt > 2 * min(others)
        if cut:
            self.queue = [c for c in self.queue if c != threads]
        if not self.queue:
            self.current = min((c for c in self.options if self.times[c]),
                               key=lambda c: float(np.median(self.times[c])))
            self.wait = min(self.wait * 2, 8 * self.every_s) if cut else self.every_s
            self.next_probe = now + self.wait


@dataclass
class TrainResult:
    iters: int
    train_s: float  # time inside training steps
    wall_s: float  # the loop, evaluations included
    chars_per_s: float
    estimate: dict | None  # the last nanoGPT-style estimate: {"iter", "train", "val"}
    best: dict | None = None  # the estimate with the lowest val loss (train.py's checkpoint), if any
    best_state: dict | None = None  # the weights at ``best`` (None where they are the final ones)


def train(torch, model, optimizer, batches: Batches, cfg: NanoConfig, *, iters: int | None,
          seconds: float | None, eval_interval: int = 0, threads: Threads | None = None,
          log=print) -> TrainResult:
    """train.py's loop (one process, CPU, float32) for ``iters`` updates or ``seconds`` of wall clock.

    Kept as one function, like train.py's loop, so its order of operations
    (lr, evaluation, forward, next batch, backward, clip, step) reads as there.
    """
    threads = threads or Threads(torch, torch.get_num_threads(), auto=False)
    x, y = batches.get("train")
    t_begin = time.monotonic()
    it, train_s, timed, estimate, last_log = 0, 0.0, 0, None, t_begin
    best, best_state = None, None

    def evaluate():
        """train.py: estimate, and keep the weights when the val estimate is the lowest yet (its ckpt.pt)."""
        nonlocal best, best_state
        found = {"iter": it, **estimate_loss(torch, model, batches, cfg.eval_iters)}
        log(f"step {it}: train loss {found['train']:.4f}, val loss {found['val']:.4f}")
        if best is None or found["val"] < best["val"]:
            best = found
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return found

    while True:
        elapsed = time.monotonic() - t_begin
        if seconds is not None and elapsed >= seconds:
            break
        lr = get_lr(cfg, it, iters, None if seconds is None else elapsed / seconds)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if eval_interval and it % eval_interval == 0:
            estimate = evaluate()
        if iters is not None and it >= iters:
            break
        t0 = time.monotonic()
        n_threads = threads.pick(t0)
        _, loss = model(x, y)
        x, y = batches.get("train")
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        now = time.monotonic()
        threads.record(n_threads, now - t0, now)
        if it >= 2:  # as textstream, leave the first steps out of the rate
            train_s += now - t0
            timed += 1
        it += 1
        if now - last_log >= 10:
            last_log = now
            log(f"iter {it}: loss {loss.item():.4f}, lr {lr:.2e}, {now - t_begin:.0f} s, threads {n_threads}")
    if estimate is None or estimate["iter"] != it:
        estimate = evaluate()
    rate = cfg.batch_size * cfg.block_size * timed / train_s if train_s > 0 else 0.0
    return TrainResult(it, train_s, time.monotonic() - t_begin, rate, estimate, best,
                       None if best is estimate else best_state)


def score(torch, model, train: np.ndarray, val: np.ndarray, block: int = 64, stride: int = 32,
          batch: int = 256) -> tuple[float, int, tuple[int, int]]:
    """``(sum of nats, characters scored, (min, max) context)`` over every validation character."""
    context = train[len(train) - min(len(train), block):]
    stream = torch.from_numpy(np.concatenate([context, val]))
    plan = score_plan(len(val), len(context), block, stride)
    groups: dict[int, list[tuple[int, int]]] = {}
    for start, n, first in plan:
        groups.setdefault(n, []).append((start, first))
    total, count, seen = 0.0, 0, []
    model.eval()
    with torch.no_grad():
        for n, windows in groups.items():
            pos = torch.arange(n)
            for a in range(0, len(windows), batch):
                part = windows[a:a + batch]
                starts = torch.tensor([s for s, _ in part])[:, None]
                x, y = stream[starts + pos], stream[starts + pos + 1]
                logits, _ = model(x, y)
                nats = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none")
                mask = pos[None, :] >= torch.tensor([f for _, f in part])[:, None]
                total += float(nats[mask].double().sum())
                count += int(mask.sum())
                seen += [f + 1 for _, f in part] + [n]
    model.train()
    return total, count, (min(seen), max(seen)) if seen else (0, 0)


def sample(torch, model, chars: list[str], n: int, temperature: float = 0.5, seed: int = 0) -> str:
    """``n`` characters from nanoGPT's ``generate``, starting from a newline (or the first character)."""
    torch.manual_seed(seed)
    start = chars.index("\n") if "\n" in chars else 0
    model.eval()
    out = model.generate(torch.tensor([[start]]), n, temperature=temperature)
    return "".join(chars[i] for i in out[0, 1:].tolist())


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus", type=Path, help="a UTF-8 text file")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--minutes", type=float, help="train for this wall-clock budget (cosine over the fraction spent)")
    g.add_argument("--iters", type=int, help="train for this many iterations (nanoGPT's max_iters = lr_decay_iters)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="tail of the file held out (default 0.1)")
    p.add_argument("--nanogpt-dir", type=Path, default=Path(os.environ.get("NANOGPT_DIR", DEFAULT_NANOGPT_DIR)),
                   help="a nanoGPT checkout (default: $NANOGPT_DIR, else /work/nanogpt)")
    p.add_argument("--eval-interval", type=int, default=250, help="nanoGPT's estimate every N iterations, keeping "
                   "the weights of the lowest val estimate as train.py's checkpoint (default 250, as nanoGPT; "
                   "0: only at the end, the final weights)")
    p.add_argument("--eval-iters", type=int, default=NanoConfig.eval_iters, help="batches per estimate (default 20)")
    p.add_argument("--seed", type=int, default=NanoConfig.seed)
    p.add_argument("--threads", default="auto", help="torch threads: a number, or auto (default): all cores "
                   "or one, whichever is faster now (see Threads)")
    p.add_argument("--sample", type=int, default=0, metavar="N", help="print N characters at temperature 0.5")
    args = p.parse_args(argv)
    if not 0.0 < args.val_fraction < 1.0:
        p.error("--val-fraction must be in (0, 1)")
    if args.threads != "auto" and not (args.threads.isdigit() and int(args.threads) > 0):
        p.error(f"--threads must be a positive number or auto (got {args.threads!r})")
    return args


def build(torch, nanogpt: ModuleType, cfg: NanoConfig, vocab_size: int):
    """nanoGPT's ``GPT`` and its ``configure_optimizers`` AdamW, seeded as train.py."""
    torch.manual_seed(cfg.seed)
    with contextlib.redirect_stdout(sys.stderr):  # model.py prints its parameter counts
        model = nanogpt.GPT(nanogpt.GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                                              block_size=cfg.block_size, bias=cfg.bias, vocab_size=vocab_size,
                                              dropout=cfg.dropout))
        optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), "cpu")
    return model, optimizer


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = NanoConfig(eval_iters=args.eval_iters, seed=args.seed)
    torch = import_torch()
    nanogpt = load_nanogpt(args.nanogpt_dir)
    train_ids, val_ids, chars = load_split(args.corpus, args.val_fraction)
    if len(train_ids) <= cfg.block_size + 1 or len(val_ids) <= cfg.block_size + 1:
        raise SystemExit(f"tools.baselines.nanogpt: {args.corpus}: too short for block {cfg.block_size} on both splits")
    cores = len(os.sched_getaffinity(0)) if args.threads == "auto" else int(args.threads)
    torch.set_num_threads(cores)
    threads = Threads(torch, cores, auto=args.threads == "auto")
    model, optimizer = build(torch, nanogpt, cfg, len(chars))
    load_start = os.getloadavg()[0]
    result = train(torch, model, optimizer, Batches(torch, cfg, train_ids, val_ids), cfg, iters=args.iters,
                   seconds=None if args.minutes is None else args.minutes * 60, eval_interval=args.eval_interval,
                   threads=threads, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    load_end = os.getloadavg()[0]
    t0 = time.monotonic()
    def scored():
        return score(torch, model, train_ids, val_ids, cfg.block_size, cfg.block_size // 2)

    nats, count, ctx = scored()
    final = round(nats / count, 4)
    if result.best_state is not None:  # train.py's ckpt.pt: the weights of its lowest val estimate
        model.load_state_dict(result.best_state)
        nats, count, ctx = scored()
    report = {"corpus": str(args.corpus), "minutes": args.minutes, "iters": result.iters,
              "val_nats_per_char": round(nats / count, 4), "val_bits_per_char": round(nats / count / math.log(2), 4),
              "kept_iter": result.best["iter"] if result.best else result.iters, "final_val_nats_per_char": final,
              "val_chars": count, "context_chars": list(ctx), "train_chars": len(train_ids),
              "train_chars_seen": result.iters * cfg.batch_size * cfg.block_size,
              "chars_per_s": round(result.chars_per_s), "train_s": round(result.train_s, 1),
              "wall_s": round(result.wall_s, 1), "score_s": round(time.monotonic() - t0, 1),
              "nanogpt_estimate": {k: round(v, 4) if isinstance(v, float) else v for k, v in result.estimate.items()}
              | {"eval_iters": cfg.eval_iters},
              "params": sum(q.numel() for q in model.parameters()), "vocab": len(chars), "threads": args.threads,
              "steps_by_threads": {str(k): v for k, v in sorted(threads.used.items())},
              "loadavg": [round(load_start, 2), round(load_end, 2)],
              "torch": torch.__version__, "nanogpt_model_sha256": file_sha256(args.nanogpt_dir / "model.py")[:12],
              "config": asdict(cfg)}
    print_summary(args, report)
    if args.sample:
        print("--- nanoGPT sample at temperature 0.5 ---\n" + sample(torch, model, chars, args.sample))
    print(json.dumps(report))
    return 0


def print_summary(args: argparse.Namespace, report: dict) -> None:
    length = f"{args.minutes:g} min" if args.minutes is not None else f"{args.iters} iterations"
    print(f"nanoGPT CPU config: {report['val_nats_per_char']:.4f} nats/char ({report['val_bits_per_char']:.4f} "
          f"bits/char) on {report['val_chars']:,} validation characters after {length}: {report['iters']:,} "
          f"iterations, {report['train_chars_seen']:,} training characters, {report['chars_per_s']:,} chars/s "
          f"(steps by threads: {report['steps_by_threads']}); the weights kept at iteration {report['kept_iter']:,} "
          f"(the last: {report['final_val_nats_per_char']:.4f})")
    est = report["nanogpt_estimate"]
    print(f"nanoGPT's own estimate (eval_iters {est['eval_iters']}) at step {est['iter']}: "
          f"train loss {est['train']:.4f}, val loss {est['val']:.4f}")


if __name__ == "__main__":
    sys.exit(main())
