"""Block plug-ins: a new block or branch added without editing the model files.

A plug-in named NAME is three files and one variant-table row (docs/plugins.md has a worked example):
  shared/spec/reference_blocks/NAME.py   `PLUGIN = BlockPlugin(...)`: its option rows (ModelOption,
                                         exactly as in shared/spec/options.py) and the hook points
                                         it acts at; and the float64 NumPy reference of each hook
  ternary_mlx/blocks/NAME.py             `Block(cfg)`, an mlx.nn.Module with one method per hook
  ternary_cuda/blocks/NAME.py            the same in PyTorch (the mirror of the MLX file)
  tests/variants.py                      a row that turns it on (the parity suites run over it)

The option rows join OPTIONS (after the built-in ones, plug-ins in name order), so the config
fields, parameter specs (init, roles, optimizer groups, ternary targets), the option table and the
exporters' refusals follow from them as from any option. Every parameter a plug-in declares is
model scope and named `model.NAME.*`: the backends attach `Block(cfg)` to the decoder as
`model.NAME`, so the module tree and the canonical names agree. A plug-in is active when any of its
options is off its default.

The model files call each hook point once, at a fixed place (the same in both backends and the
reference); every active plug-in acting there runs, in name order:
  embedding     after the token lookup (and embed_proj), before embed_norm: x is part of x0
  stream        after embed_norm: what it returns is x0, the first layer's input
  layer_input   before layer i (after a U-Net skip is added), i = 0 .. L-1
  layer_output  after layer i (before a U-Net encoder layer pushes it)
A hook takes (x, ids, i) (i: the layer index, None at the two model-level points), x the residual
stream (B, T, hidden), ids the input token ids (B, T), and returns the new stream. The reference's
hooks take (x, ids, i, fp) with fp the reference's pass (shared/spec/reference_model.py: weights
as used, `linear`).
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.spec.config import ModelConfig

HOOK_POINTS = ("embedding", "stream", "layer_input", "layer_output")
REFERENCE_PACKAGE = "shared.spec.reference_blocks"


@dataclass(frozen=True)
class BlockPlugin:
    name: str            # the module name in each package, and the parameter prefix model.NAME.
    options: tuple       # its ModelOption rows (shared/spec/options.py)
    hooks: tuple         # the hook points it acts at (HOOK_POINTS)
    doc: str = ""        # one line: what it is, where it comes from

    def active(self, m: "ModelConfig") -> bool:
        return any(not o.is_default(getattr(m, o.key)) for o in self.options)


def _check(plugin: Any, module_name: str) -> BlockPlugin:
    where = f"{REFERENCE_PACKAGE}.{module_name}"
    if not isinstance(plugin, BlockPlugin):
        raise TypeError(f"{where}: defines no PLUGIN = BlockPlugin(...)")
    if plugin.name != module_name:
        raise ValueError(f"{where}: PLUGIN.name is {plugin.name!r}; it must be the module's name")
    bad = [h for h in plugin.hooks if h not in HOOK_POINTS]
    if bad or not plugin.hooks:
        raise ValueError(f"{where}: hooks {bad or '()'} are not hook points ({', '.join(HOOK_POINTS)})")
    for o in plugin.options:
        for v in (o.default, o.example):
            for r in o.params(v):
                if r.scope != "model" or not r.suffix.startswith(f"model.{plugin.name}."):
                    raise ValueError(f"{where}: parameter {r.suffix!r} must be model scope and named "
                                     f"model.{plugin.name}.* (the backends attach the block there)")
    return plugin


@functools.cache
def plugins() -> tuple[BlockPlugin, ...]:
    """Every plug-in under shared/spec/reference_blocks/, in name order."""
    package = importlib.import_module(REFERENCE_PACKAGE)
    names = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))
    return tuple(_check(getattr(importlib.import_module(f"{REFERENCE_PACKAGE}.{n}"), "PLUGIN", None), n)
                 for n in names)


def plugin_options() -> tuple:
    """The plug-ins' option rows, to follow the built-in rows of OPTIONS."""
    return tuple(o for p in plugins() for o in p.options)


def active_plugins(m: "ModelConfig") -> list[BlockPlugin]:
    return [p for p in plugins() if p.active(m)]


def backend_blocks(m: "ModelConfig", package: str) -> list[tuple[BlockPlugin, Any]]:
    """(plug-in, its module in the backend `package`, e.g. "ternary_mlx.blocks") for each active one."""
    out = []
    for p in active_plugins(m):
        try:
            module = importlib.import_module(f"{package}.{p.name}")
        except ModuleNotFoundError as e:
            if e.name != f"{package}.{p.name}":
                raise
            raise NotImplementedError(f"block plug-in {p.name!r} has no {package.replace('.', '/')}/{p.name}.py "
                                      "(a plug-in needs both backends)") from None
        out.append((p, module))
    return out


def reference_hook(point: str, x, ids, i, fp):
    """The reference's hook point `point`: every active plug-in's reference hook there, in order."""
    for p in active_plugins(fp.cfg.model):
        if point in p.hooks:
            x = getattr(importlib.import_module(f"{REFERENCE_PACKAGE}.{p.name}"), point)(x, ids, i, fp)
    return x
