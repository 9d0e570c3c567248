"""The encoder-decoder systems the training benchmark compares, each wrapped as one training step.

* ``posenc``: ``posenc.models.Seq2Seq`` with the sinusoidal encoding, post-norm and ReLU (as torch.nn), an untied
  output projection (as the PyTorch tutorial), so the parameter counts match torch.nn's to within its
  output bias.
* ``torch``: ``torch.nn.Transformer`` (batch_first, post-norm) with token embeddings scaled by sqrt(d), the
  sinusoidal encoding of the PyTorch translation tutorial (a fixed buffer added, then dropout) and an output
  ``nn.Linear``; the causal target mask is the tutorial's float mask with ``tgt_is_causal=True``.
* ``xtransformers``: x-transformers' ``XTransformer`` (pre-norm, GELU, its sinusoidal embedding with a learned
  scale, its own attention: the products in autocast's dtype, softmax in fp32); its wrapper computes the
  cross-entropy itself. ``xtransformers+flash``: the same with ``attn_flash=True`` (SDPA, whose CPU math path
  with dropout computes attention in fp32: slower in bf16 on this CPU, about as fast in fp32). Run both; the
  ratio is taken against the faster peer of each round.

Every system trains on the same batch with the same optimizer (``torch.optim.Adam``, lr 1e-4) and the same
cross-entropy; only the model differs.

Legend: B batch, S source length, T target length, D model width, V vocabulary size.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class Config:
    """One benchmark configuration (the model and the batch)."""

    name: str
    d_model: int
    layers: int
    heads: int
    ff: int
    batch: int
    length: int
    vocab: int = 1000
    dropout: float = 0.1


CONFIGS = {
    "small": Config("small", d_model=256, layers=3, heads=4, ff=1024, batch=32, length=64),
    "base": Config("base", d_model=512, layers=6, heads=8, ff=2048, batch=16, length=128),
}


def model_flops(cfg: Config) -> float:
    """Matrix-product FLOPs of one training step (forward + backward = 3 x forward), source length = target.

    Forward, per sequence: encoder layers 2S(4D^2 + 2DF) + 4S^2 D; decoder layers 2T(4D^2) + 4T^2 D
    (self-attention, counted in full although causal), 2T(2D^2) + 2S(2D^2) + 4TSD (cross-attention),
    2T(2DF) (feed-forward); output projection 2TDV. Embedding look-ups, norms and softmax are not counted.
    """
    d, f, s, t, n = cfg.d_model, cfg.ff, cfg.length, cfg.length, cfg.layers
    enc = n * (2 * s * (4 * d * d + 2 * d * f) + 4 * s * s * d)
    dec = n * (2 * t * 4 * d * d + 4 * t * t * d + 2 * t * 2 * d * d + 2 * s * 2 * d * d + 4 * t * s * d + 2 * t * 2 * d * f)
    out = 2 * t * d * cfg.vocab
    return 3.0 * cfg.batch * (enc + dec + out)


class TutorialPositionalEncoding(nn.Module):
    """The PyTorch translation tutorial's encoding: a fixed sin/cos buffer added to the embeddings, then dropout."""

    def __init__(self, d_model: int, dropout: float, max_len: int = 5000) -> None:
        super().__init__()
        den = torch.exp(-torch.arange(0, d_model, 2) * math.log(10000) / d_model)
        pos = torch.arange(0, max_len).reshape(max_len, 1)
        pe = torch.zeros((max_len, d_model))
        pe[:, 0::2] = torch.sin(pos * den)
        pe[:, 1::2] = torch.cos(pos * den)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("pe", pe)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D)
        return self.dropout(x + self.pe[: x.shape[1]])


