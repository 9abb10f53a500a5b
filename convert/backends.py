"""The two backends behind one object: `load_backend("mlx" | "torch")`.

The only place of the command line that knows which package is which backend and what differs
between them (MLX's BLAS, torch's CUDA device and CPU threads, how each runs a forward pass);
the subcommands ask the object instead of branching on the name. `NAMES` and `backend_class`
need no framework, so argument parsing and the BLAS re-exec stay fast; `load_backend` imports
the backend's package and framework.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from shared.train.runner import Backend

PACKAGES = {"mlx": "ternary_mlx", "torch": "ternary_cuda"}
NAMES = tuple(PACKAGES)  # the --backend choices


@dataclass
class LoadedBackend(Backend):
    """shared.train.runner.Backend (name, Model, Trainer, version, parallel) plus the backend's modules
    and what the subcommands need to know about it."""
    checkpoint: Any = None  # save(model, cfg, path), load(path, ...) -> (model, cfg)
    evaluate: Any = None    # evaluate.evaluate(model, tokens, tokenizer, seq_len, ...)
    generate: Any = None    # generate.generate(model, tokenizer, prompt, n, ...)
    layers: Any = None      # layers.ternarize(w, group_size, eps)

    # Re-execute an MLX command with OpenBLAS preloaded (convert/blas.py): a class attribute, so
    # the command line can ask before anything is imported.
    fast_blas = False

    @property
    def device(self) -> str:
        """Where models built here run."""
        raise NotImplementedError

    @property
    def blas(self) -> str | None:
        """The BLAS the framework uses in this process, where that is worth saying (MLX)."""
        return None

    @property
    def cpu_threads(self) -> int | None:
        """The intra-op threads of a CPU run, where the framework reports them (torch)."""
        return None

    def describe(self) -> str:
        """'<name> <version>, <device>'."""
        return f"{self.name} {self.version}, {self.device}"

    def new_model(self, cfg, weights=None, seed: int = 0):
        """A Model on this backend's device."""
        raise NotImplementedError

    def load_checkpoint(self, ckpt) -> tuple[Any, Any]:
        """(model on this backend's device, config) of a checkpoint directory."""
        raise NotImplementedError

    def forward_fn(self, model, ids) -> Callable[[], Any]:
        """A function running one finished forward pass of `model` on the int ids (B, T)."""
        raise NotImplementedError

    def to_numpy(self, t):
        """A backend tensor as float32 NumPy."""
        raise NotImplementedError

    def parameters(self, model) -> dict[str, Any]:
        """Canonical name -> the backend's own tensor."""
        raise NotImplementedError

    def ternary_codes(self, w, group_size, eps):
        """The backend's ternarize of one of its tensors, as int8 NumPy."""
        raise NotImplementedError


class MLXBackend(LoadedBackend):
    fast_blas = True

    @property
    def device(self) -> str:
        import mlx.core as mx
        return str(mx.default_device())

    @property
    def blas(self) -> str | None:
        from convert import blas
        return blas.describe()

    def new_model(self, cfg, weights=None, seed: int = 0):
        return self.Model(cfg, weights, seed=seed)

    def load_checkpoint(self, ckpt):
        return self.checkpoint.load(ckpt)

    def forward_fn(self, model, ids):
        import mlx.core as mx
        import numpy as np
        x = mx.array(ids.astype(np.int32))

        def forward():
            out = model(x)
            mx.eval(out)
            return out
        return forward

    def to_numpy(self, t):
        import numpy as np
        return np.array(t)

    def parameters(self, model):
        from mlx.utils import tree_flatten
        return dict(tree_flatten(model.parameters()))

    def ternary_codes(self, w, group_size, eps):
        import numpy as np
        return np.array(self.layers.ternarize(w, group_size, eps)[0])


class TorchBackend(LoadedBackend):
    @property
    def device(self) -> str:
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def cpu_threads(self) -> int | None:
        import torch
        return torch.get_num_threads() if self.device == "cpu" else None

    def new_model(self, cfg, weights=None, seed: int = 0):
        return self.Model(cfg, weights, seed=seed, device=self.device)

    def load_checkpoint(self, ckpt):
        return self.checkpoint.load(ckpt, device=self.device)

    def forward_fn(self, model, ids):
        import torch
        device = self.device
        x = torch.from_numpy(ids).to(device)

        def forward():
            with torch.inference_mode():
                out = model(x)
            if device == "cuda":
                torch.cuda.synchronize()
            return out
        return forward

    def to_numpy(self, t):
        return t.float().cpu().numpy()

    def parameters(self, model):
        return dict(model.named_parameters())

    def ternary_codes(self, w, group_size, eps):
        return self.layers.ternarize(w.detach(), group_size, eps)[0].cpu().numpy()


_CLASSES = {"mlx": (MLXBackend, "mlx.core"), "torch": (TorchBackend, "torch")}  # and its framework module


def backend_class(name: str) -> type[LoadedBackend]:
    """The class of backend `name`, without importing anything."""
    if name not in _CLASSES:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(NAMES)}")
    return _CLASSES[name][0]


def load_backend(name: str) -> LoadedBackend:
    """Backend `name` with its modules imported: the Model and Trainer, checkpoint, evaluate,
    generate and layers modules and its data-parallel layer (shared.train.interfaces.Parallel)."""
    cls, framework = backend_class(name), _CLASSES[name][1]
    pkg = PACKAGES[name]

    def mod(m: str):
        return importlib.import_module(f"{pkg}.{m}")
    # the Trainer is looked up on the train module now, so a caller that replaced it there (a test
    # recording what the loop does) gets its own
    return cls(name, mod("model").Model, mod("train").Trainer, importlib.import_module(framework).__version__,
               parallel=mod("parallel"), checkpoint=mod("checkpoint"), evaluate=mod("evaluate"),
               generate=mod("generate"), layers=mod("layers"))
