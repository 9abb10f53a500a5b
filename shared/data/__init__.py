"""Tokens for training and evaluation.

tokenizers (built-in, SentencePiece and Hugging Face tokenizers, training), corpus (the embedded
synthetic Markov corpus with a known entropy rate), dataset (token shards, `data prepare`, loading a
dataset), shard_stream (a split's shards as one token sequence that is never loaded whole),
text_stream (`data prepare` reading, tokenizing and writing in pieces), loader (the resumable
training-window loader), batching (inputs and shifted targets),
checks (token-id range checks), metrics (bits per byte and the byte accounting).
"""
