"""Token-level models built by composition: ``Seq2Seq`` (encoder-decoder) and ``LanguageModel`` (decoder-only).

Both take token ids and return logits over the vocabulary; both take any registered encoding (or one per layer).
Token embeddings are scaled by sqrt(d_model) by default, as in the paper (section 3.4), so that a fixed encoding
of unit amplitude does not drown them; the output projection is tied to the (target) embedding when widths allow.

Legend: B batch, S source length, T target length, D model width, V vocabulary size.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor, nn

from ._checks import check_ids, check_positive_int
from .cache import StackCache
from .stacks import TransformerDecoder, TransformerEncoder

__all__ = ["LanguageModel", "LMConfig", "Seq2Seq", "Seq2SeqConfig"]


@dataclass
class LMConfig:
    """A decoder-only language model: a causal self-attention stack over token embeddings."""

    vocab_size: int
    d_model: int = 256
    num_heads: int = 4
    num_layers: int = 4
    dim_feedforward: int = 1024
    dropout: float = 0.1
    activation: str = "gelu"
    norm_first: bool = True
    encoding: str | list[str] = "rope"
    tie_embeddings: bool = True
    scale_embeddings: bool = True
    pad_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Seq2SeqConfig:
    """An encoder-decoder model; ``encoding`` serves both stacks unless ``decoder_encoding`` is given."""

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 256
    num_heads: int = 4
    num_encoder_layers: int = 3
    num_decoder_layers: int = 3
    dim_feedforward: int = 1024
    dropout: float = 0.1
    activation: str = "relu"
    norm_first: bool = True
    encoding: str | list[str] = "sinusoidal"
    decoder_encoding: str | list[str] | None = None
    share_embeddings: bool = False
    tie_output: bool = True
    scale_embeddings: bool = True
    pad_id: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_pad_id(pad_id: Any, vocabularies: dict[str, int], *, optional: bool) -> None:
    """``pad_id`` an id of every vocabulary it pads: one outside them could never match a token, and padding
    would silently never be masked."""
    if pad_id is None and optional:
        return
    if isinstance(pad_id, bool) or not isinstance(pad_id, numbers.Integral):
        raise TypeError(f"pad_id must be an int{' or None' if optional else ''}, got {type(pad_id).__name__} "
                        f"{pad_id!r}")
    for name, size in vocabularies.items():
        if not 0 <= pad_id < size:
            raise ValueError(f"pad_id={pad_id} is not an id of the {name} of {size} tokens")


def _embedding(vocab: int, width: int) -> nn.Embedding:
    emb = nn.Embedding(vocab, width)
    nn.init.normal_(emb.weight, std=width**-0.5)  # unit variance after the sqrt(d) scale
    return emb


def _init_linear_weights(module: nn.Module) -> None:
    """Xavier-uniform for every matrix of the stacks (as the reference implementations do)."""
    for name, p in module.named_parameters():
        if p.dim() > 1 and "encoding" not in name:
            nn.init.xavier_uniform_(p)


class LanguageModel(nn.Module):
    """Decoder-only causal language model: ids ``(B, T)`` -> logits ``(B, T, V)``."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        check_positive_int("vocab_size", config.vocab_size)
        _check_pad_id(config.pad_id, {"vocabulary": config.vocab_size}, optional=True)
        self.config = config
        self.stack = TransformerEncoder(
            d_model=config.d_model, nhead=config.num_heads, num_layers=config.num_layers,
            dim_feedforward=config.dim_feedforward, dropout=config.dropout, activation=config.activation,
            positional_encoding=config.encoding, norm_first=config.norm_first, causal=True,
        )
        _init_linear_weights(self.stack)
        self.embedding = _embedding(config.vocab_size, self.stack.input_width)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings and self.stack.input_width == config.d_model:
            self.lm_head.weight = self.embedding.weight
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embeddings else 1.0

    def padding_mask(self, ids: Tensor) -> Tensor | None:
        return None if self.config.pad_id is None else ids == self.config.pad_id

    def forward(
        self,
        ids: Tensor,
        *,
        positions: Tensor | None = None,
        padding_mask: Tensor | None = None,
        cache: StackCache | None = None,
    ) -> Tensor:
        """Logits for every position. ``padding_mask`` (True = pad) defaults to ``ids == pad_id``."""
        check_ids("ids", ids, self.config.vocab_size)
        if ids.dim() == 1:
            ids = ids[None]
        if padding_mask is None:
            padding_mask = self.padding_mask(ids)
        x = self.embedding(ids) * self.embed_scale  # (B, T, D)
        h = self.stack(x, src_key_padding_mask=padding_mask, positions=positions, cache=cache)
        return self.lm_head(h)  # (B, T, V)

    def new_cache(self) -> StackCache:
        return self.stack.new_cache()


