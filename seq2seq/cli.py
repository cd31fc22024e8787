"""The `seq2seq` command: parses arguments, calls library functions, prints.

Exit status: 0 on success, 2 on bad usage or input (one line `error: ...` on stderr),
130/143 when training is interrupted by SIGINT/SIGTERM after saving `last`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from seq2seq import __version__
from seq2seq.config import DECODE_PRECISIONS, TRAIN_PRECISIONS
from seq2seq.errors import Seq2SeqError


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as for every other user error
        raise Seq2SeqError(f"{self.prog}: {message}")


def positive_int(text: str) -> int:
    """argparse type of the options that only the CLI has (--buffer-lines, --last)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> Parser:
    p = Parser(prog="seq2seq", description="Deep stacked RNN encoder-decoder NMT: train, translate, score.")
    p.add_argument("--version", action="version", version=f"seq2seq {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    _training_commands(sub)
    _translate_command(sub)
    _scoring_commands(sub)
    _inspection_commands(sub)
    _serve_command(sub)
    return p


def _training_commands(sub) -> None:
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
    s.add_argument("--precision", choices=TRAIN_PRECISIONS,
                   help="train.precision: the products' format (default: the recipe's, auto)")

    s = sub.add_parser("average", help="average the weights of several checkpoints")
    s.add_argument("inputs", nargs="+", help="checkpoint files, or one experiment directory with --last")
    s.add_argument("--last", type=positive_int,
                   help="average the newest N step checkpoints of the experiment directory")
    s.add_argument("-o", "--output", required=True)


def _translate_command(sub) -> None:
    s = sub.add_parser("translate", help="translate text (stdin -> stdout by default)")
    s.add_argument("model", nargs="+", help="experiment directory or checkpoint file; several make an ensemble")
    s.add_argument("-i", "--input", help="input file (default: stdin)")
    s.add_argument("-o", "--output", help="output file (default: stdout)")
    _decode_options(s)
    s.add_argument("--nbest", type=int, help="print K hypotheses per line as 'index ||| text ||| score'")
    s.add_argument("--encoding-errors", choices=("strict", "replace"), default="strict",
                   help="invalid UTF-8 input: stop with an error naming the line, or replace")
    s.add_argument("--attention-dir", help="also write one attention map (PNG) per input line here")
    s.add_argument("--buffer-lines", type=positive_int, default=2000,
                   help="translate at most this many lines at once (input that pauses is translated at once)")
    s.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    _rerank_options(s)


def _scoring_commands(sub) -> None:
    s = sub.add_parser("score", help="sacreBLEU BLEU and chrF of hypotheses against references")
    s.add_argument("--ref", required=True, help="reference file (plain or .gz)")
    s.add_argument("--hyp", help="hypothesis file (default: stdin)")
    s.add_argument("--json", action="store_true", help="print the scores as JSON")
    s.add_argument("--lowercase", action="store_true")
    s.add_argument("--tokenize", choices=("none", "13a", "intl", "char", "zh", "ja-mecab", "ko-mecab", "spm",
                                          "flores101", "flores200"),
                   help="sacrebleu tokenizer (default 13a)")

    s = sub.add_parser("evaluate", help="translate a split of the model's recipe, score it, write a results card")
    s.add_argument("model", nargs="+", help="experiment directory or checkpoint file; several make an ensemble "
                   "(its card goes to the first one's results/, named SPLIT.beamK.ensembleN.json)")
    s.add_argument("--split", default="test_2016_flickr", help="valid, val or a test split name")
    s.add_argument("--data-dir")
    _decode_options(s)
    s.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    _rerank_options(s)

    s = sub.add_parser("tune", help="choose beam size and length penalty by BLEU on the validation split")
    s.add_argument("model", nargs="+", help="experiment directory or checkpoint file; several make an ensemble")
    s.add_argument("--beams", type=int, nargs="+", default=[1, 3, 5, 8], metavar="K",
                   help="beam sizes to try (default: 1 3 5 8)")
    s.add_argument("--length-penalties", type=float, nargs="+", default=[0.6, 0.8, 1.0, 1.2, 1.4],
                   metavar="ALPHA", help="GNMT length penalties to try (default: 0.6 0.8 1.0 1.2 1.4)")
    s.add_argument("--data-dir")
    s.add_argument("--batch-tokens", type=int, help="source tokens per batch (beams included)")
    s.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    _precision_option(s)
    s.add_argument("--rerank", metavar="MODEL", help="also choose the weight of this reranking model (e.g. one "
                   "trained right to left) from --rerank-weights, at each beam and length penalty")
    s.add_argument("--rerank-weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0, 1.5],
                   metavar="W", help="reranking weights to try (default: 0 0.25 0.5 0.75 1 1.5)")


def _inspection_commands(sub) -> None:
    s = sub.add_parser("plot", help="learning curves (loss, validation loss and BLEU) from metrics.jsonl")
    s.add_argument("expdir", nargs="+", help="experiment directories, one line each")
    s.add_argument("-o", "--output", default="curves.png")
    s.add_argument("--x", choices=("step", "minutes"), default="step", help="horizontal axis")

    s = sub.add_parser("attention", help="attention heatmap of one sentence's translation")
    s.add_argument("model")
    s.add_argument("sentence")
    s.add_argument("-o", "--output", default="attention.png")
    s.add_argument("--json", action="store_true", help="print the raw matrix and subwords as JSON instead")
    _decode_options(s)


# `seq2seq serve`'s limits: the flag of each field of serve.protocol.Limits (whose defaults are the
# flags' defaults) and what it limits.
SERVE_LIMITS = {
    "max_body_bytes": (positive_int, "request body bytes"),
    "max_lines": (positive_int, "lines per request"),
    "max_line_chars": (positive_int, "characters per line"),
    "max_beam": (positive_int, "the largest beam a request may ask for"),
    "timeout": (float, "seconds per request (reading the body, queueing, decoding) before a 503"),
    "max_queue_lines": (positive_int, "lines waiting to be decoded before requests get 503 + Retry-After"),
    "max_batch_lines": (positive_int, "lines decoded together at most"),
    "max_wait_ms": (float, "how long a request that finds the server idle waits for companions"),
    "max_connections": (positive_int, "open connections at most; more get 503"),
    "max_attention_hypotheses": (positive_int, "attention maps one answer may hold (lines x nbest); more get 413"),
    "max_request_work": (positive_int, "source pieces x beam one request may ask for; more get 413"),
    "max_batch_work": (positive_int, "source pieces x beam decoded together at most (a larger request goes alone)"),
    "header_timeout": (float, "seconds a connection has for a request's headers before it is closed"),
}


def _serve_command(sub) -> None:
    from seq2seq.serve.protocol import Limits  # standard library only: no Starlette needed to parse
    s = sub.add_parser("serve", help="serve translations over HTTP, with a web page (needs seq2seq[serve])")
    s.add_argument("model", nargs="+", help="experiment directory or checkpoint file; several make an ensemble")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    s.add_argument("--threads", type=positive_int, help="torch threads for decoding (default: torch's)")
    _precision_option(s)
    for f in dataclasses.fields(Limits):
        kind, what = SERVE_LIMITS[f.name]
        s.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default,
                       help=f"{what} (default {f.default})")
    s.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a name this server is reached by (the Host header); repeat for several, '*' for any. "
                        "Without it: the --host address, and localhost when that is a loopback or every address")
    s.add_argument("--allowed-origin", action="append", default=[], metavar="URL",
                   help="a site (e.g. https://app.example.org) whose pages may call the API (CORS); repeat for several")
    s.add_argument("--access-log", action="store_true", help="log every request (rejected ones always are)")


