"""End-to-end tests of the `seq2seq` command through subprocesses.

The contract: user mistakes exit 2 with one `error: ...` line on stderr and no traceback;
`translate` keeps one output line per input line whatever the input; `score` reports sacreBLEU's
own numbers; `evaluate` writes a complete results card. Every model-loading run costs a torch
import (a few seconds), so each test makes as few runs as its claim needs.
"""

import datetime
import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu

import seq2seq
from conftest import CLI, assert_usage_error, run_cli
from seq2seq import corpus
from seq2seq.translate import Translator

CONSOLE = [str(Path(sys.executable).parent / "seq2seq")]
SUBCOMMANDS = ["prepare", "train", "translate", "score", "evaluate", "tune", "serve"]


def run(args: list, stdin: bytes = b"", cmd: list[str] = CLI, cwd: Path | None = None):
    """(exit status, stdout, stderr) of the CLI."""
    p = run_cli(*args, stdin=stdin, cmd=cmd, cwd=cwd)
    return p.returncode, p.stdout, p.stderr


def output_lines(text: str) -> list[str]:
    """Lines of CLI output, split on '\\n' only; every line must be terminated."""
    assert text == "" or text.endswith("\n"), repr(text[-50:])
    return text.split("\n")[:-1]


@pytest.fixture(scope="module")
def translator(reverse_model) -> Translator:
    return Translator.load(reverse_model)


# ---------------------------------------------------------------------------- help and usage


def test_help_lists_every_subcommand():
    rc, out, err = run(["--help"], cmd=CONSOLE)
    assert rc == 0, err
    for name in SUBCOMMANDS:
        assert re.search(rf"^\s+{name}\b", out, re.MULTILINE), name


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help_exits_0(name):
    rc, out, err = run([name, "--help"])
    assert rc == 0, err
    assert out.startswith(f"usage: seq2seq {name}")


@pytest.mark.parametrize("cmd", [CLI, CONSOLE], ids=["module", "console"])
@pytest.mark.parametrize("args, fragments", [
    (["frobnicate"], ["invalid choice", "frobnicate"]),
    (["translate"], ["required", "model"]),
    (["score"], ["required", "--ref"]),
    (["evaluate"], ["required", "model"]),
    (["translate", "exp", "--beam", "two"], ["--beam", "two"]),
    (["translate", "exp", "--bogus"], ["unrecognized", "--bogus"]),
], ids=["unknown-subcommand", "translate-no-model", "score-no-ref", "evaluate-no-model", "beam-not-int",
        "unknown-option"])
def test_bad_usage_is_one_error_line(cmd, args, fragments):
    rc, _, err = run(args, cmd=cmd)
    assert_usage_error(rc, err, *fragments)


def test_beam_zero_is_a_usage_error(reverse_model):
    rc, out, err = run(["translate", reverse_model, "--beam", "0"], stdin=b"a b\n")
    assert_usage_error(rc, err, "--beam", "0")
    assert out == ""


@pytest.mark.slow
def test_missing_model_path_is_a_usage_error(tmp_path):
    missing = tmp_path / "no_such_experiment"
    rc, out, err = run(["translate", missing], stdin=b"a b\n", cmd=CONSOLE)
    assert_usage_error(rc, err, str(missing))
    assert out == ""


@pytest.mark.parametrize("option", ["-i", "-o"])
def test_unusable_input_or_output_file_is_a_usage_error(reverse_model, tmp_path, option):
    path = tmp_path / "no_such_dir" / "file.txt"
    rc, out, err = run(["translate", reverse_model, option, path], stdin=b"a b\n")
    assert_usage_error(rc, err, str(path))
    assert out == ""
    assert not path.parent.exists()


# ---------------------------------------------------------------------------- translate

LONG = " ".join(random.Random(0).choice("abcdefghij") for _ in range(2000))
EDGE_LINES = [
    "a b c", "", "   ", "\t", LONG, "你好，世界", "مرحبا بالعالم", "😀 🎉 a b", "x\u2028y", "c d\r", "j i h g",
]
EDGE_INPUT = "\n".join(EDGE_LINES).encode()  # no trailing newline


def expected_translations(translator: Translator, **decode) -> list[str]:
    """What the library gives for EDGE_LINES (the CLI drops one trailing '\\r' per line)."""
    return translator.translate([line.removesuffix("\r") for line in EDGE_LINES], **decode)


def test_translate_stdin_to_stdout_keeps_every_line(reverse_model, translator):
    rc, out, err = run(["translate", reverse_model], stdin=EDGE_INPUT)
    assert rc == 0, err
    lines = output_lines(out)
    assert len(lines) == len(EDGE_LINES)
    assert lines[1] == lines[2] == lines[3] == ""
    assert lines == expected_translations(translator)


