"""Encoder and decoder stacks: drop-ins for ``torch.nn.TransformerEncoder`` / ``TransformerDecoder``.

The constructors and ``forward`` arguments follow torch's (masks in its conventions, ``batch_first``), plus a
``positional_encoding`` (a registered name, a spec like ``"rope:base=5e5"``, a built module, or a list with one
entry per layer) and explicit ``positions``. Inputs are embeddings, as in torch; the stack applies the encoding.

Positions default to ``arange(T)``; with a bool key-padding mask they count each sequence's real tokens, so a
left-padded sequence starts at position 0; with a cache they continue from the cached tokens.

Legend: B batch, T target length, S source length, D model width, H heads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ._checks import check_divisible, check_positions, check_positive_int, check_rank
from .attention import AttentionMask, build_mask
from .cache import StackCache
from .encodings import PositionalEncoding, build_per_layer
from .layers import DecoderLayer, EncoderLayer

__all__ = ["EncodingSpec", "TransformerDecoder", "TransformerEncoder"]

EncodingSpec = str | PositionalEncoding | Sequence[str | PositionalEncoding]


def _positions(
    positions: Tensor | None, padding: Tensor | None, cache: StackCache | None, batch: int, length: int, device: torch.device
) -> Tensor:
    """The positions of the T new tokens: ``(T,)`` or ``(B, T)``."""
    if positions is not None:
        check_positions(positions)
        if positions.shape[-1] != length or (positions.dim() == 2 and positions.shape[0] != batch):
            raise ValueError(f"positions of shape {tuple(positions.shape)} do not match a ({batch}, {length}) input")
        return positions.to(device)
    if cache is not None:
        return cache.next_positions(padding, batch, length, device)
    if padding is not None:
        return ((~padding).long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T): real tokens counted
    return torch.arange(length, device=device)


def _bool_padding(mask: Tensor | None) -> Tensor | None:
    """The padded keys of a key padding mask: a bool mask's True entries, a float mask's -inf ones (a float mask's
    finite entries are a bias, not padding)."""
    if mask is None or mask.dtype == torch.bool:
        return mask
    return mask.isneginf() if mask.dtype.is_floating_point else None


class _Stack(nn.Module):
    """What encoder and decoder stacks share: the constructor (torch's arguments plus the encoding), per-layer
    encodings, positions, the input embedding hook."""

    layers: nn.ModuleList
    _layer_type: type[EncoderLayer] | type[DecoderLayer]
    _causal_in_use: bool  # the self-attention is causal whatever ``causal`` says (a decoder's)

    def __init__(
        self,
        *,
        d_model: int = 512,
        nhead: int = 8,
        num_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str | Callable = "relu",
        positional_encoding: EncodingSpec = "sinusoidal",
        layer_norm_eps: float = 1e-5,
        batch_first: bool = True,
        norm_first: bool = False,
        bias: bool = True,
        final_norm: bool = True,
        causal: bool = False,
    ) -> None:
        super().__init__()
        check_positive_int("dim_feedforward", dim_feedforward)  # 0 would build layers with no feed-forward block
        # A decoder's self-attention is causal in use, so its encodings are built for the causal case.
        encs = self._setup_encodings(positional_encoding, num_layers, d_model, nhead, causal or self._causal_in_use)
        self.layers = nn.ModuleList(
            self._layer_type(
                d_model=d_model, num_heads=nhead, dim_feedforward=dim_feedforward, dropout=dropout,
                activation=activation, norm_first=norm_first, layer_norm_eps=layer_norm_eps, bias=bias, encoding=e,
            )
            for e in encs
        )
        self.norm = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias) if final_norm else None
        self.dropout = nn.Dropout(dropout)
        self.batch_first, self.causal = batch_first, causal

    def _setup_encodings(self, spec: EncodingSpec, num_layers: int, d_model: int, nhead: int, causal: bool) -> list[PositionalEncoding]:
        check_positive_int("nhead", nhead)
        check_positive_int("d_model", d_model)
        check_positive_int("num_layers", num_layers)
        check_divisible("d_model", d_model, "nhead", nhead)
        encs = build_per_layer(spec, num_layers, d_model=d_model, num_heads=nhead, head_dim=d_model // nhead, causal=causal)
        # An absolute encoding acts on the input of the first layer that holds it, once: a module shared by
        # layers that are not adjacent (["sinusoidal", "none", "sinusoidal"] builds one) is not added again.
        self.embed_at = [i for i, e in enumerate(encs) if e.uses_embed and all(e is not encs[j] for j in range(i))]
        for i in self.embed_at:
            if i > 0 and encs[i].input_width(d_model) != d_model:
                raise ValueError(f"layer {i}: an encoding that changes the width ({encs[i].name}, concat) must be in layer 0")
        self.input_width = encs[0].input_width(d_model)
        self.d_model, self.nhead = d_model, nhead
        self._layer_encodings = encs
        return encs

    def _check_input(self, name: str, x: Tensor) -> Tensor:
        check_rank(name, x, 3)
        if not self.batch_first:
            x = x.transpose(0, 1)  # (T, B, D) -> (B, T, D)
        if x.shape[-1] != self.input_width:
            raise ValueError(f"{name} has width {x.shape[-1]}, expected {self.input_width} (d_model={self.d_model})")
        return x

    def _prepared(self, q_pos: Tensor, k_pos: Tensor) -> dict[int, tuple[Tensor, Tensor]]:
        """Each distinct encoding may replace the positions once per forward (randomized positions)."""
        out: dict[int, tuple[Tensor, Tensor]] = {}
        for enc in self._layer_encodings:
            if id(enc) in out:
                continue
            if enc.uses_prepare_positions:
                kp = enc.prepare_positions(k_pos)
                out[id(enc)] = (kp[..., kp.shape[-1] - q_pos.shape[-1]:], kp)  # the last Tq (none when Tq = 0)
            else:
                out[id(enc)] = (q_pos, k_pos)
        return out

    def _begin(
        self, x: Tensor, positions: Tensor | None, padding: Tensor | None, cache: StackCache | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Query positions, key positions and key padding of this forward (the cache is extended here)."""
        batch, length = x.shape[:2]
        if padding is not None and tuple(padding.shape) != (batch, length):
            raise ValueError(f"key padding mask must be (batch, length) = ({batch}, {length}), got {tuple(padding.shape)}")
        q_pos = _positions(positions, _bool_padding(padding), cache, batch, length, x.device)
        if cache is None:
            return q_pos, q_pos, padding
        if padding is not None and padding.dtype != torch.bool:
            raise ValueError(f"with a cache the key padding mask must be bool (True = padding), as the cache records "
                             f"it; got {padding.dtype} (for a 0 / -inf mask, pass mask.isneginf())")
        if q_pos.dim() == 1:
            q_pos = q_pos.expand(batch, length)
        k_pos, k_pad = cache.extend(q_pos, _bool_padding(padding))
        return q_pos, k_pos, k_pad

    def _walk(
        self, x: Tensor, prepared: dict[int, tuple[Tensor, Tensor]], step: Callable[[int, Tensor, Tensor, Tensor], Tensor]
    ) -> Tensor:
        """Run the layers: each distinct absolute encoding embeds at its first layer, dropout at the input."""
        for i in range(len(self.layers)):
            enc = self._layer_encodings[i]
            qp, kp = prepared[id(enc)]
            if i in self.embed_at:
                x = enc.embed(x, qp)
            if i == 0:
                x = self.dropout(x)  # on the sum of embeddings and encodings (paper, section 5.4)
            x = step(i, x, qp, kp)
        if self.norm is not None:
            x = self.norm(x)
        return x if self.batch_first else x.transpose(0, 1)

    def new_cache(self) -> StackCache:
        return StackCache.empty(len(self.layers))


class TransformerEncoder(_Stack):
    """A stack of self-attention layers: bidirectional, or causal (``causal=True``, a decoder-only model)."""

    _layer_type = EncoderLayer
    _causal_in_use = False

    def forward(
        self,
        src: Tensor,
        mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool | None = None,
        *,
        positions: Tensor | None = None,
        cache: StackCache | None = None,
    ) -> Tensor:
        """``src`` ``(B, T, D_in)`` embeddings -> ``(B, T, D)``. ``is_causal`` adds a causal mask."""
        x = self._check_input("src", src)
        q_pos, k_pos, k_pad = self._begin(x, positions, src_key_padding_mask, cache)
        amask = build_mask(
            mask, k_pad, causal=self.causal or bool(is_causal), batch=x.shape[0], heads=self.nhead,
            q_len=x.shape[1], k_len=k_pos.shape[-1], device=x.device,
        )

        def step(i: int, h: Tensor, qp: Tensor, kp: Tensor) -> Tensor:
            layer_cache = None if cache is None else cache.layers[i]
            return self.layers[i](h, mask=amask, q_pos=qp, k_pos=kp, cache=layer_cache)

        return self._walk(x, self._prepared(q_pos, k_pos), step)


class TransformerDecoder(_Stack):
    """Decoder layers: self-attention over the target (causal via ``tgt_mask`` / ``tgt_is_causal`` as in torch,
    or always with ``causal=True``), cross-attention over the encoder's memory, feed-forward."""

    _layer_type = DecoderLayer
    _causal_in_use = True

    def _memory_mask(
        self, memory_mask: Tensor | None, padding: Tensor | None, is_causal: bool, cache: StackCache | None, *,
        batch: int, q_len: int, k_len: int, device: torch.device,
    ) -> AttentionMask | None:
        """The cross-attention mask. While decoding step by step it is the same at every step (one query over the
        same source padding), so the cache keeps it instead of building it again each step."""
        def build() -> AttentionMask | None:
            return build_mask(
                memory_mask, padding, causal=bool(is_causal), batch=batch, heads=self.nhead, q_len=q_len, k_len=k_len,
                device=device,
            )

        if cache is None or memory_mask is not None or is_causal:
            return build()
        key = (batch, q_len, k_len)
        memo = cache.memory_mask
        if memo is not None and memo[0] is padding and memo[1] == key:
            return memo[2]
        mask = build()
        cache.memory_mask = (padding, key, mask)
        return mask

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool = False,
        *,
        positions: Tensor | None = None,
        cache: StackCache | None = None,
    ) -> Tensor:
        """``tgt`` ``(B, T, D_in)``, ``memory`` ``(B, S, D)`` -> ``(B, T, D)``."""
        x = self._check_input("tgt", tgt)
        check_rank("memory", memory, 3)
        mem = memory if self.batch_first else memory.transpose(0, 1)
        if mem.shape[0] != x.shape[0]:
            raise ValueError(f"tgt has batch size {x.shape[0]} but memory has {mem.shape[0]}")
        batch, length = x.shape[:2]
        if memory_is_causal and memory_mask is not None:
            memory_is_causal = False  # a hint that memory_mask is causal, as torch reads it: the mask given is used
        if memory_is_causal and cache is not None:
            raise ValueError("memory_is_causal with a cache: a step's queries cannot be placed against the memory; "
                             "pass the memory_mask rows of the step's positions instead")
        q_pos, k_pos, k_pad = self._begin(x, positions, tgt_key_padding_mask, cache)
        self_mask = build_mask(
            tgt_mask, k_pad, causal=self.causal or bool(tgt_is_causal), batch=batch, heads=self.nhead,
            q_len=length, k_len=k_pos.shape[-1], device=x.device,
        )
        mem_mask = self._memory_mask(
            memory_mask, memory_key_padding_mask, memory_is_causal, cache, batch=batch, q_len=length, k_len=mem.shape[1],
            device=x.device,
        )

        def step(i: int, h: Tensor, qp: Tensor, kp: Tensor) -> Tensor:
            layer_cache = None if cache is None else cache.layers[i]
            return self.layers[i](
                h, mem, self_mask=self_mask, memory_mask=mem_mask, q_pos=qp, k_pos=kp, cache=layer_cache
            )

        return self._walk(x, self._prepared(q_pos, k_pos), step)
