"""What `ternary eval` and `ternary generate` share: loading a checkpoint (a directory, a run directory
or a `convert --to packed` file) in a backend, its tokenizer, and their CKPT/--backend/--tokenizer/--no-ema
arguments."""
from __future__ import annotations

from pathlib import Path

from convert.backends import load_backend
from convert.common import CliError, backend_arg, checkpoint_dir, threads_arg


def load_model(path: str, backend, use_ema: bool):
    """(model, config, checkpoint dir, (evaluate, generate), "latent" | "ema", info line) for a
    checkpoint or run directory.

    When the run kept an EMA of the weights (train.ema_decay) and the checkpoint holds it, the EMA
    weights are used unless `use_ema` is False: they are what training evaluated. `backend`: a name,
    or a backend already loaded (convert/runtime.py's `start`)."""
    from shared.spec import checkpoint as fmt
    packed = Path(path).is_file()  # a `ternary convert --to packed` artifact: the round trip (S15)
    if packed:
        from convert.formats.packed import load_for_model
        ckpt = Path(path)
        cfg, packed_weights = load_for_model(ckpt)  # same codes; scales from fp16 (or --hadamard's W_eff)
    else:
        ckpt = checkpoint_dir(path)
    b = load_backend(backend) if isinstance(backend, str) else backend
    model, cfg = (b.new_model(cfg, packed_weights), cfg) if packed else b.load_checkpoint(ckpt)
    info = b.describe() + (f", blas: {b.blas}" if b.blas else "")
    functions = (b.evaluate.evaluate, b.generate.generate)
    if packed:
        from convert.formats.packed import describe
        return model, cfg, ckpt, functions, "packed", f"{info}; packed artifact ({describe(ckpt)})"
    weights, note = "latent", "latent weights"
    if cfg.train.ema_decay and use_ema:
        opt = fmt.read_optimizer(ckpt)
        names = list(model.numpy_weights())
        if opt is not None and all(f"{n}.ema" in opt[0] for n in names):
            model.load_numpy({n: opt[0][f"{n}.ema"] for n in names})
            weights = "ema"
            note = f"EMA weights (train.ema_decay={cfg.train.ema_decay:g}; --no-ema for the latent ones)"
    return model, cfg, ckpt, functions, weights, f"{info}; {note}"


def load_tokenizer(name: str | None, cfg):
    """The tokenizer `name` (--tokenizer; None: the model's data.tokenizer), refused if it has more tokens
    than the model's vocabulary or is not the tokenizer the model was trained with (as `train` refuses
    data tokenized with another): scores and samples through another tokenizer mean nothing."""
    import sys
    from shared.data.tokenizers import TokenizerError, get_tokenizer
    tok = get_tokenizer(name or cfg.data.tokenizer)
    if tok.vocab_size > cfg.model.vocab_size:
        raise CliError(f"tokenizer {tok.name!r} has {tok.vocab_size} tokens but the model's vocab_size is "
                       f"{cfg.model.vocab_size}")
    if name is not None and name != cfg.data.tokenizer:
        try:
            own = get_tokenizer(cfg.data.tokenizer)
        except TokenizerError as e:  # moved or deleted: --tokenizer is how to point at it again
            print(f"ternary: warning: --tokenizer {name} cannot be compared with the model's data.tokenizer "
                  f"({e})", file=sys.stderr)
            return tok
        if own.sha256 != tok.sha256:
            raise CliError(f"--tokenizer {name}: {tok.name!r} (sha256 {tok.sha256[:16]}...) is not the tokenizer "
                           f"the model was trained with, data.tokenizer {cfg.data.tokenizer} (sha256 "
                           f"{own.sha256[:16]}...); leave --tokenizer out")
    return tok


def add_ckpt_args(p) -> None:
    """CKPT, --backend, --tokenizer and --no-ema: the arguments of eval and generate."""
    p.add_argument("ckpt", metavar="CKPT", help="a checkpoint directory, or a run directory (its checkpoint/)")
    backend_arg(p, "runs the model")
    threads_arg(p)
    p.add_argument("--tokenizer", metavar="NAME_OR_PATH",
                   help="tokenizer (default: the checkpoint config's data.tokenizer)")
    p.add_argument("--no-ema", action="store_true",
                   help="with a run that kept an EMA of the weights, use the latent weights instead")
