"""`ternary inspect`: verify a checkpoint and report its config, parameters, ternary codes and export
sizes (convert/formats/inspect_ckpt.py)."""
from __future__ import annotations

from convert.common import sub


def run(args) -> int:
    from convert.formats import inspect_ckpt
    report = inspect_ckpt.inspect(args.path, measure_packed=not args.no_measure)
    print(inspect_ckpt.to_json(report) if args.json else inspect_ckpt.format_report(report))
    return 0 if report["manifest"] == "OK" else 2


def register(subs) -> None:
    p = sub(subs, "inspect", "Verify a checkpoint and report its config, parameters, ternary codes and export sizes.",
            "  ternary inspect runs/smoke-mlx\n"
            "  ternary inspect runs/smoke-mlx/checkpoint --json\n\n"
            "Codes and scales come from the reference projection (shared/spec/ternary.py) of the latent weights;\n"
            "the packed size is measured by building the `convert --to packed` file in memory (fp16 floats,\n"
            "and --floats int8 too when the model has float matrices such as an embedding).\n"
            "Exit status 2 when the manifest check fails (the report says why).", run)
    p.add_argument("path", metavar="PATH", help="a checkpoint directory, or a run directory holding checkpoint/")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-measure", action="store_true", help="skip building the LZMA packed files (slow on big models)")
