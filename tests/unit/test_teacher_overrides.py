"""--teacher beside --set overrides of the train.teacher_* keys (shared/train/runner.py)."""
from __future__ import annotations


def test_teacher_dtype_override_is_not_a_second_teacher(tmp_path):
    """--teacher with --set train.teacher_dtype=... is one teacher, not two (the old check matched the
    prefix "train.teacher"); --set train.teacher=... with --teacher is still refused."""
    import pytest
    from shared.spec.config import ConfigError
    from shared.train.runner import TrainOptions, _teacher_overrides
    (tmp_path / "manifest.json").write_text("{}")
    opts = TrainOptions(teacher=tmp_path, overrides=['train.teacher_dtype="bfloat16"'])
    assert _teacher_overrides(opts) == ['train.teacher_dtype="bfloat16"', f"train.teacher={tmp_path.resolve()}"]
    with pytest.raises(ConfigError, match="both name a teacher"):
        _teacher_overrides(TrainOptions(teacher=tmp_path, overrides=[f"train.teacher = {tmp_path}"]))
