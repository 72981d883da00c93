#!/usr/bin/env bash
# The one prepared call for a lent GPU (issue 28): CO2-Net (B0), the paper's model (B4) and the
# paper's model with its recommended 200-iteration warm-up (B4_warmup) at full width (2048-d,
# CO2-Net's own widths) over CO2-Net's THUMOS14 schedule (Adam 5e-5, 5,000 iterations, batch 10),
# seeds 0-2, all nine side by side on the one card, checkpoints chosen on
# held-out training videos (best_val) and at the end (last); then seconds per training step of
# each at full width.
#
#   OUT=DIR bash benchmarks/gpu_full_schedule.sh [SECONDS]
#
# SECONDS (default 420) bounds the sweep: runs still going then are stopped, and the report covers
# the finished ones (a stopped run's metrics.jsonl still holds its evaluations so far). Everything
# comes back in DIR as five files: runs.tgz (every run's config.yaml, metrics.jsonl and
# metrics.json, and the sweep's report), sweep.log, steps_B0.json, steps_B4.json and steps.log.
# SMOKE=1 makes it tiny and CPU-only (tests/test_benchmarks.py runs it so).
set -uo pipefail
seconds=${1:-420}
out=${OUT:?set OUT to the folder the results go to}
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
work=$(mktemp -d)
if [[ "${SMOKE:-0}" == 1 ]]; then
  synth=(--preset tiny) device=cpu jobs=2
  train=(train.iterations=4 train.eval_every=2 model.base.embed_dim=32 model.base.attention_dim=16 data.max_seqlen=32)
  bench=(--smoke)
else
  synth=(--preset thumos14) device=cuda jobs=9
  train=(train.eval_every=250)
  bench=(--embed-dims 2048 --iterations 20 --batch-size 10 --max-seqlen 500)
fi
mkdir -p "$out"
python3 -m wtal synth "${synth[@]}" --out "$work/data" > "$out/sweep.log" 2>&1 || { echo "synth failed: $out/sweep.log"; exit 1; }
sweep=(--config "$root/configs/thumos14_synthetic.yaml" --variants "$root/configs/sweeps/convergence_cpu.yaml"
  --rows B0,B4,B4_warmup --seeds 0,1,2 --out "$work/sweep" --compare B0 data.root="$work/data" data.val_fraction=0.2
  train.select=best_val train.device="$device" train.threads=2 train.checkpoint_every=1000 "${train[@]}")
timeout "$seconds" python3 -m wtal sweep --jobs "$jobs" "${sweep[@]}" >> "$out/sweep.log" 2>&1
echo "sweep exit $? (124: stopped at $seconds s)" >> "$out/sweep.log"
python3 -m wtal sweep --report-only "${sweep[@]}" >> "$out/sweep.log" 2>&1
(cd "$work/sweep" && tar czf "$out/runs.tgz" --exclude='*.pt' --exclude='detections*' --exclude='*.log' .)
bench_row() {  # NAME KEY=VALUE...: seconds per training step of one row at the sweep's widths
  local name=$1; shift
  python3 "$root/benchmarks/bench_train.py" "${bench[@]}" --config "$root/configs/thumos14_synthetic.yaml" \
    --data "$work/data" --device "$device" --json "$out/steps_$name.json" $(printf -- '--set %s ' "$@") >> "$out/steps.log" 2>&1
}
bench_row B0 model.ten=off model.bg_loss=false
bench_row B4 model.ten=both
tail -3 "$out/steps.log"
grep -A8 "^| configuration" "$work/sweep/report.md" | head -4
rm -rf "$work"
