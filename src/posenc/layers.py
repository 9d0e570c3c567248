"""The position-wise feed-forward network and the encoder and decoder layers (Vaswani et al. 2017, section 3).

    FFN(x) = W2 · dropout(activation(W1 x + b1)) + b2

Post-norm (the paper, ``norm_first=False``): x = LayerNorm(x + Dropout(Sublayer(x))).
Pre-norm (``norm_first=True``, more stable for deep stacks): x = x + Dropout(Sublayer(LayerNorm(x))).
Parameter names follow ``torch.nn.TransformerEncoderLayer`` / ``TransformerDecoderLayer`` where they can.

Legend: B batch, T target length, S source length, D model width.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import AttentionMask, MultiHeadAttention
from .cache import LayerCache
from .dropout import FastDropout, representable
from .encodings.base import PositionalEncoding
from .fused_feedforward import relu_dropout_feedforward

__all__ = ["DecoderLayer", "EncoderLayer", "FeedForward", "activation_fn"]

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}


def activation_fn(activation: str | Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    if callable(activation):
        return activation
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)} or a callable; got {activation!r}")
    return _ACTIVATIONS[activation]


def has_hooks(m: nn.Module) -> bool:
    """Whether ``m`` has forward or backward hooks of its own (a fused path or a replaced module would skip them)."""
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _global_hooks() -> bool:
    """Whether a module hook is registered for every module (``torch.nn.modules.module.register_module_*``)."""
    g = torch.nn.modules.module
    return bool(g._global_forward_hooks or g._global_forward_pre_hooks or g._global_backward_hooks
                or g._global_backward_pre_hooks)


class FeedForward(nn.Module):
    """Two linear maps with an activation between them, applied at each position alike.

    On the fast path (``fast_dropout``, set by :func:`posenc.fast.use_fast_path`) a ReLU block in training runs
    as one node (:func:`posenc.fused_feedforward.relu_dropout_feedforward`): the same function, fewer passes
    and one hidden tensor kept instead of three. Hooks on the submodules, other activations or other linear
    modules keep the modules' own path.
    """

    def __init__(
        self, *, d_model: int, dim_feedforward: int, dropout: float = 0.1, activation: str | Callable = "relu", bias: bool = True
    ) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias)
        # A module (nn.PReLU(), say) is copied, as torch's layers copy theirs: each layer learns its own.
        self.activation = copy.deepcopy(activation) if isinstance(activation, nn.Module) else activation_fn(activation)
        self.fast_dropout = False  # the fast path's fused ReLU-dropout block (posenc.fast.use_fast_path)

    def _fuses(self) -> bool:
        """Whether this training call takes the fused ReLU-dropout node: plain ``nn.Linear`` maps, ReLU, a
        dropout in training mode that the 16-bit mask can draw, and no hook on any of the parts nor a global
        module hook (the node would bypass them)."""
        act = self.activation
        relu = act is F.relu or type(act) is nn.ReLU
        parts = (self.linear1, self.linear2, self.dropout) + ((act,) if isinstance(act, nn.Module) else ())
        drop = self.dropout
        return (self.fast_dropout and relu and type(drop) in (nn.Dropout, FastDropout) and drop.training
                and representable(drop.p) and all(type(m) is nn.Linear for m in parts[:2])
                and not any(has_hooks(m) for m in parts) and not _global_hooks())

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self._fuses():
            l1, l2 = self.linear1, self.linear2
            return relu_dropout_feedforward(x, l1.weight, l1.bias, l2.weight, l2.bias, p=self.dropout.p)
        h = self.activation(self.linear1(x))
        return self.linear2(self.dropout(h) if self.training else h)  # (B, T, D)


class EncoderLayer(nn.Module):
    """Self-attention and feed-forward, each in a residual block; causal when used in a decoder-only model."""

    def __init__(
        self,
        *,
        d_model: int,
        num_heads: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str | Callable = "relu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
        encoding: PositionalEncoding | None = None,
    ) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(
            d_model=d_model, num_heads=num_heads, dropout=dropout, bias=bias, encoding=encoding
        )
        self.ff = FeedForward(
            d_model=d_model, dim_feedforward=dim_feedforward, dropout=dropout, activation=activation, bias=bias
        )
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(
        self,
        x: Tensor,
        *,
        mask: AttentionMask | None = None,
        q_pos: Tensor | None = None,
        k_pos: Tensor | None = None,
        cache: LayerCache | None = None,
    ) -> Tensor:
        train = self.training  # dropout is the identity outside training: skip the calls (decoding is per step)

        def sa(h: Tensor) -> Tensor:
            out = self.self_attn(h, mask=mask, q_pos=q_pos, k_pos=k_pos, cache=cache)
            return self.dropout1(out) if train else out

        def ff(h: Tensor) -> Tensor:
            return self.dropout2(self.ff(h)) if train else self.ff(h)

        if self.norm_first:
            x = x + sa(self.norm1(x))
            return x + ff(self.norm2(x))
        x = self.norm1(x + sa(x))
        return self.norm2(x + ff(x))  # (B, T, D)


class DecoderLayer(nn.Module):
    """Self-attention over the target, cross-attention over the memory, feed-forward; three residual blocks."""

    def __init__(
        self,
        *,
        d_model: int,
        num_heads: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str | Callable = "relu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
        encoding: PositionalEncoding | None = None,
    ) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(
            d_model=d_model, num_heads=num_heads, dropout=dropout, bias=bias, encoding=encoding
        )
        self.cross_attn = MultiHeadAttention(d_model=d_model, num_heads=num_heads, dropout=dropout, bias=bias, cross=True)
        self.ff = FeedForward(
            d_model=d_model, dim_feedforward=dim_feedforward, dropout=dropout, activation=activation, bias=bias
        )
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm3 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None,
        *,
        self_mask: AttentionMask | None = None,
        memory_mask: AttentionMask | None = None,
        q_pos: Tensor | None = None,
        k_pos: Tensor | None = None,
        cache: LayerCache | None = None,
    ) -> Tensor:
        train = self.training  # dropout is the identity outside training: skip the calls (decoding is per step)

        def sa(h: Tensor) -> Tensor:
            out = self.self_attn(h, mask=self_mask, q_pos=q_pos, k_pos=k_pos, cache=cache)
            return self.dropout1(out) if train else out

        def ca(h: Tensor) -> Tensor:
            out = self.cross_attn(h, memory, mask=memory_mask, cache=cache)
            return self.dropout2(out) if train else out

        def ff(h: Tensor) -> Tensor:
            return self.dropout3(self.ff(h)) if train else self.ff(h)

        if self.norm_first:
            x = x + sa(self.norm1(x))
            x = x + ca(self.norm2(x))
            return x + ff(self.norm3(x))
        x = self.norm1(x + sa(x))
        x = self.norm2(x + ca(x))
        return self.norm3(x + ff(x))  # (B, T, D)
