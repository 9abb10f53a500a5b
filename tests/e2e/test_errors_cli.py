"""Issue 13, "one clear line, never a traceback": hostile or mistaken inputs through the real
`ternary` command line (a subprocess, as a user runs it). Each gets `ternary: error: ...` on one
line naming the user's path and key, exit 2, and changes nothing."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.unit.test_checkpoint_read import rehash
from tests.variants import tiny_sets

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = tiny_sets(data=dict(tokenizer="bytes", synthetic_train_bytes=100000, synthetic_val_bytes=20000),
                 train=dict(steps=4, batch_size=4, seq_len=32, eval_every=0, eval_tokens=2000, log_every=2))


def run(*args, cwd=ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convert.cli", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def assert_one_line_error(r: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2 and exactly one `ternary: error:` line on stderr holding every fragment; that line."""
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("ternary: error: ")]
    assert len(errors) == 1, r.stderr
    for f in fragments:
        assert f in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 4-step run directory (checkpoint with optimizer and trainer state), copied by the tests that damage it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    r = run("train", "--set", *TINY, "--no-progress", "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def copy_run(trained: Path, dest: Path) -> Path:
    shutil.copytree(trained, dest)
    return dest


# ---- damaged checkpoints -------------------------------------------------------------------------
@pytest.mark.parametrize("edit,fragment", [
    (lambda m: [], "a JSON list, expected an object"),
    (lambda m: {**m, "files": {k: {"sha256": v["sha256"]} for k, v in m["files"].items()}}, "a 'bytes' count"),
    (lambda m: {**m, "files": list(m["files"])}, "'files' is list"),
], ids=["[]", "no bytes", "files a list"])
def test_a_manifest_of_the_wrong_shape(trained, tmp_path, edit, fragment):
    ck = copy_run(trained, tmp_path / "run") / "checkpoint"
    mf = ck / "manifest.json"
    mf.write_text(json.dumps(edit(json.loads(mf.read_text()))))
    for cmd in (("eval", ck), ("generate", ck, "--prompt", "a")):
        assert_one_line_error(run(*cmd), f"{mf}: damaged manifest", fragment)


@pytest.mark.parametrize("file,text,fragment", [
    ("trainer_state.json", "{oops", "trainer_state.json: damaged"),
    ("trainer_state.json", "[]", "trainer_state.json: damaged (a JSON list"),  # was: resumed at step 0
    ("trainer_state.json", '{"step": "six"}', 'step must be a count (an integer >= 0), got "six"'),
    ("optimizer.json", "{oops", "optimizer.json: damaged"),
    ("optimizer.json", "[1]", "optimizer.json: damaged (a JSON list"),
], ids=["state not JSON", "state a list", "step a string", "optimizer not JSON", "optimizer a list"])
def test_resume_refuses_malformed_trainer_and_optimizer_state(trained, tmp_path, file, text, fragment):
    out = copy_run(trained, tmp_path / "run")
    (out / "checkpoint" / file).write_text(text)
    rehash(out / "checkpoint")
    before = (out / "metrics.jsonl").read_text()
    r = run("train", "--resume", out, "--set", "train.steps=6", "--no-progress")
    assert_one_line_error(r, str(out / "checkpoint" / file), fragment)
    assert (out / "metrics.jsonl").read_text() == before


def test_weights_with_nan_are_refused_by_every_command(trained, tmp_path):
    """Before: generate and convert --to packed succeeded, eval printed numbers (inf: a traceback),
    inspect reported code statistics of NaN and train --init trained from them."""
    ck = copy_run(trained, tmp_path / "run") / "checkpoint"
    name = "model.layers.0.mlp.up_proj.weight"
    from shared.spec.checkpoint import read_safetensors
    w = read_safetensors(ck / "model.safetensors")
    w[name][0, 0] = np.nan
    save_file(w, str(ck / "model.safetensors"), metadata={"format": "ternary-checkpoint"})
    rehash(ck)
    msg = f"{ck / 'model.safetensors'}: non-finite values in 1 tensor(s): {name} (1 NaN, 0 inf)"
    for cmd in (("eval", ck, "--backend", "mlx", "--max-tokens", "100"), ("eval", ck, "--backend", "torch", "--max-tokens", "100"),
                ("generate", ck, "--prompt", "the", "--max-new-tokens", "3"),
                ("convert", ck, "--to", "packed", "--out", tmp_path / "m.tpk"),
                ("convert", ck, "--to", "canonical", "--out", tmp_path / "canon"),
                ("demo", "--ckpt", ck, "--seq-len", "8"), ("inspect", ck, "--no-measure"),
                ("train", "--init", ck, "--set", "train.steps=2", "--no-progress", "--out", tmp_path / "ft")):
        assert_one_line_error(run(*cmd), msg)
    assert not (tmp_path / "m.tpk").exists() and not (tmp_path / "canon").exists()
    assert not (tmp_path / "ft" / "checkpoint").exists()


# ---- Ctrl-C during start-up ----------------------------------------------------------------------
# `python -m interrupt_at_import MODULE ENTRY ARGS` runs `python -m ENTRY ARGS` with a Ctrl-C at the
# moment MODULE is first imported, raised inside exec()'d source as a real one often is (dataclasses
# and namedtuple exec code while numpy, torch and mlx import, and CPython then remembers it). It is a
# module run with -m, as the entry points are, so that the interpreter exits the way theirs do.
INTERRUPT_AT_IMPORT = """
import importlib.abc, runpy, sys
module, entry, sys.argv = sys.argv[1], sys.argv[2], [sys.argv[2], *sys.argv[3:]]
class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == module:
            exec("raise KeyboardInterrupt")
sys.meta_path.insert(0, Interrupt())
runpy.run_module(entry, run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("module,entry,args", [
    ("numpy", "convert.cli", ["--no-fast-blas", "eval", "runs/x"]),
    ("convert.commands", "convert.cli", ["presets"]),
    ("torch", "convert.cli", ["eval", "--backend", "torch", "runs/x"]),
    ("mlx.core", "convert.cli", ["--no-fast-blas", "generate", "--backend", "mlx", "runs/x", "--prompt", "a"]),
    ("numpy", "ternary_mlx.train", ["--no-progress"]),
    ("mlx.core", "ternary_mlx.train", ["--no-progress"]),
    ("torch", "ternary_cuda.train", ["--no-progress"]),
])
def test_ctrl_c_while_starting_exits_130_in_one_line(module, entry, args, tmp_path):
    """Before: a KeyboardInterrupt traceback, then death by SIGINT (exit -2), or exit 1."""
    args = [*args, "--out", str(tmp_path / "out")] if entry.endswith(".train") else args
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / "interrupt_at_import.py").write_text(INTERRUPT_AT_IMPORT)
    r = subprocess.run([sys.executable, "-m", "interrupt_at_import", module, entry, *args], cwd=ROOT,
                       env={**ENV, "PYTHONPATH": str(tmp_path / "boot")}, capture_output=True, text=True,
                       timeout=300, stdin=subprocess.DEVNULL)
    assert (r.returncode, r.stderr) == (130, "ternary: interrupted\n"), (r.returncode, r.stdout, r.stderr)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [["-m", "ternary_cuda.train"], ["-m", "ternary_mlx.train"],
                                  ["-m", "convert.cli", "eval", "--backend", "torch"]])
def test_a_real_ctrl_c_half_a_second_in(args, tmp_path):
    """0.5 s in, the process is importing torch or mlx (or, on a fast machine, already running)."""
    cmd = [*args, "--no-progress", "--out", str(tmp_path / "run")] if "train" in args[1] else [*args, "runs/x"]
    p = subprocess.Popen([sys.executable, *cmd], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, stdin=subprocess.DEVNULL)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 130 and "Traceback" not in err, (p.returncode, out, err)


# ---- argument parsing ----------------------------------------------------------------------------
def _parsers(p):
    yield p
    for action in p._actions:
        if isinstance(action, __import__("argparse")._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_no_parser_takes_abbreviations():
    from convert.cli import build_parser
    parsers = list(_parsers(build_parser()))
    assert len(parsers) > 15 and all(not p.allow_abbrev for p in parsers), [p.prog for p in parsers if p.allow_abbrev]


def test_an_abbreviated_option_is_refused(trained):
    """Before: `--max-token 50` was silently taken as --max-tokens (and --res as --resume)."""
    for args in (("eval", trained, "--max-token", "50"), ("generate", trained, "--prompt", "a", "--max", "3"),
                 ("train", "--res", trained), ("--no-fast", "presets")):
        r = run(*args)
        assert r.returncode == 2 and "unrecognized arguments: --" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "ternary_mlx.train", "--pres", "smoke"], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "unrecognized arguments: --pres smoke" in r.stderr, r.stderr


def test_train_module_errors_are_one_line(tmp_path):
    """Before: `python -m ternary_mlx.train` printed a ConfigError traceback (exit 1)."""
    for module in ("ternary_mlx.train", "ternary_cuda.train"):
        r = subprocess.run([sys.executable, "-m", module, "--set", "train.lrr=1", "--out", str(tmp_path / "r")],
                           cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
        assert_one_line_error(r, "'lrr'", "did you mean 'lr'?")
    assert list(tmp_path.iterdir()) == []


# ---- numeric options -----------------------------------------------------------------------------
def _argparse_error(r: subprocess.CompletedProcess, fragment: str) -> None:
    assert r.returncode == 2 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    assert r.stderr.strip().splitlines()[-1].endswith(fragment), r.stderr


@pytest.mark.parametrize("value,fragment", [("nan", "expected a finite number, got 'nan'"),  # was: a traceback
                                            ("inf", "expected a finite number, got 'inf'"),  # a traceback
                                            ("-1", "expected a number >= 0, got '-1'")])     # silently greedy
def test_generate_refuses_a_temperature_that_is_not_a_number_or_negative(trained, value, fragment):
    _argparse_error(run("generate", trained, "--prompt", "a", "--temperature", value), fragment)


def test_generate_top_k_and_max_new_tokens(trained):
    """Already right before issue 13, kept so: negative k and a non-positive length are refused, k = 0 means all."""
    assert_one_line_error(run("generate", trained, "--prompt", "a", "--top-k", "-1"), "--top-k must be >= 0")
    for n in ("0", "-3"):
        _argparse_error(run("generate", trained, "--prompt", "a", "--max-new-tokens", n),
                        f"expected a positive integer, got {n}")
    r = run("generate", trained, "--prompt", "a", "--top-k", "0", "--max-new-tokens", "2", "--temperature", "0")
    assert r.returncode == 0 and r.stdout.startswith("a"), r.stderr


@pytest.mark.parametrize("value,fragment", [("-1", "expected a number >= 0, got '-1'"),  # was: ran and FAILED
                                            ("nan", "expected a finite number, got 'nan'")])
def test_demo_refuses_a_negative_or_nan_tolerance(value, fragment):
    _argparse_error(run("demo", "--tolerance", value), fragment)


# ---- text inputs ---------------------------------------------------------------------------------
def test_tokenizer_train_on_a_binary_file(tmp_path):
    """Before: a UnicodeDecodeError traceback (exit 1)."""
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 64)
    assert_one_line_error(run("tokenizer", "train", blob, "--vocab-size", "300", "--out", tmp_path / "tok"),
                          f"{blob}: not UTF-8 text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.bin"]


def test_data_prepare_paragraphs_split_at_whitespace_only_lines(tmp_path):
    """Before: WikiText's ' ' lines were not paragraph breaks, so --documents paragraph found one document."""
    text = tmp_path / "wiki.txt"
    text.write_text(" \n = Title = \n \n One paragraph here . \n \n Another one there . \n \n" * 20)
    r = run("data", "prepare", text, "--tokenizer", "bytes", "--out", tmp_path / "d", "--documents", "paragraph",
            "--val-bytes", "200")
    assert r.returncode == 0, r.stderr
    man = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert man["splits"]["val"]["documents"] + man["splits"]["train"]["documents"] >= 60


# ---- run directories -----------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--resume", "--init"])
def test_a_missing_resume_or_init_directory_is_named(tmp_path, flag):
    """Before: `run directory <its parent>` was announced, then '[Errno 2] No such file or directory:
    .../config.json'."""
    for missing in (tmp_path / "nope", tmp_path / "nope" / "checkpoint"):
        r = run("train", flag, missing, "--no-progress", "--out", tmp_path / "out")
        line = assert_one_line_error(r, f"{flag} {missing}: no such directory")
        assert "config.json" not in line
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run("train", flag, tmp_path / "empty", "--no-progress", "--out", tmp_path / "out"),
                          f"{flag} {tmp_path / 'empty'}: not a run directory or a checkpoint")
    r = run("train", "--resume", tmp_path / "nope", "--no-progress")
    assert f"run directory {tmp_path}\n" not in r.stdout  # the missing directory's parent is never announced
    assert not (tmp_path / "out").exists()


