#!/usr/bin/env bash
# `make demo`: tune the bundled SmolLM2-135M on ml-100k as a sequential recommender (one token per
# movie, loss on every movie of each history, LoRA — the Quality recipe), evaluate it on all 943 test
# users, compare with most-popular-unseen and the untuned model (seeded sample), show top-10 for one user.
# Re-running resumes training from its last checkpoint and re-evaluates.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
CFG=${CFG:-recipes/configs/ml100k/smollm2_atomic.yaml}
OUT=${OUT:-runs/demo}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
start=$(date +%s)

echo "== 1/4 fine-tune ($CFG)"
$BIN/accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  recipes/finetune.py --config "$CFG" run.output_dir="$OUT/tuned" run.resume=true
echo "== 2/4 evaluate the tuned model on every test user"
$BIN/python recipes/evaluate.py --config "$CFG" run.output_dir="$OUT/tuned"
echo "== 3/4 evaluate the untuned base model (seeded sample of 100 users)"
$BIN/python recipes/evaluate.py --config "$CFG" run.output_dir="$OUT/base" run.checkpoint=base eval.users=100
echo "== 4/4 top-10 for user 1"
$BIN/python recipes/recommend.py --config "$CFG" run.output_dir="$OUT/tuned" recommend.user_id=1 recommend.k=10

echo
echo "== results (ml-100k, leave-one-out, full ranking over 1,682 items, seen items excluded)"
$BIN/genrec results "$OUT/base/eval_results.json" "$OUT/tuned/eval_results.json"
echo "demo finished in $(( ($(date +%s) - start) / 60 )) min; outputs in $OUT/"
