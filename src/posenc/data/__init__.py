"""Data: tokenizers, built-in synthetic tasks, text and parallel-corpus datasets, and batching."""
