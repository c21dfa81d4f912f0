#!/usr/bin/env bash
# The main job, end to end, on a synthetic corpus in the real layout:
#   synthesize -> prepare.sh (manifests, fbank, tokens) -> train.py -> decode.py -> WER/CER table.
# Each recipe's run_demo.sh calls it from egs/<corpus>/ASR as `demo.sh <corpus>`.
# DEMO_SCALE=default (18-21 minutes on 2 CPU cores) or large (93-95 minutes on 2 CPU cores, measured
# from fresh clones; see egs/librispeech/ASR/RESULTS.md).
# Any variable below can be overridden from the environment, e.g. NUM_EPOCHS=3 ./run_demo.sh.

set -euo pipefail

corpus=$1
scale=${DEMO_SCALE:-default}

case "$scale" in
  default)
    : "${SYNTH_HOURS:=1.0}" "${SYNTH_DEV_HOURS:=0.05}" "${SYNTH_TEST_HOURS:=0.1}"
    : "${NUM_EPOCHS:=7}" "${AVG:=3}" "${MAX_DURATION:=15}"
    ;;
  large)
    : "${SYNTH_HOURS:=4}" "${SYNTH_DEV_HOURS:=0.3}" "${SYNTH_TEST_HOURS:=0.5}"
    : "${NUM_EPOCHS:=10}" "${AVG:=3}" "${MAX_DURATION:=15}"
    ;;
  *)
    echo "Unknown DEMO_SCALE=$scale (use default or large)" >&2
    exit 1
    ;;
esac
: "${ENCODER_CONFIG:=tiny}" "${BASE_LR:=0.045}"
: "${LR_BATCHES:=2000}" "${LR_EPOCHS:=4}" "${SYNTH_VOCAB:=500}" "${SYNTH_SEED:=0}"
: "${EXP_DIR:=zipformer_cif/exp-demo-$scale}" "${NUM_PLOTS:=3}"
# A run of a few hundred batches: a small reference duration takes the encoder's
# regularisation schedules (dropout, layer skipping) to their final values early in it.
: "${REF_DURATION:=0.1}" "${AVERAGE_PERIOD:=10}" "${WARM_STEP:=300}" "${NUM_THREADS:=2}"
# Weight of the CTC head's score in the joint method's row (chosen on dev-clean, RESULTS.md).
: "${CTC_WEIGHT:=0.3}"
# Where the CIF vectors are cut: at the CTC head's spikes (ctc) or by integrate-and-fire (fire);
# ctc took the default demo's greedy WER from 36 to 26 (RESULTS.md, "Do the CIF vectors carry
# their token?").
: "${CIF_SEGMENTATION:=ctc}"
# The CE decoders (cif_ce_ar, cif_ce_nar) over CTC-cut vectors add this times the CTC head's
# log-probs at each vector's spike to their logits (--ce-ctc-prior-scale), and also learn their
# tokens without it with this weight (--ce-prior-free-scale; docs/cif.md). 0 turns both off.
: "${CE_CTC_PRIOR_SCALE:=1.0}" "${CE_PRIOR_FREE_SCALE:=1.0}"
# Extra train.py options for experiments, e.g. TRAIN_OPTS="--cif-align-loss-scale 1.0".
: "${TRAIN_OPTS:=}"
# Extra synthesis options (python -m icefall_cif.synth --help), e.g. SYNTH_OPTS="--bigram-successors 4"
# for sentences of a random bigram language instead of independent words (with BPE_VOCAB=400: an
# hour of them has too few word types for 500 pieces).
: "${SYNTH_OPTS:=}"

# A CE decoder over CTC-cut vectors with the CTC head as a prior (below) on both corpora: NAR on
# LibriSpeech, where its best method is 0.9 x its CTC head's WER and sherpa-onnx runs it; AR on
# AISHELL, where only the AR decoder gets there (each recipe's RESULTS.md, "The CTC head as a
# prior"); sherpa-onnx has no layout for it, so the AISHELL demo decodes its export with
# onnxruntime. DECODER_TYPE=cif_transducer was the default of both before session 10.
case "$corpus" in
  librispeech)
    : "${DECODER_TYPE:=cif_ce_nar}"
    : "${BPE_VOCAB:=500}"
    lang_dir=data/lang_bpe_$BPE_VOCAB
    prepare_opts=(--vocab-sizes "$BPE_VOCAB")
    synth_tree=download/LibriSpeech
    test_set=test-clean
    metric=WER
    ;;
  aishell)
    : "${DECODER_TYPE:=cif_ce_ar}"
    lang_dir=data/lang_char
    prepare_opts=()
    synth_tree=download/aishell
    test_set=test
    metric=CER
    ;;
  *)
    echo "Unknown corpus '$corpus' (librispeech or aishell)" >&2
    exit 1
    ;;
esac

python=python3
if [ -x ../../../.venv/bin/python3 ]; then
  # Not readlink -f: resolving the venv's python symlink would leave the venv.
  python=$(cd ../../.. && pwd)/.venv/bin/python3
