"""Both backends satisfy shared/train/interfaces.py: the parallel modules have the Parallel protocol's
functions with its exact signatures (so the two mirror each other), and the Models and Trainers
have every member the shared code calls, with compatible signatures. One process, tiny models."""
from __future__ import annotations

import importlib
import inspect

import pytest

from convert.backends import NAMES, load_backend
from shared.train import interfaces
from shared.spec.config import RunConfig

PACKAGES = {"mlx": "ternary_mlx", "torch": "ternary_cuda"}
TINY = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=1",
        "model.num_attention_heads=2", "model.num_key_value_heads=1", "ternary.group_size=16",
        "data.tokenizer=bytes", "model.vocab_size=256"]


def _members(protocol) -> list[str]:
    """The protocol's own methods (not typing.Protocol's machinery)."""
    return sorted(n for n, v in vars(protocol).items()
                  if inspect.isfunction(v) and (not n.startswith("_") or n == "__call__"))


def _params(fn, drop_self: bool) -> list[tuple[str, object, object]]:
    ps = list(inspect.signature(fn).parameters.values())
    return [(p.name, p.kind, p.default) for p in (ps[1:] if drop_self else ps)]


@pytest.mark.parametrize("name", NAMES)
def test_parallel_module_has_the_protocols_functions_and_signatures(name):
    module = importlib.import_module(f"{PACKAGES[name]}.parallel")
    assert isinstance(module, interfaces.Parallel)
    for fn in _members(interfaces.Parallel):
        assert callable(getattr(module, fn, None)), f"{module.__name__}.{fn} is missing"
        # the same parameter names, kinds and defaults: the two modules agree with each other too
        assert _params(getattr(module, fn), False) == _params(getattr(interfaces.Parallel, fn), True), \
            f"{module.__name__}.{fn}{inspect.signature(getattr(module, fn))} is not the protocol's"


def _compatible(impl, proto_fn) -> bool:
    """`impl` (bound) takes every parameter of the protocol's method, by the same name and kind;
    any parameter it adds has a default."""
    got = {p.name: p for p in inspect.signature(impl).parameters.values()}
    want = _params(proto_fn, True)
    if any(n not in got or got[n].kind != kind or got[n].default != default for n, kind, default in want):
        return False
    return all(p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for n, p in got.items() if n not in {w[0] for w in want})


@pytest.mark.parametrize("name", NAMES)
def test_model_and_trainer_have_the_protocols_members(name):
    backend = load_backend(name)
    cfg = RunConfig().with_overrides(TINY)
    model = backend.Model(cfg, seed=0)
    trainer = backend.Trainer(cfg, backend.Model(cfg, seed=0))
    for obj, protocol in ((model, interfaces.Model), (trainer, interfaces.Trainer)):
        assert isinstance(obj, protocol), f"{type(obj).__module__}.{type(obj).__name__}"
        for fn in _members(protocol):
            if fn == "__call__":  # torch's nn.Module.__call__ takes (*args, **kwargs); forward has the ids
                impl = getattr(obj, "forward", obj)
                want = [(n, default) for n, _, default in _params(protocol.__call__, True)]
                assert want[0] == ("input_ids", inspect.Parameter.empty) and len(want) == 4  # + layer_keep, with_aux, cache
                assert [(p.name, p.default) for p in inspect.signature(impl).parameters.values()] == want
                continue
            assert _compatible(getattr(obj, fn), getattr(protocol, fn)), \
                f"{type(obj).__name__}.{fn}{inspect.signature(getattr(obj, fn))}"
    # the classes are built as shared/train/runner.py builds them
    assert _compatible(backend.Model, interfaces.ModelClass.__call__)
    assert _compatible(backend.Trainer, interfaces.TrainerClass.__call__)
    assert isinstance(backend.parallel, interfaces.Parallel)
