"""The one batch format every dataset yields and the trainer consumes.

Legend: B batch, S source length, T target length. Padding uses the tokenizer's ``pad_id``; a target equal to
``pad_id`` is ignored by the loss (nothing to predict there).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

__all__ = ["Batch"]


@dataclass
class Batch:
    """Token ids of one batch.

    ``src`` is the encoder input of a sequence-to-sequence task (None for a decoder-only model); ``inputs`` the
    decoder (or language model) input; ``targets`` what each input position must predict; ``lengths`` the task
    length of each example (exact match by length), when the data has one.
    """

    inputs: Tensor  # (B, T) long
    targets: Tensor  # (B, T) long, pad_id where ignored
    src: Tensor | None = None  # (B, S) long
    lengths: Tensor | None = None  # (B,) long

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: (None if (v := getattr(self, f.name)) is None else v.to(device)) for f in fields(self)})

    @property
    def size(self) -> int:
        return self.inputs.shape[0]