fi

log() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (demo) $*"; }
declare -A stage_seconds
stage_order=()
timed() {
  local name=$1
  shift
  log "==================== $name ===================="
  local start=$SECONDS
  "$@"
  stage_seconds[$name]=$((SECONDS - start))
  stage_order+=("$name")
  log "$name took ${stage_seconds[$name]} s"
}

device=cpu
if "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  device=gpu
fi
log "Demo of the $corpus recipe (DEMO_SCALE=$scale, on $device): $SYNTH_HOURS h of synthetic speech, " \
    "$NUM_EPOCHS epochs of the '$ENCODER_CONFIG' Zipformer with a $DECODER_TYPE decoder, $NUM_THREADS CPU threads"

# prepare.sh skips every stage whose done-marker exists, so a corpus synthesized with other
# settings (say, by the default scale before DEMO_SCALE=large) would silently be reused.
corpus_settings="$corpus hours=$SYNTH_HOURS dev=$SYNTH_DEV_HOURS test=$SYNTH_TEST_HOURS seed=$SYNTH_SEED vocab=$SYNTH_VOCAB${SYNTH_OPTS:+ opts=$SYNTH_OPTS}"
stamp=data/.demo-corpus
if [ -e data/.corpus.done ] && [ "$(cat "$stamp" 2>/dev/null)" != "$corpus_settings" ]; then
  if [ ! -e "$stamp" ]; then
    echo "$PWD/data was prepared from a corpus the demo did not make; run the demo in a fresh" \
      "copy of the recipe, or remove data/ (and download/) to let it start over." >&2
    exit 1
  fi
  log "data/ holds the demo corpus for '$(cat "$stamp")'; rebuilding it for '$corpus_settings'"
  rm -rf data "$synth_tree"
fi

timed "data: synthesize + prepare.sh" ./prepare.sh --stage 0 --stop-stage 3 --synthetic 1 \
  --synth-hours "$SYNTH_HOURS" --synth-dev-hours "$SYNTH_DEV_HOURS" --synth-test-hours "$SYNTH_TEST_HOURS" \
  --synth-seed "$SYNTH_SEED" --synth-opts "--vocab-size $SYNTH_VOCAB $SYNTH_OPTS" --perturb-speed 0 \
  --python "$python" "${prepare_opts[@]}"

echo "$corpus_settings" > "$stamp"

model_opts=(--encoder-config "$ENCODER_CONFIG" --decoder-type "$DECODER_TYPE" --cif-segmentation "$CIF_SEGMENTATION")
if [ "$DECODER_TYPE" = cif_transducer ]; then
  # icefall's 2000-batch warm-up of the pruned loss is longer than the whole default demo.
  model_opts+=(--warm-step "$WARM_STEP")
fi
case "$DECODER_TYPE" in
  cif_ce_ar|cif_ce_nar)
    if [ "$CIF_SEGMENTATION" = ctc ] && [ "$CE_CTC_PRIOR_SCALE" != 0 ]; then
      model_opts+=(--ce-ctc-prior-scale "$CE_CTC_PRIOR_SCALE" --ce-prior-free-scale "$CE_PRIOR_FREE_SCALE")
    fi ;;
esac
# decode.py rebuilds the model from the architecture saved in the checkpoints: no model options.

# Two intra-op threads: alone on the 2-core machine the tiny model trains at 28.6x real time,
# against 19.1x with one (BENCHMARKS.md). On a machine other jobs share, OpenMP threads
# spin-waiting for a descheduled peer can make it many times slower: use NUM_THREADS=1 there.
timed "train" env OMP_NUM_THREADS="$NUM_THREADS" "$python" ./zipformer_cif/train.py "${model_opts[@]}" \
  --lang-dir "$lang_dir" --exp-dir "$EXP_DIR" --num-epochs "$NUM_EPOCHS" \
  --max-duration "$MAX_DURATION" --base-lr "$BASE_LR" --lr-batches "$LR_BATCHES" --lr-epochs "$LR_EPOCHS" \
  --warmup-batches 100 --average-period "$AVERAGE_PERIOD" --save-every-n 200 --keep-last-k 3 --log-interval 20 \
  --num-workers 1 --enable-spec-aug 0 --start-epoch 1 --ref-duration "$REF_DURATION" --num-threads "$NUM_THREADS" \
  $TRAIN_OPTS

methods=(greedy_search)
# The joint CIF + CTC method: the CIF decoder rescores the CTC head's n-best (cif_rescoring; a CE
# decoder scores each hypothesis on vectors cut at its own alignment, so it needs the CTC cut);
# over integrate-and-fire vectors the CE decoders rescore their own beam with the CTC head.
case "$DECODER_TYPE" in
  cif_transducer) methods+=(modified_beam_search cif_rescoring) ;;
  # Mask-CTC's greedy_search is mask_ctc_greedy; its beam is the NAR beam over the unsure tokens.
  mask_ctc) methods+=(mask_ctc_beam_search) ;;
  *) if [ "$CIF_SEGMENTATION" = ctc ]; then methods+=(beam_search cif_rescoring)
     else methods+=(beam_search joint_beam_search); fi ;;
