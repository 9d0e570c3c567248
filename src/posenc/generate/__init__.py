"""Generation over a KV cache for every positional encoding: greedy, sampling, beam search.

    from posenc.generate import generate, translate, beam_search
    new_tokens = generate(lm, [[5, 9, 2], [7]], max_new_tokens=20, eos_id=1)                 # greedy
    samples = generate(lm, prompts, max_new_tokens=20, strategy="sample", top_p=0.9, seed=0)
    targets = translate(s2s, [[4, 8, 15, 3]], bos_id=1, eos_id=2, max_len=50, strategy="beam")
    nbest = beam_search(s2s, sources, bos_id=1, eos_id=2, max_new_tokens=50, beam_size=5, num_return=3)

Every step feeds one token a sequence through the model's cache (``posenc.cache``): positions continue from
each sequence's real tokens, so cached decoding gives the logits of an uncached forward for every encoding.
"""

from __future__ import annotations

from .api import Strategy, beam_search, generate, translate
from .beam import Hypothesis
from .sampling import filter_logits

__all__ = ["Hypothesis", "Strategy", "beam_search", "filter_logits", "generate", "translate"]
