"""Block plug-ins: each module here declares one (`PLUGIN`, shared/spec/blocks.py) and holds its
float64 NumPy reference, one function per hook point (x, ids, i, fp) -> x."""
