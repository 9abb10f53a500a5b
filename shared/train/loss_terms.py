"""The terms a training step reports besides the loss and the gradient norm, in the order the
trainers return them and shared/train/loop.py names them in metrics.jsonl: the z-loss
(train.z_loss) and the experts' load-balancing loss (train.moe_aux_loss), each as the
coefficient times its term, i.e. what it adds to the objective."""
from __future__ import annotations


def extra_terms(t) -> tuple[str, ...]:
    """Names of the reported extra terms for TrainConfig `t` (empty: the step reports (loss, grad_norm))."""
    return (("z_loss",) if t.z_loss else ()) + (("moe_aux_loss",) if t.moe_aux_loss else ())

