"""What a model is, backend-neutral.

config (RunConfig and its sections, TOML/JSON, overrides, validation), presets (the named configs),
options (each model option declared once), params (every parameter's spec: name, shape, role, init,
decay, optimizer group, ternary target), init (initial weights from a seed), ternary (the NumPy
reference of the projection and base-3 packing), reference_model (the float64 NumPy forward pass),
checkpoint (the checkpoint directory format, atomic writes, verified reads), ownership (what a
--force / --overwrite may replace: only what the command itself wrote).
"""
