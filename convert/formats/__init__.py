"""Checkpoint formats in and out.

hf_import (Hugging Face Qwen3/Llama directories or hub ids -> a checkpoint), packed (the canonical
copy and the packed single-file artifact: base-3 codes, scales, floats), packed_codecs (its int8
float rule and compressors), packed_estimate (its size without writing it), lazy_weights (a
checkpoint's tensors read one at a time, for big models), hf_export (Hugging Face float Qwen3 and mlx-lm 2-bit), hf_tokenizer
(their tokenizer files), hf_bitnet (transformers' BitNet AutoBitLinear), gguf_export (llama.cpp
TQ2_0 / TQ1_0) and gguf_vocab (its tokenizer metadata), support (which stock formats a config
exports to), inspect_ckpt (a checkpoint's report: parameters by role, code statistics, the size in
every format).
"""
