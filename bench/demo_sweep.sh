#!/usr/bin/env bash
# Train (and greedy-decode) variants of the default demo's model side by side, to compare
# settings under the demo's budget of updates. Run from the repository root after `make demo`
# has prepared egs/librispeech/ASR/data (and `./prepare.sh --stage 3 --stop-stage 3
# --vocab-sizes "256 500"` for both token sets):
#
#   bench/demo_sweep.sh OUT_DIR EPOCHS TIME_LIMIT_S VARIANT...
#   e.g. bench/demo_sweep.sh /tmp/sweep 7 3600 ar256 trans500 trans500_md15
#
# Every variant runs in its own process (1 intra-op thread, 1 data-loading worker); on a GPU
# machine all of them share the GPU. Training is deterministic for a given device, so the
# validation WERs, not the wall times, are what to compare. After TIME_LIMIT_S the unfinished
# runs are stopped and the summary shows the epochs they completed.
set -u
if [ $# -lt 4 ]; then
  sed -n '2,13p' "$0"
  exit 1
fi
out=$(realpath -m "$1"); epochs=$2; limit=$3; shift 3
cd "$(dirname "$0")/../egs/librispeech/ASR"
python=python3
[ -x ../../../.venv/bin/python3 ] && python=$(cd ../../.. && pwd)/.venv/bin/python3

ar="--decoder-type cif_ce_ar"
ar256="$ar --lang-dir data/lang_bpe_256"
trans="--decoder-type cif_transducer --warm-step 300"
trans500="$trans --lang-dir data/lang_bpe_500"
declare -A model_args=(
  [ar256]="$ar256"
  [ar256_q5]="$ar256 --quantity-loss-scale 5"
  [ar256_ds1]="$ar256 --cif-downsample 1"
  [ar256_md15]="$ar256"
  [ar256_ctc1]="$ar256 --ctc-loss-scale 1.0"
  [ar256_noreg]="$ar256 --label-smoothing 0 --ce-decoder-dropout 0 --cif-dropout 0"
  [ar256_lr08]="$ar256"
  [ar256_lrfast]="$ar256"
  [ar256_conv5]="$ar256 --cif-conv-width 5"
  [ar256_dense]="$ar256 --cif-weight-type dense"
  [ar256_fp16]="$ar256"
  [ar256_small]="$ar256 --encoder-config small"
  [nar256]="--decoder-type cif_ce_nar --lang-dir data/lang_bpe_256"
  [nar256_q5]="--decoder-type cif_ce_nar --lang-dir data/lang_bpe_256 --quantity-loss-scale 5"
  [ar500]="$ar --lang-dir data/lang_bpe_500"
  [ar500_md15]="$ar --lang-dir data/lang_bpe_500"
  [trans256]="$trans --lang-dir data/lang_bpe_256"
  [trans256_seed7]="$trans --lang-dir data/lang_bpe_256"
  [trans256_md15]="$trans --lang-dir data/lang_bpe_256"
  [trans500]="$trans500"
  [trans500_md15]="$trans500"
  [trans500_md20]="$trans500"
  [trans500_md10]="$trans500"
)
declare -A train_args=(
  [ar256_md15]="--max-duration 15" [ar256_lr08]="--base-lr 0.08"
  [ar256_lrfast]="--lr-batches 500 --lr-epochs 2" [ar256_fp16]="--use-fp16 1"
  [ar500_md15]="--max-duration 15" [trans256_seed7]="--seed 7" [trans256_md15]="--max-duration 15"
  [trans500_md15]="--max-duration 15" [trans500_md20]="--max-duration 20" [trans500_md10]="--max-duration 10"
)
for v in "$@"; do
  [ -n "${model_args[$v]+x}" ] || { echo "Unknown variant '$v'; known: ${!model_args[*]}" >&2; exit 1; }
done

mkdir -p "$out"
pids=()
for v in "$@"; do
  model="--encoder-config tiny ${model_args[$v]}"
  # The demo's training options; a variant's own come last and win.
  train="--max-duration 30 --base-lr 0.045 --lr-batches 2000 --lr-epochs 4 ${train_args[$v]:-}"
  (
    OMP_NUM_THREADS=1 "$python" ./zipformer_cif/train.py $model $train --exp-dir "$out/$v" \
      --num-epochs "$epochs" --warmup-batches 100 --average-period 10 --save-every-n 100000 \
      --keep-last-k 1 --log-interval 50 --num-workers 1 --enable-spec-aug 0 --ref-duration 0.1 \
      > "$out/$v.train.log" 2>&1 &&
    OMP_NUM_THREADS=1 "$python" ./zipformer_cif/decode.py --exp-dir "$out/$v" --epoch "$epochs" \
      --avg $((epochs > 3 ? 3 : 1)) --use-averaged-model $((epochs > 3 ? 1 : 0)) \
      --max-duration 200 --decoding-method greedy_search > "$out/$v.decode.log" 2>&1
  ) &
  pids+=($!)
done

start=$SECONDS
while [ $((SECONDS - start)) -lt "$limit" ]; do
  running=0
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && running=1; done
  [ $running = 0 ] && break
  sleep 5
done
for v in "$@"; do pkill -f -- "--exp-dir $out/$v " || true; done

echo "elapsed $((SECONDS - start)) s"
for v in "$@"; do
  echo "== $v: ${model_args[$v]} ${train_args[$v]:-}"
  grep -o "Epoch [0-9]*, validation.*" "$out/$v.train.log" | sed -e 's/ctc_loss.*greedy/greedy/'
  grep -o "[0-9.]*x real time" "$out/$v.train.log" | tail -1
  for summary in "$out/$v"/greedy_search/wer-summary-*.txt; do
    [ -e "$summary" ] && echo "$(basename "$summary" .txt): $(awk 'NR==2 {print $2}' "$summary")"
  done
  grep -h -m3 -E "Traceback|Error" "$out/$v.train.log" "$out/$v.decode.log" 2>/dev/null
done
