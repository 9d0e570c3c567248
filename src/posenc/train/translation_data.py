"""``data.kind = "translation"``: the parallel-corpus dataset of ``posenc.data.translation`` built from a
``RunConfig`` (imported on demand by ``build_dataset``, so the trainer works without the translation pipeline).

``data.train_files`` (and ``valid_files``, ``test_files``) are one TSV file or a source file and a target file;
the joint BPE vocabulary has ``data.bpe_vocab_size`` entries; pairs longer than ``data.max_len`` tokens are
skipped and reported; batches hold at most ``data.max_tokens`` padded tokens.
"""

from __future__ import annotations

from ..data.dataset import Dataset
from ..data.tokenizers import Tokenizer
from ..data.translation import TranslationConfig, TranslationDataset
from .config import RunConfig
from .run import register_dataset

__all__ = ["translation_dataset"]


def translation_dataset(cfg: RunConfig, tokenizer: Tokenizer | None) -> Dataset:
    d = cfg.data
    if cfg.model.kind != "seq2seq":
        raise ValueError(f"translation needs model.kind 'seq2seq', got {cfg.model.kind!r}")
    if not d.train_files:
        raise ValueError("data.kind 'translation' needs data.train_files: one TSV file, or a source and a target file")
    evals = {name: files for name, files in (("valid", d.valid_files), ("test", d.test_files)) if files}
    tcfg = TranslationConfig(train=list(d.train_files), eval=evals, vocab_size=d.bpe_vocab_size, max_len=d.max_len,
                             max_tokens=d.max_tokens, seed=cfg.train.seed)
    return TranslationDataset.build(tcfg, tokenizer=tokenizer)  # type: ignore[arg-type]


register_dataset("translation", translation_dataset)
