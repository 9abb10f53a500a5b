"""Block plug-ins in MLX (mirrors ternary_cuda/blocks/): one module per plug-in, named as its
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

    def _run(self, point, x, ids, i, cache=None):
        if cache is not None and self.at[point]:
            return self._replay(point, x, i, cache)
        for hook in self.at[point]:
            x = hook(x, ids, i)
        return x

    def _replay(self, point, x, i, cache):
        """Under a KV cache (decoding): the hooks read earlier tokens' ids or hidden states, so they
        run on this point's whole input history (kept by the cache) with every id so far; their
        outputs at the new positions are the full forward's, since every plug-in is causal."""
        T = x.shape[1]
        x = cache.history((point, i), x)
        for hook in self.at[point]:
            x = hook(x, cache.ids, i)
        return x[:, -T:]

    def embedding(self, x, ids, cache=None):
        return self._run("embedding", x, ids, None, cache)

    def stream(self, x, ids, cache=None):
        return self._run("stream", x, ids, None, cache)

    def layer_input(self, x, ids, i, cache=None):
        return self._run("layer_input", x, ids, i, cache)

    def layer_output(self, x, ids, i, cache=None):
        return self._run("layer_output", x, ids, i, cache)
