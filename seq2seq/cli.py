"""The `seq2seq` command: parses arguments, calls library functions, prints.

Exit status: 0 on success, 2 on bad usage or input (one line `error: ...` on stderr),
130/143 when training is interrupted by SIGINT/SIGTERM after saving `last`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from seq2seq import __version__
from seq2seq.errors import Seq2SeqError


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as for every other user error
        raise Seq2SeqError(f"{self.prog}: {message}")


def build_parser() -> Parser:
    p = Parser(prog="seq2seq", description="Deep stacked RNN encoder-decoder NMT: train, translate, score.")
    p.add_argument("--version", action="version", version=f"seq2seq {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    s = sub.add_parser("prepare", help="check the corpus, train SentencePiece, encode and cache the splits")
    s.add_argument("recipe", help="recipe TOML file")
    s.add_argument("--data-dir", help="Multi30K directory (default: $SEQ2SEQ_DATA_DIR, else data/multi30k)")
    s.add_argument("--out", help="experiment directory (default: exp/<recipe name>)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")

    s = sub.add_parser("train", help="train a model from a recipe (prepares the data first)")
    s.add_argument("recipe")
    s.add_argument("--data-dir")
    s.add_argument("--out")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--resume", action="store_true", help="continue from EXPDIR/checkpoints/last.pt")

    s = sub.add_parser("translate", help="translate text (stdin -> stdout by default)")
    s.add_argument("model", help="experiment directory or checkpoint file")
    s.add_argument("-i", "--input", help="input file (default: stdin)")
    s.add_argument("-o", "--output", help="output file (default: stdout)")
    _decode_options(s)
    s.add_argument("--nbest", type=int, help="print K hypotheses per line as 'index ||| text ||| score'")
    s.add_argument("--encoding-errors", choices=("strict", "replace"), default="strict",
                   help="invalid UTF-8 input: stop with an error naming the line, or replace")
    s.add_argument("--device", default="cpu")

    s = sub.add_parser("score", help="sacreBLEU BLEU and chrF of hypotheses against references")
    s.add_argument("--ref", required=True, help="reference file (plain or .gz)")
    s.add_argument("--hyp", help="hypothesis file (default: stdin)")
    s.add_argument("--json", action="store_true", help="print the scores as JSON")
    s.add_argument("--lowercase", action="store_true")
    s.add_argument("--tokenize", help="sacrebleu tokenizer (13a, intl, none, ...)")

    s = sub.add_parser("evaluate", help="translate a split of the model's recipe, score it, write a results card")
    s.add_argument("model")
    s.add_argument("--split", default="test_2016_flickr", help="valid, val or a test split name")
    s.add_argument("--data-dir")
    _decode_options(s)
    s.add_argument("--device", default="cpu")
    return p


def _decode_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--beam", type=int, help="beam size (1 = greedy; default: the recipe's decode.beam)")
    s.add_argument("--length-penalty", type=float, help="GNMT alpha")
    s.add_argument("--coverage-penalty", type=float, help="GNMT beta")
    s.add_argument("--batch-tokens", type=int, help="source tokens per batch (beams included)")
    s.add_argument("--max-len-a", type=float)
    s.add_argument("--max-len-b", type=int)
    s.add_argument("--no-repeat-ngram", type=int)


def _decode_kwargs(args) -> dict:
    kw = {"beam": args.beam, "length_penalty": args.length_penalty, "coverage_penalty": args.coverage_penalty,
          "batch_tokens": args.batch_tokens, "max_len_a": args.max_len_a, "max_len_b": args.max_len_b,
          "no_repeat_ngram": args.no_repeat_ngram, "nbest": getattr(args, "nbest", None)}
    for key in ("beam", "batch_tokens", "nbest"):
        if kw[key] is not None and kw[key] < 1:
            raise Seq2SeqError(f"--{key.replace('_', '-')} must be >= 1, got {kw[key]}")
    return {k: v for k, v in kw.items() if v is not None}


def _expdir(args) -> Path:
    return Path(args.out) if args.out else Path("exp") / Path(args.recipe).stem


def cmd_prepare(args) -> int:
    from seq2seq import config
    from seq2seq.prepare import prepare
    cfg = config.load(args.recipe, args.set)
    prepared = prepare(cfg, _expdir(args), args.data_dir)
    for name, split in prepared.splits.items():
        print(f"{name}: {len(split)} pairs")
    print(f"vocab: source {len(prepared.tokenizers.src)}, target {len(prepared.tokenizers.tgt)}"
          f"{' (joint)' if prepared.tokenizers.joint else ''}; cached in {_expdir(args)}")
    return 0


def cmd_train(args) -> int:
    from seq2seq import config
    from seq2seq.train import Interrupted, run
    cfg = config.load(args.recipe, args.set)
    try:
        run(cfg, _expdir(args), args.data_dir, args.resume)
    except Interrupted as e:
        print(f"seq2seq: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def cmd_translate(args) -> int:
    from seq2seq.translate import Translator
    translator = Translator.load(args.model, args.device)
    decode = _decode_kwargs(args)
    translator.decode_config(**decode)  # validate before reading input
    try:
        src = open(args.input, "rb") if args.input else sys.stdin.buffer
    except OSError as e:
        raise Seq2SeqError(f"{args.input}: cannot read ({e.strerror})") from None
    tmp = Path(args.output).with_name(f".{Path(args.output).name}.tmp") if args.output else None
    try:
        out = open(tmp, "w", encoding="utf-8") if tmp else sys.stdout
    except OSError as e:
        if args.input:
            src.close()
        raise Seq2SeqError(f"{args.output}: cannot write ({e.strerror})") from None
    chunk = 1 if (not args.input and sys.stdin.isatty()) else 2000
    name, number = args.input or "<stdin>", 0
    try:
        with src:
            for lines in _read_chunks(src, chunk, name, args.encoding_errors):
                _write_translations(out, translator, lines, number, args.nbest, decode)
                out.flush()
                number += len(lines)
        if tmp:
            out.close()
            tmp.replace(args.output)  # the output appears whole or not at all
    finally:
        if tmp:
            out.close()
            tmp.unlink(missing_ok=True)
    return 0


def _write_translations(out, translator, lines: list[str], first: int, nbest: int | None, decode: dict) -> None:
    if not nbest:
        out.writelines(h + "\n" for h in translator.translate(lines, **decode))
        return
    for i, hyps in enumerate(translator.translate_with_details(lines, **decode)):
        for t in hyps or [None]:  # an empty input line still gets one (empty) entry
            out.write(f"{first + i} ||| {t.text if t else ''} ||| {t.score if t else 0.0:.4f}\n")


def _read_chunks(f, size: int, name: str, errors: str):
    """Lines split on b'\\n' only, one trailing '\\r' stripped, decoded as UTF-8."""
    lines, number = [], 0
    for raw in f:
        number += 1
        raw = raw[:-1] if raw.endswith(b"\n") else raw
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        try:
            lines.append(raw.decode("utf-8", errors=errors))
        except UnicodeDecodeError as e:
            raise Seq2SeqError(f"{name}:{number}: invalid UTF-8 at byte {e.start} "
                               "(use --encoding-errors replace to go on)") from None
        if len(lines) >= size:
            yield lines
            lines = []
    if lines:
        yield lines


def cmd_score(args) -> int:
    from seq2seq import corpus, evaluate
    if args.hyp:
        hyps, name = corpus.read_lines(args.hyp), args.hyp
    else:
        hyps, name = [line.rstrip("\n").removesuffix("\r") for line in sys.stdin], "<stdin>"
    scores = evaluate.score_files(args.ref, hyps, name, lowercase=args.lowercase, tokenize=args.tokenize)
    print(json.dumps(scores, indent=2) if args.json else evaluate.format_scores(scores))
    return 0


def cmd_evaluate(args) -> int:
    from seq2seq import evaluate
    from seq2seq.prepare import split_files
    from seq2seq.translate import Translator
    translator = Translator.load(args.model, args.device)
    files = split_files(translator.config, args.data_dir)
    split = "valid" if args.split in ("valid", translator.config.data.valid_split) else args.split
    if split not in files:
        raise Seq2SeqError(f"--split {args.split}: the recipe has splits {', '.join(sorted(files))}")
    ckpt = Path(translator.source)
    expdir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    card = evaluate.evaluate(translator, args.split, *files[split], expdir / "results", **_decode_kwargs(args))
    print(f"{args.split}: BLEU = {card['bleu']:.2f}  ({card['bleu_signature']})")
    print(f"{args.split}: chrF = {card['chrf']:.2f}  ({card['chrf_signature']})")
    print(f"{args.split}: lowercased 13a BLEU = {card['lowercase_13a_bleu']:.2f}; "
          f"{card['sentences_per_second']} sentences/s; card: {expdir / 'results' / (args.split + '.json')}")
    return 0


COMMANDS = {"prepare": cmd_prepare, "train": cmd_train, "translate": cmd_translate,
            "score": cmd_score, "evaluate": cmd_evaluate}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return 2
        return COMMANDS[args.command](args)
    except Seq2SeqError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        sys.stderr.close()  # `seq2seq translate ... | head`: not an error
        return 0
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
