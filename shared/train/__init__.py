"""The training run, shared by both backends.

runner (a run directory: config, resume/init, data, teacher, summary), run_dir (whether a run may
write a directory, --overwrite, and its lock), loop (the step loop and its
guards), trainer_common (what both trainers share), schedule (learning-rate multipliers),
optim_rules (which optimizer treats which parameter, per-step scalars), evaluation and generation
(backend-neutral parts of scoring and sampling), promote (scaling a config to a GPU target).
"""
