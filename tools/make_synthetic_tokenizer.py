"""Regenerate the built-in tokenizer `synthetic-bpe-512` (shared/data/tokenizer_files/synthetic-bpe-512.model).

    python tools/make_synthetic_tokenizer.py [--out DIR]

Trains a SentencePiece BPE model (parameter-golf settings: byte fallback, split digits, nmt_nfkc,
no dummy prefix, pad/bos/eos/unk = 0/1/2/3; vocab 512) on the first 2,000,000 bytes of the
synthetic corpus's train stream, SyntheticCorpus(seed=0), cut into sentences of at most 4192 bytes
at spaces. Single-threaded training makes the output byte-for-byte reproducible for a given
sentencepiece version (the file was made with sentencepiece 0.2.3). Prints the file's sha256, which
must match BUILTIN_TOKENIZERS["synthetic-bpe-512"].sha256 in shared/data/tokenizers.py.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.data.corpus import SyntheticCorpus  # noqa: E402
from shared.data.tokenizers import TOKENIZER_FILES, train_sentencepiece_from_sentences  # noqa: E402

NAME = "synthetic-bpe-512"
VOCAB_SIZE = 512
TRAIN_BYTES = 2_000_000
SENTENCEPIECE_VERSION = "0.2.3"


def make(out_dir: Path) -> Path:
    text = SyntheticCorpus(seed=0).generate(TRAIN_BYTES, "train")
    return train_sentencepiece_from_sentences([text], VOCAB_SIZE, out_dir / NAME)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--out", type=Path, default=TOKENIZER_FILES, help="output directory")
    args = ap.parse_args(argv)
    path = make(args.out)
    (args.out / f"{NAME}.vocab").unlink(missing_ok=True)  # the .model file is all that ships
    print(f"{path}  sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
