"""recipes/ablation.py's report: the table and the per-seed curves it writes from finished runs."""

import importlib.util
import sys
from argparse import Namespace
from pathlib import Path

spec = importlib.util.spec_from_file_location("ablation", Path(__file__).parent.parent / "recipes/ablation.py")
ablation = importlib.util.module_from_spec(spec)
sys.modules["ablation"] = ablation  # its dataclasses look their module up
spec.loader.exec_module(ablation)


def run(seed: int, bleu: float, curve: list[tuple[int, float, float]]) -> dict:
    return {"val": bleu, "seed": seed, "precision": "bfloat16", "params": 1234, "minutes": 10.0 + seed,
            "best_step": 3000, "tok_per_s": 5000.0, "curve": curve}


def args(valid_every: int | None) -> Namespace:
    return Namespace(size=None, steps=3000, batch_tokens=2000, lr=0.002, grid="low_resource", seeds=[1, 2],
                     splits=("val",), valid_every=valid_every)


def test_table_gives_mean_half_range_and_each_seed():
    curve = [(s, 30.0, 2.0) for s in range(500, 3001, 500)]
    rows = {"base": [run(1, 37.0, curve), run(2, 38.0, curve)], "dropout 0.3": [run(1, 39.0, curve)]}
    table = ablation.write_table(rows, args(None))
    assert "| base | 2 | 37.50 ± 0.50 | 37.00 (s1) / 38.00 (s2) | 3000 ± 0 | 11.5 ± 0.5 |" in table
    assert "| dropout 0.3 | 1 | 39.00 | 39.00 (s1) |" in table
    assert "Validation during training" not in table  # validated once: no curve table


def test_curves_show_last_four_validations_and_lowest_loss_only_when_lower():
    rising = [(500, 20.0, 2.5), (1000, 30.0, 2.0), (1500, 33.0, 1.9), (2000, 34.0, 1.7), (2500, 35.5, 1.6)]
    overfit = [(1000, 30.0, 2.0), (2000, 36.0, 1.7), (3000, 35.0, 1.8)]
    lines = ablation.write_curves({"a": [run(1, 35.5, rising)], "b": [run(2, 36.0, overfit)]})
    assert "| a | 1 | 30.0 (1,000), 33.0 (1,500), 34.0 (2,000), 35.5 (2,500) | 1.600 |" in lines
    assert "| b | 2 | 30.0 (1,000), 36.0 (2,000), 35.0 (3,000) | 1.800 (lowest 1.700 at 2,000) |" in lines
    assert "Validation during training" in ablation.write_table({"a": [run(1, 35.5, rising)]}, args(500))