esac
# The CTC head on the encoder, for comparison with the CIF decoder.
methods+=(ctc_greedy_search)
for method in "${methods[@]}"; do
  plots=0
  [ "$method" = greedy_search ] && plots=$NUM_PLOTS
  beam=4
  # An 8-best from the CTC head leaves the CIF decoder more to choose from (RESULTS.md).
  [ "$method" = cif_rescoring ] && beam=8
  timed "decode: $method" "$python" ./zipformer_cif/decode.py \
    --lang-dir "$lang_dir" --exp-dir "$EXP_DIR" --epoch "$NUM_EPOCHS" --avg "$AVG" --use-averaged-model 1 \
    --max-duration 200 --decoding-method "$method" --beam-size "$beam" --num-paths "$beam" \
    --ctc-weight "$CTC_WEIGHT" --num-plots "$plots" --num-threads "$NUM_THREADS"
done

timed "export" "$python" ./zipformer_cif/export.py --exp-dir "$EXP_DIR" --epoch "$NUM_EPOCHS" --avg "$AVG" \
  --use-averaged-model 1 --tokens "$lang_dir/tokens.txt"
# export-onnx.py has no layout for Mask-CTC's iterative search (docs/deployment.md).
onnx_cmd=()
if [ "$DECODER_TYPE" != mask_ctc ]; then
  timed "export-onnx" "$python" ./zipformer_cif/export-onnx.py --exp-dir "$EXP_DIR" --epoch "$NUM_EPOCHS" \
    --avg "$AVG" --use-averaged-model 1 --tokens "$lang_dir/tokens.txt" --int8 1

  # The runtime that leaves the repository: sherpa-onnx for the transducer and the NAR decoder,
  # onnxruntime with our search for the AR decoder (no sherpa-onnx layout fits it).
  onnx_suffix="epoch-$NUM_EPOCHS-avg-$AVG"
  case "$DECODER_TYPE" in
    cif_transducer) onnx_opts=(--runtime sherpa-onnx
      --encoder-model-filename "$EXP_DIR/encoder-$onnx_suffix.onnx"
      --decoder-model-filename "$EXP_DIR/decoder-$onnx_suffix.onnx"
      --joiner-model-filename "$EXP_DIR/joiner-$onnx_suffix.onnx") ;;
    cif_ce_nar) onnx_opts=(--runtime sherpa-onnx --model-filename "$EXP_DIR/model-$onnx_suffix.onnx") ;;
    *) onnx_opts=(--runtime onnxruntime
      --encoder-model-filename "$EXP_DIR/encoder-$onnx_suffix.onnx"
      --decoder-model-filename "$EXP_DIR/decoder-$onnx_suffix.onnx") ;;
  esac
  onnx_cmd=("$python" ./zipformer_cif/onnx_pretrained.py --tokens "$lang_dir/tokens.txt" "${onnx_opts[@]}")
  # awk reads to the end: `head` would close the pipe early and, under pipefail, fail the demo.
  sample=$(find "$synth_tree" -path "*/$test_set/*" \( -name "*.flac" -o -name "*.wav" \) | sort | awk "NR == 1")
  [ -n "$sample" ] && timed "onnx decode of one file" "${onnx_cmd[@]}" "$sample"
fi

echo
log "==================== Results ($metric on synthetic held-out speakers and sentences) ===================="
printf "%-24s %-12s %8s\n" "method" "test set" "$metric"
for method in "${methods[@]}"; do
  for summary in "$EXP_DIR/$method"/wer-summary-*.txt; do
    set_name=$(basename "$summary" .txt | sed -e 's/^wer-summary-//' -e 's/-epoch-.*//' -e 's/-iter-.*//')
    rate=$(awk 'NR==2 {print $2}' "$summary")
    printf "%-24s %-12s %8.2f\n" "$method" "$set_name" "$rate"
  done
done
echo
log "Wall time per stage:"
for name in "${stage_order[@]}"; do
  printf "  %-32s %6d s\n" "$name" "${stage_seconds[$name]}"
done
log "Result files: $PWD/$EXP_DIR/<method>/{recogs,errs,wer-summary}-*.txt"
log "Training log and tensorboard: $PWD/$EXP_DIR/log, $PWD/$EXP_DIR/tensorboard"
for plot_dir in "$EXP_DIR"/greedy_search/cif-plots-"$test_set"; do
  [ -d "$plot_dir" ] && log "CIF weight plots: $PWD/$plot_dir/*.png"
done
log "Transcribe any sound file with the exported model (PyTorch, then ONNX):"
echo "  cd $PWD && $python ./zipformer_cif/pretrained.py --checkpoint $EXP_DIR/pretrained.pt --timestamps 1 FILE..."
if [ ${#onnx_cmd[@]} -gt 0 ]; then
  echo "  cd $PWD && ${onnx_cmd[*]} FILE..."
fi