def test_translate_file_to_file_is_atomic(reverse_model, translator, tmp_path):
    src, dst = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_bytes(EDGE_INPUT)
    dst.write_text("stale content\n")
    rc, out, err = run(["translate", reverse_model, "-i", src, "-o", dst, "--beam", "2"], cmd=CONSOLE)
    assert rc == 0, err
    assert out == ""
    assert output_lines(dst.read_text(encoding="utf-8")) == expected_translations(translator, beam=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.txt"]  # no temporary file left


def test_translate_empty_input_gives_empty_output(reverse_model):
    rc, out, err = run(["translate", reverse_model], stdin=b"")
    assert (rc, out) == (0, ""), err


def test_translate_nbest_format(reverse_model, translator):
    lines = ["a b c", "", "d e f g"]
    rc, out, err = run(["translate", reverse_model, "--beam", "3", "--nbest", "2"],
                       stdin="".join(line + "\n" for line in lines).encode())
    assert rc == 0, err
    entries = [line.split(" ||| ") for line in output_lines(out)]
    assert all(len(e) == 3 for e in entries), out
    assert [int(e[0]) for e in entries] == [0, 0, 1, 1, 2, 2]  # always K entries per input line
    assert [e[1] for e in entries[2:4]] == ["", ""]           # the empty line: empty translations
    assert float(entries[2][2]) == 0.0 and entries[3][2] == "-inf"
    details = translator.translate_with_details(lines, beam=3, nbest=2)
    expected = [(str(i), t.text, t.score) for i, d in enumerate(details) for t in d]
    got = [e for e in entries if e[0] != "1"]
    assert [(e[0], e[1]) for e in got] == [(i, text) for i, text, _ in expected]
    assert [float(e[2]) for e in got] == pytest.approx([score for _, _, score in expected], abs=2e-4)
    for i in (0, 2):
        scores = [float(e[2]) for e in entries if e[0] == str(i)]
        assert scores == sorted(scores, reverse=True)


def test_translate_invalid_utf8_names_the_line_and_leaves_no_output(reverse_model, tmp_path):
    src, dst = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_bytes(b"a b\nc \xff d\ne\n")
    dst.write_text("old\n")
    rc, out, err = run(["translate", reverse_model, "-i", src, "-o", dst])
    assert_usage_error(rc, err, f"{src}:2", "UTF-8", "--encoding-errors")
    assert dst.read_text() == "old\n"  # the output appears whole or not at all
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.txt"]


def test_translate_encoding_errors_replace_goes_on(reverse_model):
    rc, out, err = run(["translate", reverse_model, "--encoding-errors", "replace"],
                       stdin=b"a b\nc \xff d\n\xfe\ne\n")
    assert rc == 0, err
    assert len(output_lines(out)) == 4


# ---------------------------------------------------------------------------- score


def perturb(lines: list[str], seed: int = 0) -> list[str]:
    """A hypothesis-like copy: words dropped, swapped or lowercased; some lines untouched."""
    rng = random.Random(seed)
    out = []
    for line in lines:
        words = line.split()
        kind = rng.randrange(4)
        if kind == 0 and len(words) > 1:
            del words[rng.randrange(len(words))]
        elif kind == 1 and len(words) > 1:
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
        elif kind == 2:
            words = [w.lower() for w in words]
        out.append(" ".join(words))
    return out


@pytest.fixture
def score_files(tmp_path, multi30k_dir):
    """(ref .gz, plain ref, hyp) from the real Multi30K English test set."""
    root = tmp_path
    ref_gz = multi30k_dir / "test_2016_flickr.en.gz"
    refs = corpus.read_lines(ref_gz)
    assert len(refs) == 1000
    ref_plain, hyp = root / "ref.en", root / "hyp.en"
    ref_plain.write_text("".join(r + "\n" for r in refs), encoding="utf-8")
    hyp.write_text("".join(h + "\n" for h in perturb(refs)), encoding="utf-8")
    return ref_gz, ref_plain, hyp


def test_score_equals_the_sacrebleu_cli(score_files):
    """Hypotheses from stdin, JSON out; the numbers and signatures are sacrebleu's own."""
    ref_gz, ref_plain, hyp = score_files
    rc, out, err = run(["score", "--ref", ref_gz, "--json"], stdin=hyp.read_bytes(), cmd=CONSOLE)
    assert rc == 0, err
    ours = json.loads(out)
    assert ours["sentences"] == 1000

    p = subprocess.run([sys.executable, "-m", "sacrebleu", str(ref_plain), "-i", str(hyp),
                        "-m", "bleu", "chrf", "-w", "2"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    bleu, chrf = json.loads(p.stdout)
    assert 20 < bleu["score"] < 90  # the perturbation makes a non-trivial test
    assert ours["bleu"] == bleu["score"]
    assert ours["chrf"] == chrf["score"]
    assert ours["bleu_signature"] == bleu["signature"]
    assert ours["chrf_signature"] == chrf["signature"]


def test_score_line_count_mismatch_names_both_files(score_files, tmp_path):
    ref_gz, _, hyp = score_files
    short = tmp_path / "short.en"
    short.write_text("".join(line + "\n" for line in hyp.read_text(encoding="utf-8").split("\n")[:999]))
    rc, out, err = run(["score", "--ref", ref_gz, "--hyp", short])
    assert_usage_error(rc, err, str(short), str(ref_gz), "999", "1000")
    assert out == ""


# ---------------------------------------------------------------------------- evaluate


@pytest.fixture
def expdir_copy(reverse_model, tmp_path) -> Path:
    """A copy of the experiment, so results/ written here do not leak into the shared fixture."""
    exp = tmp_path / "exp"
    (exp / "checkpoints").mkdir(parents=True)
    shutil.copy(reverse_model / "checkpoints" / "best.pt", exp / "checkpoints" / "best.pt")
    shutil.copy(reverse_model / "spm.model", exp / "spm.model")
    return exp


def test_evaluate_writes_a_results_card(expdir_copy, reverse_model):
    rc, out, err = run(["evaluate", expdir_copy, "--split", "test", "--beam", "2"])
    assert rc == 0, err
    card = json.loads((expdir_copy / "results" / "test.json").read_text())
    for key in ("bleu", "chrf", "bleu_signature", "chrf_signature", "checkpoint", "decode",
                "sentences_per_second", "date", "seq2seq_version", "sacrebleu_version", "hypotheses"):
        assert key in card, key
    assert card["split"] == "test"
    assert card["checkpoint"] == "exp/checkpoints/best.pt"  # no machine path: cards get published
    assert str(expdir_copy.parent) not in (expdir_copy / "results" / "test.json").read_text()
    assert card["training"]["steps"] > 0 and card["training"]["minutes"] > 0
    assert card["training"]["best_valid_bleu"] > 0 and 0 < card["training"]["best_step"] <= card["training"]["steps"]
    assert card["hardware"]["cpu_cores"] >= 1 and card["hardware"]["device"] == "cpu" and card["hardware"]["cpu"]
    assert card["config"]["model"]["decoder"]["layers"] >= 1 and "data_dir" not in card["config"]["data"]
    assert card["decode"]["beam"] == 2
    assert card["sentences_per_second"] > 0
    assert card["seq2seq_version"] == seq2seq.__version__
    assert datetime.datetime.fromisoformat(card["date"]).tzinfo is not None
    assert card["bleu_signature"].startswith("nrefs:1|") and card["chrf_signature"].startswith("nrefs:1|")

    # the hypothesis file: one line per source line, and it is what the card's numbers score
    data = reverse_model.parent / "data"
    sources = (data / "test.src").read_text().splitlines()
    refs = (data / "test.tgt").read_text().splitlines()
    assert card["hypotheses"] == "test.beam2.hyp"  # beside the card
    hyp_file = expdir_copy / "results" / card["hypotheses"]
    hyps = output_lines(hyp_file.read_text(encoding="utf-8"))
    assert len(hyps) == len(sources) == card["sentences"] == 100
    assert card["bleu"] == round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)
    assert card["chrf"] == round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2)
    assert f"BLEU = {card['bleu']:.2f}" in out


def test_evaluate_unknown_split_lists_the_valid_ones(expdir_copy):
    rc, out, err = run(["evaluate", expdir_copy, "--split", "nope"], cmd=CONSOLE)
    assert_usage_error(rc, err, "nope", "test", "train", "valid")
    assert not (expdir_copy / "results").exists()


def test_tune_decodes_validation_only_and_picks_the_best_setting(expdir_copy, reverse_model, translator):
    rc, out, err = run(["tune", expdir_copy, "--beams", "2", "1", "--length-penalties", "1.5", "0.5", "1.5"])
    assert rc == 0, err
    assert sorted(p.name for p in (expdir_copy / "results").iterdir()) == ["tune.valid.json"]  # no test split
    card = json.loads((expdir_copy / "results" / "tune.valid.json").read_text())
    assert card["source"] == "valid.src" and card["sentences"] == 100
    assert [(r["beam"], r["length_penalty"]) for r in card["grid"]] == [(1, None), (2, 0.5), (2, 1.5)]
    data = reverse_model.parent / "data"
    sources, refs = (data / "valid.src").read_text().splitlines(), (data / "valid.tgt").read_text().splitlines()
    hyps = translator.translate(sources, beam=2, length_penalty=1.5)
    assert card["grid"][2]["bleu"] == round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)
    best = max(card["grid"], key=lambda r: (r["bleu"], r["chrf"], -r["beam"]))
    assert card["best"] == best
    assert card["bleu_signature"].startswith("nrefs:1|") and card["checkpoint"] == "exp/checkpoints/best.pt"
    flags = f"--beam {best['beam']}" + ("" if best["length_penalty"] is None
                                        else f" --length-penalty {best['length_penalty']:g}")
    assert f"best on valid.src: {flags} " in out
    assert len([line for line in output_lines(out) if re.match(r"\s+[12]\s", line)]) == 3  # one table row each


