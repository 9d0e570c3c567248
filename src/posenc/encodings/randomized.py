"""Randomized positional encodings (Ruoss et al., ACL 2023, "Randomized Positional Encodings Boost Length
Generalization of Transformers").

Wraps any encoding. In training, a sequence of n tokens takes n distinct positions sampled uniformly from
``[0, max_len)`` without replacement and sorted, so that the model sees the large positions it will meet on long
test sequences while training on short ones; in evaluation (``model.eval()``) the positions are the plain ones.
(The authors' code samples in evaluation too; posenc keeps evaluation deterministic and comparable.)

Positions that are not a plain range -- a left-padded or packed batch -- keep their structure: the sampled sorted
values are indexed by the original positions, so equal positions stay equal and order is kept. The samples come
from a generator the module owns, seeded by ``seed``: the same seed gives the same positions.

Spec form: the wrapped spec goes in parentheses when it has options of its own::

    randomized:inner=rope,max_len=2048
    randomized:inner=(rope:base=5e5,fraction=0.5),max_len=4096,seed=1

Python: ``Randomized(inner="alibi", max_len=2048, num_heads=8)`` or ``Randomized(inner=RoPE(head_dim=64))``.

Legend: B batch, T length.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._checks import check_positions, check_positive_int
from .base import PositionalEncoding, build, register

__all__ = ["Randomized"]


def _check_seed(seed: object) -> None:
    """The generator's seed: an int in the range torch.Generator.manual_seed takes (which would raise an unnamed
    RuntimeError)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"seed must lie in [-2**63, 2**64), got {seed}")


@register("randomized")
class Randomized(PositionalEncoding):
    """Train on sorted random positions from ``[0, max_len)``; every hook is the wrapped encoding's."""

    def __init__(
        self,
        *,
        inner: str | PositionalEncoding = "rope",
        max_len: int = 2048,
        seed: int = 0,
        d_model: int | None = None,
        num_heads: int | None = None,
        head_dim: int | None = None,
        causal: bool | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("max_len", max_len)
        _check_seed(seed)
        context: dict[str, Any] = {
            k: v for k, v in dict(d_model=d_model, num_heads=num_heads, head_dim=head_dim, causal=causal).items() if v is not None
        }
        self.inner = build(inner, **context)
        if isinstance(self.inner, Randomized):
            raise ValueError("randomized cannot wrap another randomized encoding")
        inner_len = getattr(self.inner, "max_len", None)  # a learned table: training samples from [0, max_len)
        if isinstance(inner_len, int) and inner_len < max_len:
            raise ValueError(f"randomized samples positions from [0, max_len={max_len}) but its inner "
                             f"{self.inner.name!r} holds {inner_len} positions; give the inner max_len >= {max_len} "
                             f"or randomized a max_len <= {inner_len}")
        self.max_len, self.seed = max_len, seed
        self.generator = torch.Generator().manual_seed(seed)
        self.rotate_after_cache = self.inner.rotate_after_cache

    def reset(self, seed: int | None = None) -> None:
        """Restart the sample sequence (from ``seed``, default the constructor's)."""
        self.generator.manual_seed(self.seed if seed is None else seed)

    def sample(self, n: int, rows: int = 1) -> Tensor:
        """``(rows, n)`` sorted distinct positions from ``[0, max_len)`` (CPU)."""
        if n > self.max_len:
            raise ValueError(
                f"cannot draw {n} distinct positions from [0, max_len={self.max_len}); raise max_len to at least {n}"
            )
        keys = torch.rand(rows, self.max_len, generator=self.generator)
        return keys.topk(n, dim=-1).indices.sort(dim=-1).values  # a uniform subset of size n, sorted

    def prepare_positions(self, positions: Tensor) -> Tensor:
        if not self.training or positions.numel() == 0:
            return self.inner.prepare_positions(positions)
        check_positions(positions)
        n = int(positions.max()) + 1
        if positions.dim() == 1:
            drawn = self.sample(n)[0].to(positions.device)  # (n,)
            out = drawn[positions]
        else:
            drawn = self.sample(n, positions.shape[0]).to(positions.device)  # (B, n)
            out = torch.gather(drawn, 1, positions)  # (B, T)
        return self.inner.prepare_positions(out)

    # -- every other hook is the inner encoding's ---------------------------------------------------------
    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        return self.inner.embed(x, positions)

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        return self.inner.rotate(q, k, q_pos, k_pos)

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        return self.inner.bias(q_pos, k_pos)

    def content_bias(self, q: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        return self.inner.content_bias(q, q_pos, k_pos)

    def value_term(self, weights: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        return self.inner.value_term(weights, q_pos, k_pos)

    def causal_attention(self, q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        return self.inner.causal_attention(q, k, v, q_pos, k_pos)

    def input_width(self, d_model: int) -> int:
        return self.inner.input_width(d_model)

    @property
    def uses_embed(self) -> bool:
        return self.inner.uses_embed

    @property
    def uses_rotate(self) -> bool:
        return self.inner.uses_rotate

    @property
    def uses_bias(self) -> bool:
        return self.inner.uses_bias

    @property
    def uses_content_bias(self) -> bool:
        return self.inner.uses_content_bias

    @property
    def uses_value_term(self) -> bool:
        return self.inner.uses_value_term

    @property
    def uses_causal_attention(self) -> bool:
        return self.inner.uses_causal_attention

    @property
    def uses_prepare_positions(self) -> bool:
        return True

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, seed={self.seed}"
