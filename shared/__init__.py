"""The spec: everything that is not tensor-framework code (NumPy only; imports neither mlx nor torch).

- `shared.spec`: what a model is: the config, the presets, the option table, the parameter specs,
  the initial weights, the ternary projection, the NumPy reference model and the checkpoint format.
- `shared.data`: tokens: tokenizers, the synthetic corpus, token shards, the loader, batching and
  the bits-per-byte accounting.
- `shared.train`: the training run both backends share: the loop, the run directory (runner), the
  learning-rate schedule and optimizer rules, evaluation and sampling logic, the interfaces the
  backends implement, and promotion to GPU targets.
"""