class Seq2Seq(nn.Module):
    """Encoder-decoder model: source ids ``(B, S)`` and target ids ``(B, T)`` -> logits ``(B, T, V)``."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        check_positive_int("src_vocab_size", config.src_vocab_size)
        check_positive_int("tgt_vocab_size", config.tgt_vocab_size)
        check_positive_int("num_encoder_layers", config.num_encoder_layers)
        check_positive_int("num_decoder_layers", config.num_decoder_layers)
        _check_pad_id(config.pad_id, {"source vocabulary": config.src_vocab_size,
                                      "target vocabulary": config.tgt_vocab_size}, optional=False)
        self.config = config
        common = dict(
            d_model=config.d_model, nhead=config.num_heads, dim_feedforward=config.dim_feedforward,
            dropout=config.dropout, activation=config.activation, norm_first=config.norm_first,
        )
        dec_spec = config.encoding if config.decoder_encoding is None else config.decoder_encoding
        self.encoder = TransformerEncoder(num_layers=config.num_encoder_layers, positional_encoding=config.encoding, **common)
        self.decoder = TransformerDecoder(
            num_layers=config.num_decoder_layers, positional_encoding=dec_spec, causal=True, **common
        )
        _init_linear_weights(self.encoder)
        _init_linear_weights(self.decoder)
        self.src_embedding = _embedding(config.src_vocab_size, self.encoder.input_width)
        if config.share_embeddings:
            if config.src_vocab_size != config.tgt_vocab_size or self.encoder.input_width != self.decoder.input_width:
                raise ValueError(
                    f"share_embeddings needs equal vocabularies and widths; got vocab {config.src_vocab_size} vs "
                    f"{config.tgt_vocab_size}, width {self.encoder.input_width} vs {self.decoder.input_width}"
                )
            self.tgt_embedding = self.src_embedding
        else:
            self.tgt_embedding = _embedding(config.tgt_vocab_size, self.decoder.input_width)
        self.out_proj = nn.Linear(config.d_model, config.tgt_vocab_size, bias=False)
        if config.tie_output and self.decoder.input_width == config.d_model:
            self.out_proj.weight = self.tgt_embedding.weight
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embeddings else 1.0

    def encode(
        self, src: Tensor, *, src_padding_mask: Tensor | None = None, src_positions: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Source ids -> (memory ``(B, S, D)``, source padding mask or None)."""
        check_ids("src", src, self.config.src_vocab_size)
        if src.dim() == 1:
            src = src[None]
        if src_padding_mask is None:
            src_padding_mask = src == self.config.pad_id
        pad = src_padding_mask if bool(src_padding_mask.any()) else None
        x = self.src_embedding(src) * self.embed_scale
        return self.encoder(x, src_key_padding_mask=pad, positions=src_positions), pad

    def decode(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_padding_mask: Tensor | None = None,
        *,
        tgt_padding_mask: Tensor | None = None,
        tgt_positions: Tensor | None = None,
        cache: StackCache | None = None,
    ) -> Tensor:
        """Target ids (the decoder input, shifted right) -> logits ``(B, T, V)``."""
        check_ids("tgt", tgt, self.config.tgt_vocab_size)
        if tgt.dim() == 1:
            tgt = tgt[None]
        if tgt.shape[0] != memory.shape[0]:
            raise ValueError(f"the batch size of src ({memory.shape[0]}) and tgt ({tgt.shape[0]}) must be equal")
        y = self.tgt_embedding(tgt) * self.embed_scale
        h = self.decoder(
            y, memory, tgt_key_padding_mask=tgt_padding_mask, memory_key_padding_mask=memory_padding_mask,
            positions=tgt_positions, cache=cache,
        )
        return self.out_proj(h)

    def forward(
        self,
        src: Tensor,
        tgt: Tensor,
        *,
        src_padding_mask: Tensor | None = None,
        tgt_padding_mask: Tensor | None = None,
        src_positions: Tensor | None = None,
        tgt_positions: Tensor | None = None,
    ) -> Tensor:
        memory, pad = self.encode(src, src_padding_mask=src_padding_mask, src_positions=src_positions)
        return self.decode(
            tgt, memory, pad, tgt_padding_mask=tgt_padding_mask, tgt_positions=tgt_positions
        )

    def new_cache(self) -> StackCache:
        return self.decoder.new_cache()
