"""`ternary inspect`: verify a checkpoint and report its config, parameters, ternary codes and export
sizes (convert/formats/inspect_ckpt.py)."""
from __future__ import annotations

from convert.common import CliError, sub


def run(args) -> int:
    from convert.formats import inspect_ckpt
    if args.measure and args.no_measure:
        raise CliError("--measure and --no-measure exclude each other")
    packed = "measure" if args.measure else "skip" if args.no_measure else "estimate"
    report = inspect_ckpt.inspect(args.path, packed=packed)
    print(inspect_ckpt.to_json(report) if args.json else inspect_ckpt.format_report(report))
    return 0 if report["manifest"] == "OK" else 2


def register(subs) -> None:
    p = sub(subs, "inspect", "Verify a checkpoint and report its config, parameters, ternary codes and export sizes.",
            "  ternary inspect runs/smoke-mlx\n"
            "  ternary inspect runs/smoke-mlx/checkpoint --json\n"
            "  ternary inspect runs/smoke-mlx --measure     (build the packed files: exact sizes)\n\n"
            "Codes and scales come from the reference projection (shared/spec/ternary.py) of the latent weights;\n"
            "the packed size is that of `convert --to packed` with its default compression (fp16 floats, and\n"
            "--floats int8 too when the model has float matrices such as an embedding), estimated: exact raw\n"
            "sizes and header, the compression ratio from about 1 MB of each section (within 2% of the real\n"
            "file on the tested models; seconds for Qwen3-0.6B); --measure builds the files in memory instead\n"
            "(as long as `convert --to packed` takes, twice with --floats int8).\n"
            "Exit status 2 when the manifest check fails (the report says why).", run)
    p.add_argument("path", metavar="PATH", help="a checkpoint directory, or a run directory holding checkpoint/")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--measure", action="store_true",
                   help="build the packed files in memory and report their exact sizes (slow on big models)")
    p.add_argument("--no-measure", action="store_true", help="leave out the packed sizes (neither estimated nor measured)")