def test_a_fine_tuning_run_keeps_its_own_tokenizer(tmp_path):
    """Before: data.tokenizer pointed into the --init checkpoint, so deleting it broke the run."""
    pytest.importorskip("tokenizers")
    from tests.convert.test_import_hf_checks import make_hf_dir
    src = make_hf_dir(tmp_path / "hf", tokenizer_tokens=200)
    ckpt = tmp_path / "imported"
    r = run("import-hf", src, "--out", ckpt, "--set", "ternary.group_size=16")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "ft"
    r = run("train", "--init", ckpt, "--no-progress", "--out", out, "--set", "train.steps=2", "train.eval_every=0",
            "train.eval_tokens=64", "train.seq_len=16", "train.batch_size=2", "data.synthetic_train_bytes=20000",
            "data.synthetic_val_bytes=2000")
    assert r.returncode == 0, r.stdout + r.stderr
    own = str((out / "tokenizer").resolve())
    assert f"tokenizer: copied {ckpt.resolve() / 'tokenizer'} into {own}" in r.stdout
    assert json.loads((out / "checkpoint" / "config.json").read_text())["data"]["tokenizer"] == own
    assert f'tokenizer = "{own}"' in (out / "config.toml").read_text()
    shutil.rmtree(ckpt)
    r = run("eval", out, "--max-tokens", "32", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tokenizer"] == "tokenizer"
    r = run("train", "--resume", out, "--set", "train.steps=3", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr


# ---- eval / generate with another tokenizer ------------------------------------------------------
def test_eval_and_generate_refuse_a_tokenizer_the_model_was_not_trained_with(trained, tmp_path):
    """Before: `eval --tokenizer T --data D` (D prepared with T) scored the bytes model through T."""
    from shared.data.corpus import SyntheticCorpus
    words = SyntheticCorpus(1).generate(60_000, "train").split(" ")
    text = tmp_path / "c.txt"
    text.write_text("\n".join(" ".join(words[i:i + 30]) for i in range(0, len(words), 30)))
    r = run("tokenizer", "train", text, "--vocab-size", "120", "--option", "byte_fallback=false",
            "--out", tmp_path / "tok")
    assert r.returncode == 0, r.stderr
    tok = tmp_path / "tok.model"
    assert run("data", "prepare", text, "--tokenizer", tok, "--out", tmp_path / "data", "--val-bytes", "5000").returncode == 0
    refusal = f"--tokenizer {tok}: 'tok' (sha256 "
    assert_one_line_error(run("eval", trained, "--tokenizer", tok, "--data", tmp_path / "data"), refusal,
                          "is not the tokenizer the model was trained with, data.tokenizer bytes")
    assert_one_line_error(run("generate", trained, "--tokenizer", tok, "--prompt", "a"), refusal)
    # A model trained with tok.model, which was moved since: --tokenizer points at it again, with a warning.
    out = tmp_path / "run"
    r = run("train", "--set", *TINY, f"data.tokenizer={tok}", f"data.source={tmp_path / 'data'}", "model.vocab_size=120",
            "--no-progress", "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    moved = tmp_path / "moved.model"
    tok.rename(moved)
    r = run("eval", out, "--tokenizer", moved, "--data", tmp_path / "data", "--max-tokens", "100", "--json")
    assert r.returncode == 0, r.stderr
    first, warning = r.stderr.splitlines()[:2]  # --json: the backend line goes to stderr, first
    assert first.startswith("backend: ")
    assert warning.startswith(f"ternary: warning: --tokenizer {moved} cannot be compared with the model's data.tokenizer")


# ---- hints ---------------------------------------------------------------------------------------
def test_data_prepare_suggests_a_vocab_size_that_works(tmp_path):
    """Before: `model.vocab_size=<the tokenizer's size>` (151,669 for Qwen3), which a fine-tune of the
    imported model (151,936 rows) refuses: only model.subln may change under --init."""
    pytest.importorskip("tokenizers")
    from tests.convert.test_import_hf_checks import make_hf_dir
    ckpt = tmp_path / "imported"
    r = run("import-hf", make_hf_dir(tmp_path / "hf", tokenizer_tokens=200), "--out", ckpt, "--set", "ternary.group_size=16")
    assert r.returncode == 0, r.stderr
    text = tmp_path / "t.txt"
    text.write_text(" ".join(chr(0x100 + i % 199 + 1) for i in range(4000)))
    data = tmp_path / "d"
    r = run("data", "prepare", text, "--tokenizer", ckpt / "tokenizer", "--out", data, "--val-bytes", "2000")
    assert r.returncode == 0, r.stderr
    hint = r.stdout.strip().splitlines()[-1]
    assert hint == f"next: ternary train --init {ckpt} --set data.source={data}"
    r = run(*hint.split()[2:], "train.steps=1", "train.eval_every=0", "train.eval_tokens=64", "train.seq_len=16",
            "train.batch_size=2", "--no-progress", "--out", tmp_path / "ft")
    assert r.returncode == 0, r.stdout + r.stderr
    r = run("data", "prepare", text, "--tokenizer", "bytes", "--out", tmp_path / "d2")
    assert r.stdout.strip().splitlines()[-2:] == [
        f"next: ternary train --set data.source={tmp_path / 'd2'} data.tokenizer=bytes model.vocab_size=256",
        "      (model.vocab_size must be at least 256, the tokenizer's size; to fine-tune a checkpoint, use --init "
        "CKPT without model.vocab_size: the model keeps its own)"]


# ---- file modes ----------------------------------------------------------------------------------
def test_every_file_written_gets_the_mode_the_umask_gives(tmp_path):
    """Before: model.safetensors (and optimizer.safetensors, the hf and hf-bitnet weights) were 0600
    while the JSON beside them was 0644: safetensors' save_file leaves 0600."""
    def umask_027():
        os.umask(0o027)

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "convert.cli", *map(str, args)], cwd=ROOT, env=ENV, capture_output=True,
                           text=True, timeout=300, stdin=subprocess.DEVNULL, preexec_fn=umask_027)
        assert r.returncode == 0, r.stdout + r.stderr

    for group in (128, 0):  # hf-bitnet takes per-tensor scales only, mlx-lm groups of 64 or 128
        cli("init", "--set", *tiny_sets(vocab_size=320, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                                        hidden_act="silu", ternary=dict(group_size=group), data=dict(tokenizer="bytes")),
            "--out", tmp_path / f"ck{group}")
    cli("train", "--set", *TINY, "--no-progress", "--out", tmp_path / "run")
    for to, out in (("canonical", "canon"), ("packed", "m.tpk"), ("hf", "hf"), ("mlx-lm", "mlx-lm"),
                    ("hf-bitnet", "bitnet"), ("gguf", "m.gguf")):
        cli("convert", tmp_path / ("ck0" if to == "hf-bitnet" else "ck128"), "--to", to, "--out", tmp_path / out)
    text = tmp_path / "c.txt"
    text.write_text("some words of text, a line of it\n" * 200)
    cli("tokenizer", "train", text, "--vocab-size", "280", "--out", tmp_path / "tok" / "t")
    cli("data", "prepare", text, "--tokenizer", "bytes", "--out", tmp_path / "data")
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in tmp_path.rglob("*")
             if p.is_file() and p != text}
    assert {"ck0/model.safetensors", "run/checkpoint/optimizer.safetensors", "hf/model.safetensors",
            "bitnet/model.safetensors", "m.gguf", "tok/t.model", "data/train_000000.bin"} <= set(modes)
    assert {m for m in modes.values()} == {"0o640"}, {p: m for p, m in modes.items() if m != "0o640"}