def _rerank_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--rerank", action="append", default=[], metavar="MODEL",
                   help="rescore the beam's n-best with this model too (e.g. one trained with model.target_order "
                        "= right_to_left); repeat for several")
    s.add_argument("--rerank-weight", action="append", type=float, default=[], metavar="W",
                   help="the weight of each --rerank model, in order (default 1; choose it on val with "
                        "`seq2seq tune --rerank`)")


def _with_rerankers(translator, args):
    """The translator with the --rerank models of `args` attached."""
    from seq2seq.rerank import Scorer
    from seq2seq.translate import Translator
    if len(args.rerank_weight) > len(args.rerank):
        raise Seq2SeqError(f"{len(args.rerank_weight)} --rerank-weight for {len(args.rerank)} --rerank models")
    weights = args.rerank_weight + [1.0] * (len(args.rerank) - len(args.rerank_weight))
    translator.rerankers = [Scorer(Translator.load(path, translator.device), w) for path, w in zip(args.rerank, weights)]
    return translator


def _decode_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--beam", type=int, help="beam size (1 = greedy; default: the recipe's decode.beam)")
    s.add_argument("--length-penalty", type=float, help="GNMT alpha")
    s.add_argument("--coverage-penalty", type=float, help="GNMT beta")
    s.add_argument("--batch-tokens", type=int, help="source tokens per batch (beams included)")
    s.add_argument("--max-len-a", type=float)
    s.add_argument("--max-len-b", type=int)
    s.add_argument("--no-repeat-ngram", type=int)
    _precision_option(s)


def _precision_option(s: argparse.ArgumentParser) -> None:
    s.add_argument("--precision", choices=DECODE_PRECISIONS,
                   help="decode.precision: the products' format (default: the recipe's, auto)")


def _option(name: str) -> str:
    """How messages name a decode setting given on the command line."""
    return f"--{name.replace('_', '-')} (decode.{name})"


def _decode_kwargs(args) -> dict:
    """The decode options given, range-checked by config before any model is loaded."""
    from seq2seq.config import check_decode
    names = ("beam", "length_penalty", "coverage_penalty", "batch_tokens", "max_len_a", "max_len_b",
             "no_repeat_ngram", "nbest", "precision")
    return check_decode({name: getattr(args, name, None) for name in names}, key=_option)


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
    settings = args.set + ([f'train.precision="{args.precision}"'] if args.precision else [])
    cfg = config.load(args.recipe, settings)
    try:
        run(cfg, _expdir(args), args.data_dir, args.resume)
    except Interrupted as e:
        print(f"seq2seq: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def cmd_translate(args) -> int:
    from seq2seq import corpus
    from seq2seq.translate import Translator
    decode = _decode_kwargs(args)
    translator = _with_rerankers(Translator.load(args.model, args.device), args)
    translator.decode_config(**decode)  # validate before reading input
    src = corpus.open_binary(args.input) if args.input else sys.stdin.buffer
    if args.attention_dir:
        from seq2seq.plot import require_matplotlib
        require_matplotlib()  # before any output is written
    tmp = Path(args.output).with_name(f".{Path(args.output).name}.tmp{os.getpid()}") if args.output else None
    try:
        out = open(tmp, "w", encoding="utf-8") if tmp else sys.stdout
    except OSError as e:
        if args.input:
            src.close()
        raise Seq2SeqError(f"{args.output}: cannot write ({e.strerror})") from None
    name, number = args.input or "<stdin>", 0
    hint = "; use --encoding-errors replace to go on" if args.encoding_errors == "strict" else ""
    try:
        with src:
            for lines in corpus.read_line_chunks(src, args.buffer_lines, name, args.encoding_errors, hint):
                _write_translations(out, translator, lines, number, args, decode)
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


def _write_translations(out, translator, lines: list[str], first: int, args, decode: dict) -> None:
    if not (args.nbest or args.attention_dir):
        out.writelines(h + "\n" for h in translator.translate(lines, **decode))
        return
    maps = Path(args.attention_dir) if args.attention_dir else None
    details = translator.translate_with_details(lines, return_attention=maps is not None, **decode)
    for i, hyps in enumerate(details):
        if args.nbest:  # always K entries; an empty line's first is the empty translation
            entries = [(t.text, t.score) for t in hyps] or [("", 0.0)]
            entries += [("", float("-inf"))] * (args.nbest - len(entries))
            out.writelines(f"{first + i} ||| {text} ||| {score:.4f}\n" for text, score in entries)
        else:
            out.write((hyps[0].text if hyps else "") + "\n")
        if maps is not None and hyps and hyps[0].attention is not None:  # chunked long lines have none
            from seq2seq.plot import attention_map
            maps.mkdir(parents=True, exist_ok=True)
            t = hyps[0]
            attention_map(t.attention.numpy(), t.src_tokens + ["</s>"], t.tokens + ["</s>"], maps / f"{first + i}.png")


def cmd_score(args) -> int:
    from seq2seq import corpus, scoring  # no torch: scoring starts in a fraction of a second
    if args.hyp:
        hyps, name = corpus.read_lines(args.hyp), args.hyp
    else:
        hyps, name = corpus.split_lines(sys.stdin.buffer.read(), "<stdin>"), "<stdin>"
    scores = scoring.score_files(args.ref, hyps, name, lowercase=args.lowercase, tokenize=args.tokenize)
    print(json.dumps(scores, indent=2) if args.json else scoring.format_scores(scores))
    return 0


def cmd_evaluate(args) -> int:
    from seq2seq import evaluate
    from seq2seq.translate import Translator
    decode = _decode_kwargs(args)
    translator = _with_rerankers(Translator.load(args.model, args.device), args)
    card = evaluate.evaluate_split(translator, args.split, args.data_dir, **decode)
    print(f"{args.split}: BLEU = {card['bleu']:.2f}  ({card['bleu_signature']})")
    print(f"{args.split}: chrF = {card['chrf']:.2f}  ({card['chrf_signature']})")
    print(f"{args.split}: lowercased 13a BLEU = {card['lowercase_13a_bleu']:.2f}; "
          f"{card['sentences_per_second']} sentences/s; results card: {card['card_path']}")
    return 0


def cmd_tune(args) -> int:
    from seq2seq import evaluate
    from seq2seq.config import check_decode
    from seq2seq.translate import Translator
    grid_options = {"beam": "--beams (decode.beam)", "length_penalty": "--length-penalties (decode.length_penalty)"}
    check_decode({"beam": args.beams, "length_penalty": args.length_penalties, "batch_tokens": args.batch_tokens},
                 key=lambda name: grid_options.get(name) or _option(name))
    translator = Translator.load(args.model, args.device)
    reranker = None
    if any(not 0 <= w <= 10 for w in args.rerank_weights):
        raise Seq2SeqError(f"--rerank-weights must be from 0 to 10, got {' '.join(f'{w:g}' for w in args.rerank_weights)}")
    if args.rerank:
        from seq2seq.rerank import Scorer
        reranker = Scorer(Translator.load(args.rerank, args.device), 1.0)
    print(f"{'beam':>4} {'length penalty':>14}{' rerank weight' if reranker else ''} {'BLEU':>6} {'chrF':>6} "
          f"{'sent/s':>7}")

    def show(r: dict) -> None:
        lp = "-" if r["length_penalty"] is None else f"{r['length_penalty']:g}"
        weight = "" if reranker is None else f"{'-' if r['rerank_weight'] is None else r['rerank_weight']:>14}"
        print(f"{r['beam']:>4} {lp:>14}{weight} {r['bleu']:>6.2f} {r['chrf']:>6.2f} "
              f"{r['sentences_per_second']:>7.1f}", flush=True)

    kw = {name: getattr(args, name) for name in ("batch_tokens", "precision") if getattr(args, name) is not None}
    card = evaluate.tune(translator, args.beams, args.length_penalties, args.data_dir, progress=show,
                         reranker=reranker, rerank_weights=args.rerank_weights, **kw)
    best = card["best"]
    flags = f"--beam {best['beam']}" + ("" if best["length_penalty"] is None
                                        else f" --length-penalty {best['length_penalty']:g}")
    if best.get("rerank_weight"):
        flags += f" --rerank {args.rerank} --rerank-weight {best['rerank_weight']:g}"
    flags += f" --precision {args.precision}" if args.precision else ""
    print(f"best on {card['source']}: {flags} (BLEU {best['bleu']:.2f}, {card['bleu_signature']}); "
          f"grid: {card['card_path']}")
    print(f"then: seq2seq evaluate {' '.join(args.model)} {flags}")
    return 0


def cmd_plot(args) -> int:
    from seq2seq.plot import learning_curves
    learning_curves([Path(d) for d in args.expdir], Path(args.output), args.x)
    print(f"wrote {args.output}")
    return 0


def cmd_attention(args) -> int:
    from seq2seq.translate import Translator
    decode = _decode_kwargs(args)
    translator = Translator.load(args.model)
    (nbest,) = translator.translate_with_details([args.sentence], return_attention=True, **decode)
    if not nbest:
        raise Seq2SeqError("the sentence is empty")
    t = nbest[0]
    if t.attention is None:
        raise Seq2SeqError("the sentence is longer than decode.max_source_len pieces: it is translated in "
                           "chunks and has no single attention map")
    src, tgt = t.src_tokens + ["</s>"], t.tokens + ["</s>"]
    if args.json:
        print(json.dumps({"translation": t.text, "source_tokens": src, "target_tokens": tgt,
                          "attention": t.attention.tolist()}, ensure_ascii=False))
        return 0
    from seq2seq.plot import attention_map
    attention_map(t.attention.numpy(), src, tgt, Path(args.output))
    print(f"{t.text}\nwrote {args.output}")
    return 0


def cmd_serve(args) -> int:
    if not 0 <= args.port <= 65535:
        raise Seq2SeqError(f"--port must be from 0 to 65535, got {args.port}")
    for flag in ("timeout", "header_timeout"):
        if not 0 < getattr(args, flag) <= 3600:
            raise Seq2SeqError(f"--{flag.replace('_', '-')} must be > 0 and <= 3600 seconds, got {getattr(args, flag):g}")
    if not 0 <= args.max_wait_ms <= 1000:
        raise Seq2SeqError(f"--max-wait-ms must be from 0 to 1000, got {args.max_wait_ms:g}")
    if args.max_lines > args.max_queue_lines:
        raise Seq2SeqError(f"--max-lines ({args.max_lines}) must be <= --max-queue-lines ({args.max_queue_lines}), "
                           "else a request of that many lines could never be queued")
    try:
        from seq2seq.serve import app
    except ModuleNotFoundError as e:
        raise Seq2SeqError(f"seq2seq serve needs {e.name}: pip install 'seq2seq[serve]'") from None
    from seq2seq.serve.protocol import Limits
    from seq2seq.translate import Translator
    limits = Limits(**{name: getattr(args, name) for name in SERVE_LIMITS})

    def load() -> Translator:
        translator = Translator.load(args.model, args.device)
        if args.precision:
            translator.config = dataclasses.replace(
                translator.config, decode=translator.decode_config(precision=args.precision))
        translator.decoding_model(translator.config.decode.precision)  # made now, not at the first request
        return translator

    app.serve(load, args.host, args.port, limits, args.threads, args.access_log, tuple(args.allowed_host),
              tuple(args.allowed_origin))
    return 0


def cmd_average(args) -> int:
    from seq2seq import checkpoint
    if args.last is not None:
        if len(args.inputs) != 1 or not Path(args.inputs[0]).is_dir():
            raise Seq2SeqError("--last N takes exactly one experiment directory")
        paths = checkpoint.step_checkpoints(Path(args.inputs[0]))[-args.last:]
        if len(paths) < args.last:
            raise Seq2SeqError(f"{args.inputs[0]}: only {len(paths)} step checkpoints kept, asked for {args.last}")
    else:
        paths = [checkpoint.resolve(p) for p in args.inputs]
    checkpoint.save(checkpoint.average(paths), Path(args.output))
    print(f"averaged {len(paths)} checkpoints into {args.output}: {', '.join(p.name for p in paths)}")
    return 0


COMMANDS = {"prepare": cmd_prepare, "train": cmd_train, "translate": cmd_translate,
            "score": cmd_score, "evaluate": cmd_evaluate, "tune": cmd_tune, "plot": cmd_plot,
            "attention": cmd_attention, "average": cmd_average, "serve": cmd_serve}


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
    except OSError as e:  # full disk, unwritable directory, ...: the user's to fix, not a bug
        print(f"error: {e.filename or ''}{': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
