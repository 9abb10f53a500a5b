"""Block plug-ins in PyTorch (mirrors ternary_mlx/blocks/): one module per plug-in, named as its
declaration in shared/spec/reference_blocks/, each with `Block(cfg)` (see shared/spec/blocks.py)."""
from __future__ import annotations

from shared.spec.blocks import HOOK_POINTS, backend_blocks


class BlockHooks:
    """The active plug-ins of a config. Built by the decoder, which gets each block as the submodule
    model.NAME (its parameters' canonical names); the decoder calls the four hook points."""

    def __init__(self, decoder, cfg):
        self.at = {point: [] for point in HOOK_POINTS}
        for plugin, module in backend_blocks(cfg.model, __name__):
            if hasattr(decoder, plugin.name):  # a plug-in must not replace a part of the model
                raise ValueError(f"block plug-in {plugin.name!r}: the decoder already has a {plugin.name!r}")
            block = module.Block(cfg)
            setattr(decoder, plugin.name, block)
            for point in plugin.hooks:
                self.at[point].append(getattr(block, point))

    def _run(self, point, x, ids, i):
        for hook in self.at[point]:
            x = hook(x, ids, i)
        return x

    def embedding(self, x, ids):
        return self._run("embedding", x, ids, None)

    def stream(self, x, ids):
        return self._run("stream", x, ids, None)

    def layer_input(self, x, ids, i):
        return self._run("layer_input", x, ids, i)

    def layer_output(self, x, ids, i):
        return self._run("layer_output", x, ids, i)
