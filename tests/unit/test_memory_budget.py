"""The memory budget printed before the first step (shared/train/memory_budget.py), against a
hand computation for the tiny config."""
from __future__ import annotations

from shared.train.memory_budget import budget_line, memory_budget

from tests.variants import tiny_config

# The tiny config (vocab 256, hidden 64, intermediate 128, 2 layers, 4 query / 2 key-value heads of
# 16, tied), counted by hand: embedding 256 x 64 = 16,384; per layer q 64x64 + k 32x64 + v 32x64 +
# o 64x64 = 12,288, MLP 3 x 128x64 = 24,576, norms 64 + 64 + 16 + 16 = 160: 37,024 (ternary 36,864);
# final norm 64.
PARAMS = 16_384 + 2 * 37_024 + 64
TERNARY = 2 * 36_864
# per token and layer: 6 x 64 + 2 x (64 + 32) + 4 x 128 + 4 heads x seq_len 8 = 1,120 floats
ACT_FLOATS = 384 + 192 + 512 + 32


def test_budget_matches_hand_computation_with_bf16_teacher_and_chunks():
    cfg = tiny_config(train=dict(batch_size=2, seq_len=8, optimizer="adamw", loss_chunk_tokens=4,
                                 teacher_dtype="bfloat16"))
    b = memory_budget(cfg, cfg)
    assert b["weights"] == b["gradients"] == 4 * PARAMS == 4 * 90_496
    assert b["optimizer"] == 2 * 4 * PARAMS  # AdamW: exp_avg and exp_avg_sq
    assert b["ternary_weights"] == 4 * TERNARY
    assert b["teacher"] == 2 * PARAMS  # bfloat16
    assert b["activations"] == 4 * 16 * 2 * ACT_FLOATS  # 2 x 8 tokens, 2 layers
    assert b["logits"] == 4 * 4 * 256 * 5  # chunk of 4 tokens; student 3 + teacher 2 tensors
    assert b["total"] == 2_087_680


def test_budget_without_teacher_whole_batch_logits_and_ema():
    cfg = tiny_config(train=dict(batch_size=2, seq_len=8, optimizer="adamw", ema_decay=0.99))
    b = memory_budget(cfg)
    assert b["teacher"] == 0
    assert b["optimizer"] == 3 * 4 * PARAMS  # + the EMA slot
    assert b["logits"] == 4 * 16 * 256 * 3  # the whole micro-batch (loss_chunk_tokens 0)
    line = budget_line(cfg)
    assert line.startswith("memory budget (estimate, GiB): weights 0.00") and "16 of 16 tokens" in line



def test_budget_with_activation_checkpointing_keeps_layer_inputs_and_one_layer():
    """train.activation_checkpointing: each of the 2 layers' inputs (64 floats per token) plus one
    layer's whole set; the ternarized weights of one layer (no ternary matrix outside the layers)."""
    cfg = tiny_config(train=dict(batch_size=2, seq_len=8, optimizer="adamw", activation_checkpointing=True))
    b = memory_budget(cfg)
    assert b["activations"] == 4 * 16 * (2 * 64 + ACT_FLOATS)
    assert b["ternary_weights"] == 4 * TERNARY // 2
    assert "checkpointed" in budget_line(cfg)