class TorchSeq2Seq(nn.Module):
    """``torch.nn.Transformer`` + embeddings + the tutorial's encoding + output projection."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        d = cfg.d_model
        self.src_emb, self.tgt_emb = nn.Embedding(cfg.vocab, d), nn.Embedding(cfg.vocab, d)
        self.pos = TutorialPositionalEncoding(d, cfg.dropout)
        self.transformer = nn.Transformer(
            d, cfg.heads, cfg.layers, cfg.layers, cfg.ff, cfg.dropout, batch_first=True
        )
        self.generator = nn.Linear(d, cfg.vocab)
        self.scale = math.sqrt(d)

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1], device=tgt.device)
        x = self.pos(self.src_emb(src) * self.scale)
        y = self.pos(self.tgt_emb(tgt) * self.scale)
        return self.generator(self.transformer(x, y, tgt_mask=mask, tgt_is_causal=True))  # (B, T, V)


def build(system: str, cfg: Config) -> nn.Module:
    """A freshly initialised model of ``system`` for ``cfg`` (seeded, so runs are repeatable)."""
    torch.manual_seed(0)
    if system.startswith("posenc"):
        from posenc.models import Seq2Seq, Seq2SeqConfig

        model = Seq2Seq(Seq2SeqConfig(
            src_vocab_size=cfg.vocab, tgt_vocab_size=cfg.vocab, d_model=cfg.d_model, num_heads=cfg.heads,
            num_encoder_layers=cfg.layers, num_decoder_layers=cfg.layers, dim_feedforward=cfg.ff,
            dropout=cfg.dropout, activation="relu", norm_first=False, encoding="sinusoidal", tie_output=False,
        ))
        if "fast" in system:
            from posenc.fast import use_fast_path

            use_fast_path(model)
        return model
    if system == "torch":
        return TorchSeq2Seq(cfg)
    if system in ("xtransformers", "xtransformers+flash"):
        try:
            from x_transformers import XTransformer
        except ImportError as err:
            raise SystemExit('system "xtransformers" needs the bench extra: pip install -e ".[bench]" '
                             "(or leave it out of --systems)") from err

        common = dict(depth=cfg.layers, heads=cfg.heads, num_tokens=cfg.vocab, attn_dropout=cfg.dropout,
                      ff_dropout=cfg.dropout, emb_dropout=cfg.dropout, attn_flash=system.endswith("+flash"),
                      scaled_sinu_pos_emb=True)
        kw = {f"enc_{k}": v for k, v in common.items()} | {f"dec_{k}": v for k, v in common.items()}
        return XTransformer(dim=cfg.d_model, enc_max_seq_len=cfg.length, dec_max_seq_len=cfg.length + 1, **kw)
    raise ValueError(f"unknown system {system!r}; valid: posenc, posenc+fast, posenc+compile, posenc+fast+compile, torch, xtransformers, xtransformers+flash")


def make_step(
    system: str, cfg: Config, precision: str, adam: str = "fused", device: torch.device | str = "cpu"
) -> tuple[Callable[[Tensor, Tensor], float], nn.Module]:
    """One training step ``(src (B,S), tgt (B,T+1)) -> loss`` of ``system`` on ``device``: forward, backward,
    Adam. On a GPU the step returns with its work queued: time it with :func:`_common.sync`."""
    device = torch.device(device)
    model = build(system, cfg).to(device).train()
    opt_kw = {"fused": True} if adam == "fused" else {"foreach": adam == "foreach"}
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, **opt_kw)
    forward: Callable[[Tensor, Tensor], Tensor]
    if system.startswith("xtransformers"):
        def forward(src: Tensor, tgt: Tensor) -> Tensor:
            return model(src, tgt)  # the wrapper shifts tgt and returns the mean cross-entropy
    else:
        net = torch.compile(model) if "compile" in system else model

        def forward(src: Tensor, tgt: Tensor) -> Tensor:
            logits = net(src, tgt[:, :-1])  # (B, T, V)
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt[:, 1:].reshape(-1))

    def step(src: Tensor, tgt: Tensor) -> float:
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        with ctx:
            loss = forward(src, tgt)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step, model


def batch(cfg: Config, seed: int = 0, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Source ``(B, S)`` and target ``(B, T+1)`` ids in [1, V): no padding, so no system masks padding. Drawn on
    the CPU (the same ids on every device), then moved to ``device``."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(1, cfg.vocab, (cfg.batch, cfg.length), generator=g)
    tgt = torch.randint(1, cfg.vocab, (cfg.batch, cfg.length + 1), generator=g)
    return src.to(device), tgt.to(device)


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def add_step_options(ap, *, system: str, config: str, precision: str) -> None:
    """``--system``, ``--config``, ``--precision`` and ``--threads``: which one training step a script looks at."""
    ap.add_argument("--system", default=system, help="posenc, posenc+fast, posenc+compile, torch, xtransformers")
    ap.add_argument("--config", choices=sorted(CONFIGS), default=config)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default=precision)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")


def warm_step(args, warmup: int = 2) -> tuple[Callable[[Tensor, Tensor], float], Tensor, Tensor, Config]:
    """The training step picked by :func:`add_step_options`, its batch and config, after ``warmup`` steps."""
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = CONFIGS[args.config]
    src, tgt = batch(cfg)
    step, _ = make_step(args.system, cfg, args.precision)
    for _ in range(warmup):
        step(src, tgt)
    return step, src, tgt, cfg
