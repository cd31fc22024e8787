"""How far above its bar every test assertion on a trained level sits, on this machine.

    python bench/training_margins.py        # about a minute on 2 cores

Float results differ between CPU generations, so a test that asserts a level reached after N
steps must clear its bar with room to spare on any of them. This trains the two fixtures the
suite trains (tests/conftest.py: the session reverse-task model and test_train's one-layer
overfit run) exactly as the tests do, then prints each audited assertion's value and bar, and
the step at which each run first reached validation BLEU 100 against the steps it trains for.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

from common import ROOT, cpu_name

sys.path.insert(0, str(ROOT / "tests"))  # the fixtures below are the test suite's own

from conftest import (OVERFIT_SETTINGS, OVERFIT_STEPS, REVERSE_STEPS, make_reverse_task,  # noqa: E402
                      reverse_rows)

from seq2seq import checkpoint, config  # noqa: E402
from seq2seq.train import run  # noqa: E402
from seq2seq.translate import Translator  # noqa: E402


def records(expdir: Path, kind: str) -> list[dict]:
    lines = (expdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def exact(hyps: list[str], refs: list[str]) -> float:
    return sum(h == r for h, r in zip(hyps, refs)) / len(refs)


def first_perfect(expdir: Path) -> int | None:
    return next((r["step"] for r in records(expdir, "valid") if r["valid_bleu"] >= 100 - 1e-9), None)


def main() -> None:
    rows = []  # (test, assertion, value, bar)
    quiet = contextlib.redirect_stdout(io.StringIO())  # the trainings' logs
    with tempfile.TemporaryDirectory() as tmp, quiet:
        root = Path(tmp)
        reverse = root / "reverse" / "exp"
        run(config.load(make_reverse_task(root / "reverse" / "data")), reverse)
        translator = Translator.load(reverse)
        src, tgt = reverse_rows(200, seed=2024)
        for beam in (1, 3):
            rows.append(("test_translate.py::test_translate_solves_the_reverse_task",
                         f"exact match, beam {beam}", exact(translator.translate(src, beam=beam), tgt), ">= 0.9"))
        progress = checkpoint.load(reverse / "checkpoints" / "best.pt")["progress"]
        rows.append(("test_cli.py::test_evaluate_writes_a_results_card, test_extras.py::test_results_card_"
                     "training_fields...", "best validation BLEU", progress["best_bleu"], "> 0"))
        reverse_perfect = first_perfect(reverse)

        overfit = root / "overfit" / "exp"
        recipe = make_reverse_task(root / "overfit" / "data", steps=OVERFIT_STEPS)
        run(config.load(recipe, OVERFIT_SETTINGS), overfit)
        data = root / "overfit" / "data"
        hyps = Translator.load(overfit).translate((data / "test.src").read_text().splitlines(), beam=1)
        rows.append(("test_train.py::test_overfits_reverse_task", "exact match, beam 1",
                     exact(hyps, (data / "test.tgt").read_text().splitlines()), ">= 0.95"))
        losses = [r["loss"] for r in records(overfit, "train")]
        rows.append(("test_train.py::test_metrics_checkpoints_and_config_written", "last / first training loss",
                     losses[-1] / losses[0], "< 0.2"))
        overfit_perfect = first_perfect(overfit)

    print(f"cpu: {cpu_name()}", file=sys.stdout)
    for test, what, value, bar in rows:
        print(f"{test}\n    {what}: {value:.4g} (bar {bar})")
    print(f"reverse model: validation BLEU 100 first at step {reverse_perfect} of {REVERSE_STEPS}")
    print(f"overfit run: validation BLEU 100 first at step {overfit_perfect} of {OVERFIT_STEPS}")


if __name__ == "__main__":
    main()
