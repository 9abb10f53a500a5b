"""The log lines about train.optimizer_state_dtype (shared/train/runner.py::optimizer_state_notes)."""
from shared.spec.config import RunConfig
from shared.train.runner import optimizer_state_notes


def _cfg(dtype: str, beta2: float = 0.95) -> RunConfig:
    return RunConfig().with_overrides([f"train.optimizer_state_dtype={dtype}", f"train.beta2={beta2}"])


def test_a_resume_that_changes_the_dtype_says_how_the_moments_are_converted():
    assert optimizer_state_notes(_cfg("float32"), _cfg("float32")) == []
    assert optimizer_state_notes(_cfg("bfloat16"), None) == []
    (down,) = optimizer_state_notes(_cfg("bfloat16"), _cfg("float32"))
    assert "float32 moments are converted to bfloat16 (rounded to nearest even)" in down
    (up,) = optimizer_state_notes(_cfg("float32"), _cfg("bfloat16"))
    assert "bfloat16 moments are converted to float32 (exactly)" in up


def test_bfloat16_moments_with_a_beta2_near_one_get_a_note():
    assert optimizer_state_notes(_cfg("bfloat16", 0.95), None) == []
    assert optimizer_state_notes(_cfg("float32", 0.999), None) == []
    (note,) = optimizer_state_notes(_cfg("bfloat16", 0.99), None)
    assert note.startswith("note: train.beta2 = 0.99 with bfloat16 moments")