# ---- errors name the user's path -----------------------------------------------------------------
def test_write_errors_name_the_output_not_a_temporary(tmp_path):
    """Before: '[Errno 36] File name too long: '.../.NAME.tmp-1a2b3c4d'' (our staging sibling, a
    name the user never gave), or, with no file name from the OS, '[Errno 27] File too large'."""
    text = tmp_path / "c.txt"
    text.write_text("words of text on a line\n" * 2000)
    assert run("init", "--out", tmp_path / "ck").returncode == 0
    for args in (("init", "--out"), ("data", "prepare", text, "--tokenizer", "bytes", "--out"),
                 ("convert", tmp_path / "ck", "--to", "packed", "--out"), ("config", "--out")):
        long = tmp_path / ("n" * (251 if args[0] == "config" else 248))  # fits; its temporary does not
        line = assert_one_line_error(run(*args, long), f"ternary: error: {long}: File name too long")
        assert ".tmp" not in line, line
    def small_files():
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    for args, out in ((("data", "prepare", text, "--tokenizer", "bytes", "--out"), tmp_path / "d"),
                      (("tokenizer", "train", text, "--vocab-size", "280", "--out"), tmp_path / "tok")):
        r = subprocess.run([sys.executable, "-m", "convert.cli", *map(str, args), str(out)], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=300, preexec_fn=small_files)
        assert_one_line_error(r, f"ternary: error: {out}: cannot write: File too large")
