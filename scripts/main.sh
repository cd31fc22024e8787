#!/usr/bin/env bash
# The main job, end to end: environment, Multi30K (downloaded, or a local copy from
# $SEQ2SEQ_DATA_DIR / --data-dir), train the CPU recipe (~20 minutes on 2 cores),
# decode test_2016_flickr greedy and with beam 5, and print sacreBLEU and chrF.
# Re-running resumes an interrupted training from its last checkpoint.
#   usage: scripts/main.sh [--data-dir DIR]     (RECIPE=... OUT=... to change them)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
RECIPE=${RECIPE:-recipes/multi30k_de_en_cpu.toml}
OUT=${OUT:-exp/$(basename "$RECIPE" .toml)}
seq2seq=.venv/bin/seq2seq

"$seq2seq" prepare "$RECIPE" --out "$OUT" "$@"
if [ -f "$OUT/checkpoints/last.pt" ]; then
    "$seq2seq" train "$RECIPE" --out "$OUT" --resume "$@"
else
    "$seq2seq" train "$RECIPE" --out "$OUT" "$@"
fi
echo "== test_2016_flickr, greedy"
"$seq2seq" evaluate "$OUT" --split test_2016_flickr --beam 1 "$@"
echo "== test_2016_flickr, beam 5"
"$seq2seq" evaluate "$OUT" --split test_2016_flickr --beam 5 "$@"
