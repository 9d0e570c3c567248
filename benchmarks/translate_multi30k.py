"""Multi30k German -> English in a fixed training budget on the CPU: how good does posenc's Seq2Seq get?

    PYTHONPATH=src python benchmarks/translate_multi30k.py --data ../shared/data/multi30k
    # 600 CPU-seconds of training on one thread, then sacreBLEU (greedy) on test_2016_flickr

Recipe (why each part): a joint byte-level BPE vocabulary of 8k with source, target and output embeddings shared
(one table learns from both languages, Press & Wolf 2017); posenc's default Seq2Seq (d=256, 3+3 pre-norm layers,
sinusoidal encoding); bf16 autocast (this CPU's AMX units run bf16 matrix products ~5x faster than fp32) with the
plain math attention path (faster than the fused CPU kernel for these short sentences); batches of ~2k padded
tokens grouped by length (more updates in a short run: ~700 in the budget); AdamW (peak 1.5e-3) with a 60-step
linear warm-up and a cosine decay to zero over the budget, so that the run ends annealed whenever it stops; label
smoothing 0.1 (Szegedy et al. 2016; Vaswani et al. 2017 section 5.4); no dropout (under three epochs of 29k pairs
do not overfit, and sampling dropout masks took about a quarter of a CPU step); greedy decoding.

The machine may be shared, so wall-clock budgets are noisy: by default the budget counts this process's CPU time
(``--clock cpu``; with one thread, 600 CPU seconds are what 600 s of an idle machine give one core), and the report
gives the steps and tokens processed and the wall and CPU seconds beside the scores. The training loop is explicit
here, built from the library's pieces (dataset, model, metrics).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from posenc.attention import MultiHeadAttention  # noqa: E402
from posenc.data.translation import TranslationConfig, TranslationDataset  # noqa: E402
from posenc.models import Seq2Seq, Seq2SeqConfig  # noqa: E402
from posenc.train.bleu import evaluate_translation  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=pathlib.Path, default=ROOT.parent / "shared" / "data" / "multi30k")
    p.add_argument("--budget", type=float, default=600.0, help="seconds of training (data preparation and evaluation excluded)")
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                   help="cpu: this process's CPU time (robust to other load on a shared machine); wall: elapsed time")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps as well (0: no limit)")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--ff", type=int, default=1024)
    p.add_argument("--encoding", default="sinusoidal")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--max-tokens", type=int, default=2048, help="padded tokens per batch")
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--warmup", type=int, default=60, help="steps of linear warm-up")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (0: torch's default); one thread, because contending OpenMP threads on a shared "
                        "machine made steps ~3x slower here")
    p.add_argument("--attention", choices=["math", "fused"], default="math",
                   help="math: posenc's plain path (faster on CPU for these short sentences); fused: SDPA's kernel")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def lr_at(step: int, elapsed: float, args: argparse.Namespace) -> float:
    """Linear warm-up over steps, then a cosine to zero over the fraction of the budget spent (time, or steps
    when ``--max-steps`` is given, whichever runs out first)."""
    warm = min(1.0, (step + 1) / args.warmup)
    frac = min(1.0, max(elapsed / args.budget, step / args.max_steps if args.max_steps else 0.0))
    return args.lr * warm * 0.5 * (1.0 + math.cos(math.pi * frac))


def train(model: Seq2Seq, ds: TranslationDataset, args: argparse.Namespace) -> dict[str, float]:
    """The explicit loop: AdamW, label-smoothed cross-entropy (padding ignored), bf16 autocast, a time budget."""
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-9, weight_decay=args.weight_decay)
    use_bf16 = args.precision == "bf16"
    model.train()
    step = src_tokens = tgt_tokens = 0
    ema = None
    start, cpu_start = time.perf_counter(), time.process_time()
    for batch in ds.train_batches():
        elapsed = time.process_time() - cpu_start if args.clock == "cpu" else time.perf_counter() - start
        if elapsed >= args.budget or (args.max_steps and step >= args.max_steps):
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, elapsed, args)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(batch.src, batch.inputs)  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), ignore_index=ds.pad_id,
                               label_smoothing=args.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        src_tokens += int((batch.src != ds.pad_id).sum())
        tgt_tokens += int((batch.targets != ds.pad_id).sum())
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 50 == 0:
            print(f"step {step:5d}  {elapsed:6.0f}s ({args.clock})  epoch {step / ds.batches_per_epoch():5.2f}  "
                  f"loss {ema:.3f}  lr {opt.param_groups[0]['lr']:.2e}  tokens {src_tokens + tgt_tokens:,}", flush=True)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {"steps": step, "epochs": step / ds.batches_per_epoch(), "train_wall_seconds": round(seconds, 1),
            "train_cpu_seconds": round(cpu_seconds, 1), "clock": args.clock,
            "src_tokens": src_tokens, "tgt_tokens": tgt_tokens, "train_loss_ema": ema or float("nan")}


@torch.no_grad()
def valid_loss(model: Seq2Seq, ds: TranslationDataset, name: str, use_bf16: bool) -> float:
    model.eval()
    total = count = 0.0
    for batch in ds.eval_batches(name):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(batch.src, batch.inputs)
        total += float(F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), ignore_index=ds.pad_id,
                                       reduction="sum"))
        count += int((batch.targets != ds.pad_id).sum())
    return total / count


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    d = args.data
    t0 = time.perf_counter()
    ds = TranslationDataset.build(TranslationConfig(
        train=[str(d / "train.de.gz"), str(d / "train.en.gz")],
        eval={"val": [str(d / "val.de.gz"), str(d / "val.en.gz")],
              "test_2016_flickr": [str(d / "test_2016_flickr.de.gz"), str(d / "test_2016_flickr.en.gz")]},
        vocab_size=args.vocab_size, max_tokens=args.max_tokens, seed=args.seed,
    ))
    print(f"data: {ds.report.summary()}; vocab {ds.vocab_size}; {ds.batches_per_epoch()} batches an epoch "
          f"({time.perf_counter() - t0:.1f}s)", flush=True)
    model = Seq2Seq(Seq2SeqConfig(
        src_vocab_size=ds.vocab_size, tgt_vocab_size=ds.vocab_size, d_model=args.d_model, num_heads=args.heads,
        num_encoder_layers=args.layers, num_decoder_layers=args.layers, dim_feedforward=args.ff,
        dropout=args.dropout, encoding=args.encoding, share_embeddings=True, pad_id=ds.pad_id,
    ))
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            module.use_math = args.attention == "math"
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params:,} parameters, threads {torch.get_num_threads()}, {args.precision}", flush=True)
    stats = train(model, ds, args)
    use_bf16 = args.precision == "bf16"
    t1 = time.perf_counter()
    val = valid_loss(model, ds, "val", use_bf16)
    scores, hyps = evaluate_translation(model, ds.eval_sets["test_2016_flickr"], ds.tokenizer,
                                        autocast=torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16))
    result = {
        "bleu": round(scores.bleu, 2), "chrf": round(scores.chrf, 2), "bleu_signature": scores.bleu_signature,
        "chrf_signature": scores.chrf_signature, "bleu_detail": scores.bleu_detail, "decoding": "greedy",
        "val_loss": round(val, 4), **stats, "tokens": stats["src_tokens"] + stats["tgt_tokens"],
        "eval_seconds": round(time.perf_counter() - t1, 1), "parameters": params, "args": {
            k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()},
        "samples": [{"src": ds.eval_sets["test_2016_flickr"].sources[i], "hyp": hyps[i],
                     "ref": ds.eval_sets["test_2016_flickr"].references[i]} for i in range(3)],
    }
    print(json.dumps(result, indent=1, ensure_ascii=False))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
