"""Tokens per second of greedy seq2seq generation: posenc's cached decoding beside two peers, in one run.

    PYTHONPATH=src python benchmarks/generate.py [--reps 15] [--threads 1]

The model is the same size everywhere: d=256, 3 encoder + 3 decoder layers, 4 heads, feed-forward 1024,
sinusoidal positions, batch 8, source length 32, 48 new tokens (no early stop), weights random (speed does
not depend on them). Peers:

* ``torch.nn.Transformer`` with the PyTorch tutorial's ``PositionalEncoding`` module, decoded the tutorial's
  way: the memory is computed once and the whole target prefix is run again at every step (no cache);
* x-transformers' ``XTransformer(...).generate(..., cache_kv=True)`` (its default positions: learned
  absolute embeddings), greedy (``temperature=0``).

Each precision (fp32, then bf16 under CPU autocast) runs every implementation once per repetition, in turn, so
machine noise hits them alike; medians of the repetitions and the ratios posenc / peer are printed.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from posenc.generate import translate
from posenc.models import Seq2Seq, Seq2SeqConfig

D, HEADS, LAYERS, FF = 256, 4, 3, 1024
VOCAB, BATCH, SRC_LEN, NEW = 1000, 8, 32, 48
BOS = 1


class TutorialPositionalEncoding(nn.Module):
    """The PyTorch tutorial's module (sin at even, cos at odd columns, added, then dropout), batch first."""

    def __init__(self, d_model: int, max_len: int = 512) -> None:
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(1, max_len, d_model)
        pe[0, :, 0::2] = torch.sin(position * div_term)
        pe[0, :, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)
        self.dropout = nn.Dropout(0.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(x + self.pe[:, : x.size(1)])


class TorchSeq2Seq(nn.Module):
    """torch.nn.Transformer with token embeddings, the tutorial's encoding and an output projection."""

    def __init__(self) -> None:
        super().__init__()
        self.src_emb, self.tgt_emb = nn.Embedding(VOCAB, D), nn.Embedding(VOCAB, D)
        self.pos = TutorialPositionalEncoding(D)
        self.transformer = nn.Transformer(D, HEADS, LAYERS, LAYERS, FF, 0.0, batch_first=True, norm_first=True)
        self.out = nn.Linear(D, VOCAB)

    @torch.no_grad()
    def greedy(self, src: Tensor, steps: int) -> Tensor:
        memory = self.transformer.encoder(self.pos(self.src_emb(src) * math.sqrt(D)))
        ys = torch.full((src.shape[0], 1), BOS, dtype=torch.long)
        for _ in range(steps):
            mask = nn.Transformer.generate_square_subsequent_mask(ys.shape[1])
            h = self.transformer.decoder(self.pos(self.tgt_emb(ys) * math.sqrt(D)), memory, tgt_mask=mask, tgt_is_causal=True)
            nxt = self.out(h[:, -1]).argmax(-1, keepdim=True)
            ys = torch.cat([ys, nxt], dim=1)
        return ys[:, 1:]


def build(seed: int = 0) -> dict[str, Callable[[Tensor], object]]:
    torch.manual_seed(seed)
    posenc_model = Seq2Seq(Seq2SeqConfig(
        src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, d_model=D, num_heads=HEADS, num_encoder_layers=LAYERS,
        num_decoder_layers=LAYERS, dim_feedforward=FF, dropout=0.0, encoding="sinusoidal",
    )).eval()
    torch_model = TorchSeq2Seq().eval()
    runners: dict[str, Callable[[Tensor], object]] = {
        "posenc": lambda src: translate(posenc_model, src, bos_id=BOS, eos_id=None, max_len=NEW),
        "torch.nn.Transformer": lambda src: torch_model.greedy(src, NEW),
    }
    try:
        from x_transformers import XTransformer
    except ImportError:
        print('x-transformers is not installed (pip install -e ".[bench]"): skipping it')
        return runners
    xt = XTransformer(
        dim=D, enc_num_tokens=VOCAB, enc_depth=LAYERS, enc_heads=HEADS, enc_max_seq_len=SRC_LEN, enc_ff_mult=FF // D,
        dec_num_tokens=VOCAB, dec_depth=LAYERS, dec_heads=HEADS, dec_max_seq_len=NEW + 1, dec_ff_mult=FF // D,
        enc_attn_dim_head=D // HEADS, dec_attn_dim_head=D // HEADS,
    ).eval()
    start = torch.full((BATCH, 1), BOS, dtype=torch.long)
    runners["x-transformers"] = lambda src: xt.generate(src, start, NEW, cache_kv=True, temperature=0.0)
    return runners


def measure(runners: dict[str, Callable[[Tensor], object]], src: Tensor, *, reps: int, bf16: bool) -> dict[str, float]:
    """Median tokens/s of each runner, repetitions interleaved."""
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext
    times: dict[str, list[float]] = {name: [] for name in runners}
    # no_grad, as each library's own generate runs (inference_mode would also switch off autocast's weight cache)
    with torch.no_grad():
        for name, run in runners.items():  # warm-up
            with ctx():
                run(src)
        for _ in range(reps):
            for name, run in runners.items():
                with ctx():
                    t0 = time.perf_counter()
                    run(src)
                    times[name].append(time.perf_counter() - t0)
    return {name: BATCH * NEW / statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: at this size, more threads "
                        "mostly add synchronisation, and on a loaded machine they stall)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runners = build()
    src = torch.randint(2, VOCAB, (BATCH, SRC_LEN))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, source {SRC_LEN}, "
          f"{NEW} new tokens, {args.reps} interleaved repetitions, medians")
    print(f"| precision | {' | '.join(runners)} | posenc / x-transformers | posenc / torch.nn.Transformer |")
    print("|---" * (len(runners) + 3) + "|")
    for bf16 in (False, True):
        tps = measure(runners, src, reps=args.reps, bf16=bf16)
        ours = tps["posenc"]
        ratio_x = f"{ours / tps['x-transformers']:.2f}x" if "x-transformers" in tps else "n/a"
        ratio_t = f"{ours / tps['torch.nn.Transformer']:.2f}x"
        cells = " | ".join(f"{v:,.0f} tok/s" for v in tps.values())
        print(f"| {'bf16 (autocast)' if bf16 else 'fp32'} | {cells} | {ratio_x} | {ratio_t} |", flush=True)


if __name__ == "__main__":
    main()
