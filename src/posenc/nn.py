"""``posenc.nn.Transformer``: a drop-in for ``torch.nn.Transformer`` that has the positional encoding built in.

Same constructor and ``forward`` as torch's (inputs are embeddings; masks in torch's conventions; ``batch_first``
False by default, as in torch, so a swapped-in model reads the same ``(S, B, D)`` tensors; ``device`` and
``dtype``), plus ``positional_encoding`` and explicit ``src_positions`` / ``tgt_positions``; torch's
``custom_encoder`` / ``custom_decoder`` are not taken (the stacks are posenc's). ``Transformer.from_torch`` copies a
``torch.nn.Transformer``'s weights; with the encoding ``"none"`` the outputs then equal torch's.

Legend: B batch, S source length, T target length, D model width.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_rank
from .stacks import EncodingSpec, TransformerDecoder, TransformerEncoder

__all__ = ["Transformer", "TransformerDecoder", "TransformerEncoder"]


class Transformer(nn.Module):
    """Encoder-decoder Transformer (Vaswani et al. 2017) on embeddings, with a swappable positional encoding.

    Note, as in torch: the decoder is causal only through ``tgt_mask`` or ``tgt_is_causal=True``
    (``generate_square_subsequent_mask`` makes the mask). Its encodings are built for causal use.
    """

    def __init__(
        self,
        d_model: int = 512,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str | Callable[[Tensor], Tensor] = "relu",
        *,
        positional_encoding: EncodingSpec = "sinusoidal",
        decoder_positional_encoding: EncodingSpec | None = None,
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        common = dict(
            d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward, dropout=dropout, activation=activation,
            layer_norm_eps=layer_norm_eps, batch_first=batch_first, norm_first=norm_first, bias=bias,
        )
        dec_spec = positional_encoding if decoder_positional_encoding is None else decoder_positional_encoding
        self.encoder = TransformerEncoder(num_layers=num_encoder_layers, positional_encoding=positional_encoding, **common)
        self.decoder = TransformerDecoder(num_layers=num_decoder_layers, positional_encoding=dec_spec, **common)
        self.d_model, self.nhead, self.batch_first = d_model, nhead, batch_first
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    def forward(
        self,
        src: Tensor,
        tgt: Tensor,
        src_mask: Tensor | None = None,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        src_is_causal: bool | None = None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool = False,
        *,
        src_positions: Tensor | None = None,
        tgt_positions: Tensor | None = None,
    ) -> Tensor:
        """``src`` ``(S, B, D)`` and ``tgt`` ``(T, B, D)`` embeddings -> ``(T, B, D)``; ``(B, S, D)``,
        ``(B, T, D)`` -> ``(B, T, D)`` with ``batch_first=True``."""
        check_rank("src", src, 3)
        check_rank("tgt", tgt, 3)
        batch_dim = 0 if self.batch_first else 1
        if src.shape[batch_dim] != tgt.shape[batch_dim]:
            raise ValueError(
                f"the batch size of src ({src.shape[batch_dim]}) and tgt ({tgt.shape[batch_dim]}) must be equal"
            )
        memory = self.encoder(src, src_mask, src_key_padding_mask, src_is_causal, positions=src_positions)
        return self.decoder(
            tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask,
            tgt_is_causal, memory_is_causal, positions=tgt_positions,
        )

    @staticmethod
    def generate_square_subsequent_mask(size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """Float ``(size, size)`` mask: ``-inf`` above the diagonal, 0 elsewhere (as torch's)."""
        return torch.triu(torch.full((size, size), float("-inf"), device=device, dtype=dtype or torch.float32), diagonal=1)

    @classmethod
    def from_torch(cls, module: nn.Transformer, *, positional_encoding: EncodingSpec = "none") -> Transformer:
        """A posenc Transformer with the configuration and weights of ``torch.nn.Transformer`` ``module``."""
        if not isinstance(module, nn.Transformer):
            raise TypeError(f"from_torch needs a torch.nn.Transformer, got {type(module).__name__}")
        layer = module.encoder.layers[0]
        settings = _layer_settings(layer)
        for i, other in enumerate(_layer_settings(x) for x in [*module.encoder.layers, *module.decoder.layers]):
            differ = {k: (v, other[k]) for k, v in settings.items() if other[k] != v}
            if differ:
                raise ValueError(f"from_torch needs every layer to share the first encoder layer's settings; layer {i} "
                                 f"(encoder layers first) differs: {differ}")
        for name, stack in (("encoder", module.encoder), ("decoder", module.decoder)):
            if stack.norm is None or stack.norm.eps != layer.norm1.eps:
                raise ValueError(f"from_torch needs the {name}'s final LayerNorm with the layers' eps "
                                 f"({layer.norm1.eps}); got {stack.norm}")
        out = cls(
            module.d_model, module.nhead, len(module.encoder.layers), len(module.decoder.layers),
            layer.linear1.out_features, layer.dropout.p, _activation(layer.activation),
            positional_encoding=positional_encoding, layer_norm_eps=layer.norm1.eps,
            batch_first=module.batch_first, norm_first=layer.norm_first, bias=layer.linear1.bias is not None,
        )
        for stack in (out.encoder, out.decoder):  # torch's stacks drop nothing on their input; posenc's would
            stack.dropout.p = 0.0
        weight = layer.linear1.weight
        out = out.to(device=weight.device, dtype=weight.dtype)  # before the copy: float64 weights stay exact
        state = {_torch_to_posenc(k): v for k, v in module.state_dict().items()}
        missing, unexpected = out.load_state_dict(state, strict=False)
        missing = [m for m in missing if ".encoding." not in m]
        if missing or unexpected:
            raise ValueError(f"weights did not map: missing {missing}, unexpected {unexpected}")
        return out


def _activation(act: object) -> object:
    """torch's layer activation as posenc takes it: its F.relu / F.gelu by name, any other callable (a module such
    as ``nn.GELU(approximate="tanh")`` or ``nn.PReLU()``) as it is."""
    if act is F.relu:
        return "relu"
    if act is F.gelu:
        return "gelu"
    return act


def _layer_settings(layer: nn.Module) -> dict[str, object]:
    act = layer.activation
    return {"norm_first": layer.norm_first, "layer_norm_eps": layer.norm1.eps, "dropout": layer.dropout.p,
            "dim_feedforward": layer.linear1.out_features, "bias": layer.linear1.bias is not None,
            "activation": (type(act).__name__, getattr(act, "approximate", None))
            if isinstance(act, nn.Module) else act}


def _torch_to_posenc(name: str) -> str:
    """``encoder.layers.0.self_attn.in_proj_weight`` -> ``encoder.layers.0.self_attn.in_proj.weight`` etc."""
    name = name.replace("multihead_attn.", "cross_attn.")
    name = name.replace(".in_proj_weight", ".in_proj.weight").replace(".in_proj_bias", ".in_proj.bias")
    name = name.replace(".linear1.", ".ff.linear1.").replace(".linear2.", ".ff.linear2.")
    name = name.replace(".activation.", ".ff.activation.")  # a module activation's parameters (nn.PReLU)
    return name