@pytest.mark.parametrize("args, fragment", [(["--beams", "0"], "--beams"),
                                            (["--length-penalties", "-1"], "--length-penalties")])
def test_tune_rejects_a_bad_grid(expdir_copy, args, fragment):
    rc, out, err = run(["tune", expdir_copy, *args])
    assert_usage_error(rc, err, fragment)
    assert not (expdir_copy / "results").exists()


# ---------------------------------------------------------------------------- streaming and option checks


def test_translate_streams_a_pipe_line_by_line(reverse_model, translator):
    """An answer comes back for each line before the input is closed."""
    p = subprocess.Popen(CLI + ["translate", str(reverse_model), "--beam", "1"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for line in ["a b c", "d e"]:
            p.stdin.write((line + "\n").encode())
            p.stdin.flush()
            assert p.stdout.readline().decode() == translator.translate([line], beam=1)[0] + "\n"
    finally:
        p.stdin.close()
        assert p.wait(timeout=60) == 0


@pytest.mark.parametrize("option, value, key", [
    ("--coverage-penalty", "-1", "decode.coverage_penalty"),
    ("--length-penalty", "-0.5", "decode.length_penalty"),
    ("--max-len-a", "-1", "decode.max_len_a"),
    ("--no-repeat-ngram", "-2", "decode.no_repeat_ngram"),
])
def test_translate_checks_decode_options(reverse_model, option, value, key):
    rc, out, err = run(["translate", reverse_model, option, value], stdin=b"a b\n")
    assert_usage_error(rc, err, key)
    assert out == ""


@pytest.mark.parametrize("args", [["score", "--ref", "REF", "--hyp", "HYP"], ["score", "--ref", "REF", "--json"],
                                  ["--help"], ["--version"]])
def test_commands_without_a_model_do_not_import_torch(tmp_path, args):
    """`score` needs sacrebleu only: importing torch would cost seconds for nothing."""
    (tmp_path / "REF").write_text("a b c\n")
    (tmp_path / "HYP").write_text("a b c\n")
    code = ("import sys\nfrom seq2seq import cli\ntry:\n    rc = cli.main(sys.argv[1:])\n"
            "except SystemExit as e:\n    rc = e.code\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch', rc, file=sys.stderr)")
    p = run_cli(*args, cmd=[sys.executable, "-c", code], cwd=tmp_path, stdin="a b c\n")
    assert p.stderr.splitlines()[-1] == "no torch 0", p.stderr


def test_buffer_lines_must_be_positive(reverse_model):
    rc, out, err = run(["translate", reverse_model, "--buffer-lines", "0"], stdin=b"a b\n")
    assert_usage_error(rc, err, "--buffer-lines", "0")
    assert out == ""


def test_score_invalid_utf8_on_stdin_names_the_line(tmp_path):
    ref = tmp_path / "ref.txt"
    ref.write_text("a b\nc d\n")
    rc, out, err = run(["score", "--ref", ref], stdin=b"a b\nc \xff\n")
    assert_usage_error(rc, err, "<stdin>:2")


def test_evaluate_keeps_one_card_per_beam(reverse_model, tmp_path):
    expdir = tmp_path / "exp"
    shutil.copytree(reverse_model, expdir)
    for beam in ("1", "2"):
        rc, out, err = run(["evaluate", expdir, "--split", "test", "--beam", beam])
        assert rc == 0, err
    cards = {p.name: json.loads(p.read_text()) for p in (expdir / "results").glob("*.json")}
    assert set(cards) == {"test.beam1.json", "test.beam2.json", "test.json"}
    assert cards["test.beam1.json"]["decode"]["beam"] == 1 and cards["test.beam2.json"]["decode"]["beam"] == 2
    assert cards["test.json"] == cards["test.beam2.json"]
