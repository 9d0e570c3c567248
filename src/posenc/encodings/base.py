"""The positional-encoding protocol and the registry of encodings by name.

Every encoding is an ``nn.Module`` with up to three hooks. Attention calls them without knowing which
encoding it holds, and never branches on an encoding's name:

* ``embed(x, positions)`` -- absolute encodings act on the token embeddings (add or concatenate);
* ``rotate(q, k, q_pos, k_pos)`` -- multiplicative encodings rotate queries and keys (RoPE, xPos);
* ``bias(q_pos, k_pos)`` -- additive encodings return a logits bias ``(H, Tq, Tk)`` or ``(B, H, Tq, Tk)``
  (ALiBi, T5, Kerple, FIRE).

Four smaller hooks serve the families that need them: ``prepare_positions`` lets an encoding replace the
positions of a whole forward pass once (randomized positions); ``content_bias`` adds a logits bias that depends
on the queries (Shaw et al.'s relative keys, q_i . a_ij); ``value_term`` adds a term computed from the attention
weights (Shaw et al.'s relative values; attention then takes its plain math path); ``causal_attention`` lets an
encoding compute causal self-attention without dropout itself when it knows an exact, cheaper way (Shaw again).

The defaults are identities, so the base class *is* NoPE. Positions are explicit integer tensors,
``(T,)`` or ``(B, T)``, everywhere.

Legend: B batch, H heads, T length (Tq queries, Tk keys), D model width, Dh head width.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._checks import bool_word

__all__ = [
    "CONTEXT_KEYS",
    "PositionalEncoding",
    "build",
    "build_per_layer",
    "kept_dtype",
    "made_for_inference_only",
    "names",
    "options",
    "parse_layers",
    "parse_spec",
    "register",
]

# Keywords a model hands to ``build`` about itself. An encoding takes the ones it needs; the others are ignored.
CONTEXT_KEYS = frozenset({"d_model", "num_heads", "head_dim", "causal"})

_REGISTRY: dict[str, type[PositionalEncoding]] = {}


def made_for_inference_only(t: Tensor) -> bool:
    """Whether ``t`` was made under ``torch.inference_mode()`` and that mode is now off: autograd cannot save such
    a tensor for backward, so a table cached during an evaluation pass must be rebuilt before it serves training."""
    return t.is_inference() and not torch.is_inference_mode_enabled()


def kept_dtype(converted: torch.dtype) -> torch.dtype:
    """The dtype a constant buffer is kept in once a conversion made it ``converted``: float64 stays, anything else
    is float32 (a half-precision copy would round it)."""
    return torch.float64 if converted == torch.float64 else torch.float32


class PositionalEncoding(nn.Module):
    """Base class of every encoding; on its own it is NoPE (no positional information at all)."""

    name: ClassVar[str] = "none"
    #: True when attention must store keys *before* ``rotate`` and re-rotate the whole cache each step
    #: (encodings whose rotation depends on the current length, e.g. dynamic NTK).
    rotate_after_cache: ClassVar[bool] = False
    #: Non-persistent buffers computed from a formula and rebuilt on demand (sin/cos tables). A conversion
    #: (``.to``, ``.half()``, ``.float()``, ``.cuda()``) empties them: cast to half and back they would keep
    #: half's rounding, while an empty one is computed again, exactly, at the next call.
    rebuilt_buffers: ClassVar[tuple[str, ...]] = ()

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> PositionalEncoding:
        """Every conversion goes through here: empty ``rebuilt_buffers``, convert, then ``_after_conversion``."""
        for name in self.rebuilt_buffers:
            old = getattr(self, name)
            setattr(self, name, torch.empty((0, *old.shape[1:]), dtype=old.dtype, device=old.device))
        out = super()._apply(fn, recurse)
        self._after_conversion()
        return out

    def _after_conversion(self) -> None:
        """Make again, on their new device, the small constant buffers a conversion may have rounded (a round trip
        through half precision would leave them rounded): in float64 after ``.double()``, else float32 (see
        :func:`kept_dtype`). Nothing here."""

    # -- the three hooks ---------------------------------------------------------------------------------
    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        """Token embeddings ``(B, T, D_in)`` -> ``(B, T, D)``. Identity by default."""
        return x

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        """Queries ``(B, H, Tq, Dh)`` and keys ``(B, H, Tk, Dh)`` -> the same shapes. Identity by default."""
        return q, k

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        """Additive logits bias ``(H, Tq, Tk)`` (or ``(B, H, Tq, Tk)`` for batched positions), or None."""
        return None

    # -- the small extra hooks ---------------------------------------------------------------------------
    def prepare_positions(self, positions: Tensor) -> Tensor:
        """Called once per stack forward; may replace the positions every layer then sees."""
        return positions

    def content_bias(self, q: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        """A logits bias that depends on the queries ``(B, H, Tq, Dh)`` -> ``(B, H, Tq, Tk)``, or None.

        Added to the scaled logits like ``bias`` (so it carries its own 1/sqrt(Dh) where the formula has one);
        it still reaches the fused kernel as part of the float mask. Shaw et al.'s key term q_i . a^K_ij needs it:
        it cannot be a ``bias`` because it depends on the content of q, nor a ``rotate`` because a^K_ij depends
        on the pair (i, j), not on j alone.
        """
        return None

    def value_term(self, weights: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        """Extra output from attention weights ``(B, H, Tq, Tk)`` -> ``(B, H, Tq, Dh)``, or None."""
        return None

    def causal_attention(self, q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        """Causal self-attention with this encoding's terms, ``(B, H, T, Dh)`` each -> ``(B, H, T, Dh)``, or None.

        Attention asks this first only when there is no dropout and the mask is square, causal and nothing else,
        and does the work itself when it gets None. An encoding answers when it knows an exact way cheaper than
        the generic one (Shaw et al.'s terms are constant away from the diagonal, so most of the keys can go
        through the fused kernel without a mask); the result must be differentiable if gradients are enabled.
        """
        return None

    # -- what the encoding changes about the model -------------------------------------------------------
    def input_width(self, d_model: int) -> int:
        """Width of the token embeddings ``embed`` expects (less than ``d_model`` when concatenating)."""
        return d_model

    @property
    def uses_embed(self) -> bool:
        return type(self).embed is not PositionalEncoding.embed

    @property
    def uses_rotate(self) -> bool:
        return type(self).rotate is not PositionalEncoding.rotate

    @property
    def uses_bias(self) -> bool:
        return type(self).bias is not PositionalEncoding.bias

    @property
    def uses_content_bias(self) -> bool:
        return type(self).content_bias is not PositionalEncoding.content_bias

    @property
    def uses_value_term(self) -> bool:
        return type(self).value_term is not PositionalEncoding.value_term

    @property
    def uses_causal_attention(self) -> bool:
        return type(self).causal_attention is not PositionalEncoding.causal_attention

    @property
    def uses_prepare_positions(self) -> bool:
        return type(self).prepare_positions is not PositionalEncoding.prepare_positions

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


# -- registry ------------------------------------------------------------------------------------------------
def register(name: str) -> Callable[[type[PositionalEncoding]], type[PositionalEncoding]]:
    """Class decorator: make an encoding buildable as ``build(name, ...)``."""

    def deco(cls: type[PositionalEncoding]) -> type[PositionalEncoding]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"encoding name {name!r} is already registered to {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def names() -> list[str]:
    """The registered encoding names, sorted."""
    return sorted(_REGISTRY)


def _lookup(name: str) -> type[PositionalEncoding]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown positional encoding {name!r}; valid names: {', '.join(names())}") from None


def _parameters(cls: type[PositionalEncoding]) -> dict[str, inspect.Parameter]:
    sig = inspect.signature(cls.__init__)
    return {
        p.name: p
        for p in sig.parameters.values()
        if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def options(name: str) -> dict[str, Any]:
    """The user options of encoding ``name`` with their defaults (context keywords excluded)."""
    params = _parameters(_lookup(name))
    return {k: (None if p.default is p.empty else p.default) for k, p in params.items() if k not in CONTEXT_KEYS}


def _coerce(value: str, hint: Any, option: str = "?", spec: str = "?") -> Any:
    """Turn the text of a spec option into the type the constructor declares.

    Text that none of the declared types accepts is a ValueError here: passed on as a string, a misspelled
    boolean (``causal=flase``) would be truthy, and a number's constructor check would fail without its name.
    """
    low = value.strip().lower()
    if low in ("none", "null"):
        return None
    args = typing.get_args(hint) or (hint,)
    if bool in args and (truth := bool_word(value)) is not None:
        return truth
    for kind in (int, float):
        if kind in args:
            try:
                return kind(value)
            except ValueError:
                pass
    if str in args or typing.get_origin(hint) is typing.Literal:
        return value.strip()
    wanted = [kind for kind in (bool, int, float) if kind in args]
    if wanted:
        raise ValueError(_unreadable(value, wanted, option, spec))
    # Unannotated or unusual: best effort.
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            continue
    return value.strip()


def _unreadable(value: str, wanted: list[type], option: str, spec: str) -> str:
    """The message for option text that none of the ``wanted`` types reads."""
    kinds = {bool: "a boolean (true/false, 1/0, yes/no, on/off, any case)", int: "an int", float: "a number"}
    return (f"option {option!r} in encoding spec {spec!r} must be {' or '.join(kinds[k] for k in wanted)}, "
            f"got {value.strip()!r}")


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"rope:base=5e5,scaling=yarn"`` -> ``("rope", {"base": 500000.0, "scaling": "yarn"})``.

    Values take the type the encoding's constructor declares for them. A value in parentheses may itself hold
    commas and colons (a wrapped spec): ``"randomized:inner=(rope:base=5e5,fraction=0.5),max_len=4096"``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"an encoding spec must be a non-empty string like 'rope:base=10000', got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    cls = _lookup(name.strip())
    hints = typing.get_type_hints(cls.__init__)
    opts: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in _split_top_level(rest, spec))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise ValueError(f"option {item!r} in encoding spec {spec!r} must look like key=value")
        value = value.strip()
        if value.startswith("(") and value.endswith(")"):
            opts[key] = value[1:-1].strip()  # a nested spec, kept as text
        else:
            opts[key] = _coerce(value, hints.get(key), key, spec)
    return name.strip(), opts


def _split_top_level(text: str, spec: str) -> list[str]:
    """Split at the commas that are outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ')' in encoding spec {spec!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unbalanced '(' in encoding spec {spec!r}")
    parts.append(text[start:])
    return parts


def build(spec: str | PositionalEncoding, **kwargs: Any) -> PositionalEncoding:
    """Build an encoding from a name or spec string plus keyword options.

    ``kwargs`` may hold user options and the model's context (``d_model``, ``num_heads``, ``head_dim``,
    ``causal``); context an encoding does not take is ignored, an unknown option is a ``ValueError``
    that lists the valid ones. An already built module is returned as is.
    """
    if isinstance(spec, PositionalEncoding):
        return spec
    name, opts = parse_spec(spec)
    cls = _lookup(name)
    params = _parameters(cls)
    context = {k: v for k, v in kwargs.items() if k in CONTEXT_KEYS}
    user = {k: v for k, v in kwargs.items() if k not in CONTEXT_KEYS}
    for key in list(opts) + list(user):
        if key not in params:
            valid = ", ".join(sorted(options(name))) or "(none)"
            raise ValueError(f"encoding {name!r} has no option {key!r}; valid options: {valid}")
    merged = {k: v for k, v in context.items() if k in params}
    merged.update(opts)
    merged.update(user)
    missing = [k for k, p in params.items() if p.default is p.empty and k not in merged]
    if missing:
        raise ValueError(f"encoding {name!r} needs {', '.join(missing)} (give them as keyword arguments)")
    return cls(**merged)


def build_per_layer(
    spec: str | PositionalEncoding | Sequence[str | PositionalEncoding], num_layers: int, **context: Any
) -> list[PositionalEncoding]:
    """One encoding per layer of a stack.

    A single spec gives one module shared by every layer (one table per stack, as T5 does). A list gives
    one entry per layer; entries with the same spec string share one module.
    """
    if isinstance(spec, (str, PositionalEncoding)):
        shared = build(spec, **context)
        return [shared] * num_layers
    specs = list(spec)
    if len(specs) != num_layers:
        raise ValueError(f"got {len(specs)} per-layer encodings for a stack of {num_layers} layers")
    built: dict[str, PositionalEncoding] = {}
    out = []
    for s in specs:
        if isinstance(s, PositionalEncoding):
            out.append(s)
            continue
        if s not in built:
            built[s] = build(s, **context)
        out.append(built[s])
    return out


def parse_layers(text: str) -> str | list[str]:
    """The command-line form of a per-layer choice: ``"rope*3|none"`` -> ``["rope", "rope", "rope", "none"]``.

    Layers are separated by ``|``; ``spec*N`` repeats a spec N times. Text without ``|`` or ``*N`` is one spec
    shared by every layer and comes back unchanged.
    """
    parts = [p.strip() for p in text.split("|")]
    out: list[str] = []
    for part in parts:
        spec, star, count = part.rpartition("*")
        if star and count.strip().isdigit():
            n = int(count)
            if n < 1:
                raise ValueError(f"repeat count must be >= 1 in {part!r}")
            out.extend([spec.strip()] * n)
        else:
            out.append(part)
    if any(not p for p in out):
        raise ValueError(f"empty layer spec in {text!r}")
    return out[0] if len(parts) == 1 and len(out) == 1 else out


def default_positions(length: int, device: torch.device | None = None) -> Tensor:
    """``arange(length)``: the positions of a plain, unpadded sequence, ``(T,)``."""
    return torch.arange(length, device=device)
