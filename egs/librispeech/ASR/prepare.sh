#!/usr/bin/env bash
# LibriSpeech data preparation for the CIF recipes (icefall layout). Run it from egs/librispeech/ASR.
#
#   ./prepare.sh --corpus-dir /data/LibriSpeech            # a local copy of openslr 12
#   ./prepare.sh --synthetic 1 --synth-hours 0.5           # a small espeak-ng corpus, same layout
#   ./prepare.sh --stage 2 --stop-stage 3                  # only some stages
#
# Stages (each skips itself when its done-marker exists; delete the marker to redo it):
#   0  corpus into download/LibriSpeech (link --corpus-dir, or --synthetic 1)  data/.corpus.done
#   1  Lhotse manifests data/manifests (bad utterances skipped and listed)      data/manifests/.librispeech.done
#   2  80-dim fbank cuts data/fbank/librispeech_cuts_<part>.jsonl.gz           data/fbank/.librispeech.done
#   3  sentencepiece unigram data/lang_bpe_<N>/{bpe.model,tokens.txt}          data/lang_bpe_<N>/.done
#   4  LM text data/lm/{train,dev}_text.txt, data/lm/lang_bpe_<N>/*_tokens.txt  data/lm/.librispeech.done
#   5  MUSAN cuts data/fbank/musan_cuts.jsonl.gz (only with --musan-dir)       data/fbank/.musan.done
#   6  token LMs data/lm/<lang dir>/ngram_3gram.arpa (+ rnn_lm.pt with --train-rnn-lm 1)   data/lm/<lang dir>/.ngram.done
#   7  teacher features of a PLM for distillation (only with --plm-dir), per lang dir:
#      data/fbank/librispeech_cuts_<train part>_plm_<lang dir>.jsonl.gz   data/fbank/.plm_<lang dir>.done
# Logs: data/log/prepare-stage-<N>.log. Skipped items: data/manifests/librispeech_skipped.tsv and
# data/lang_bpe_<N>/oov_utterances.tsv.

set -euo pipefail

stage=0
stop_stage=7
num_jobs=$(nproc)
dl_dir=$PWD/download
corpus_dir=""
synthetic=0
synth_hours=""
synth_dev_hours=""
synth_test_hours=""
synth_num_train_utts=""
synth_num_dev_utts=""
synth_num_test_utts=""
synth_seed=0
synth_opts=""
perturb_speed=1
vocab_sizes="500"
musan_dir=""
plm_dir=""
plm_layer=-1
lm_order=3
train_rnn_lm=0
python=python3

help_message="Usage: $0 [options]
  --stage N / --stop-stage M   run stages N..M (default $stage..$stop_stage; see the top of $0)
  --corpus-dir DIR             an existing LibriSpeech (DIR/LibriSpeech/<part>/... or DIR/<part>/...)
  --synthetic 0|1              synthesize a small corpus with espeak-ng instead (default $synthetic)
  --synth-hours H, --synth-dev-hours H, --synth-test-hours H
  --synth-num-train-utts N, --synth-num-dev-utts N, --synth-num-test-utts N
  --synth-seed S               synthetic corpus size and seed (default seed $synth_seed)
  --synth-opts \"...\"           further options for python -m icefall_cif.synth (see its --help)
  --num-jobs J                 parallel jobs (default: $num_jobs)
  --perturb-speed 0|1          add 0.9x/1.1x speed-perturbed train copies (default $perturb_speed)
  --vocab-sizes \"N ...\"        sentencepiece vocabulary sizes (default \"$vocab_sizes\")
  --lm-order N                 order of the token n-gram LM of stage 6 (default $lm_order)
  --train-rnn-lm 0|1           also train an LSTM LM in stage 6 (default $train_rnn_lm)
  --musan-dir DIR              MUSAN (openslr 17) for stage 5, used by --enable-musan
  --plm-dir DIR                a local Hugging Face model directory for stage 7 (teacher features for
                               --acd-loss-scale / --lrd-loss-scale; docs/distillation.md)
  --plm-layer N                its hidden state to store (default $plm_layer = the last)
  --dl-dir DIR                 where the corpus lives (default $dl_dir)
  --python PY                  interpreter with icefall_cif installed (default $python)"

. shared/parse_options.sh || exit 1
. local/prepare_common.sh

mkdir -p data/log
find_python
log "Running $0 --stage $stage --stop-stage $stop_stage (python: $python, dl_dir: $dl_dir)"

if stage_wanted 0; then
  banner 0 "LibriSpeech corpus -> $dl_dir/LibriSpeech"
  if ! already_done data/.corpus.done; then
    get_corpus librispeech LibriSpeech "$dl_dir"
    touch data/.corpus.done
  fi
fi

if stage_wanted 1; then
  banner 1 "Lhotse manifests -> data/manifests"
  if ! already_done data/manifests/.librispeech.done; then
    "$python" local/prepare_manifests.py --corpus-dir "$dl_dir/LibriSpeech" --output-dir data/manifests \
      --num-jobs "$num_jobs" --log-file data/log/prepare-stage-1.log
    touch data/manifests/.librispeech.done
  fi
fi

if stage_wanted 2; then
  banner 2 "80-dim fbank -> data/fbank/librispeech_cuts_*.jsonl.gz"
  if ! already_done data/fbank/.librispeech.done; then
    "$python" local/compute_fbank_librispeech.py --manifest-dir data/manifests --output-dir data/fbank \
      --num-jobs "$num_jobs" --perturb-speed "$perturb_speed" --log-file data/log/prepare-stage-2.log
    touch data/fbank/.librispeech.done
  fi
fi

if stage_wanted 3; then
  banner 3 "BPE tokens -> data/lang_bpe_{${vocab_sizes// /,}}"
  for vocab_size in $vocab_sizes; do
    lang_dir=data/lang_bpe_$vocab_size
    if ! already_done "$lang_dir/.done"; then
      "$python" local/train_bpe_model.py --manifest-dir data/manifests --lang-dir "$lang_dir" \
        --vocab-size "$vocab_size" --log-file data/log/prepare-stage-3.log
      touch "$lang_dir/.done"
    fi
  done
fi

if stage_wanted 4; then
  banner 4 "LM text -> data/lm"
  if ! already_done data/lm/.librispeech.done; then
    lang_dirs=()
    for vocab_size in $vocab_sizes; do lang_dirs+=("data/lang_bpe_$vocab_size"); done
    "$python" local/prepare_lm_text.py --manifest-dir data/manifests --lm-dir data/lm \
      --lang-dirs "${lang_dirs[@]}" --log-file data/log/prepare-stage-4.log
    touch data/lm/.librispeech.done
  fi
fi

if stage_wanted 5; then
  banner 5 "MUSAN -> data/fbank/musan_cuts.jsonl.gz"
  if [ -z "$musan_dir" ]; then
    log "No --musan-dir given - skipping (MUSAN is only needed for training with --enable-musan 1)"
  elif ! already_done data/fbank/.musan.done; then
    "$python" local/compute_fbank_musan.py --musan-dir "$musan_dir" --manifest-dir data/manifests \
      --output-dir data/fbank --num-jobs "$num_jobs" --log-file data/log/prepare-stage-5.log
    touch data/fbank/.musan.done
  fi
fi

if stage_wanted 6; then
  banner 6 "token LMs for shallow fusion / rescoring -> data/lm/<lang dir>"
  lang_dirs=()
  for vocab_size in $vocab_sizes; do lang_dirs+=("data/lang_bpe_$vocab_size"); done
  for lang_dir in "${lang_dirs[@]}"; do
    lm_dir=data/lm/$(basename "$lang_dir")
    if ! already_done "$lm_dir/.ngram.done"; then
      "$python" local/train_lm.py --lm-type ngram --order "$lm_order" --lang-dir "$lang_dir" --out-dir "$lm_dir" \
        --log-file data/log/prepare-stage-6.log
      touch "$lm_dir/.ngram.done"
    fi
    if [ "$train_rnn_lm" != 0 ] && ! already_done "$lm_dir/.rnn.done"; then
      "$python" local/train_lm.py --lm-type rnn --lang-dir "$lang_dir" --out-dir "$lm_dir" \
        --log-file data/log/prepare-stage-6.log
      touch "$lm_dir/.rnn.done"
    fi
  done
fi

if stage_wanted 7; then
  banner 7 "teacher features of a PLM -> data/fbank/librispeech_cuts_<train part>_plm_<lang dir>.jsonl.gz"
  if [ -z "$plm_dir" ]; then
    log "No --plm-dir given - skipping (teacher features are only needed for distillation)"
  else
    lang_dirs=()
    for vocab_size in $vocab_sizes; do lang_dirs+=("data/lang_bpe_$vocab_size"); done
    for lang_dir in "${lang_dirs[@]}"; do
      marker=data/fbank/.plm_$(basename "$lang_dir").done
      if ! already_done "$marker"; then
        "$python" local/extract_plm_feats.py --plm-dir "$plm_dir" --plm-layer "$plm_layer" --lang-dir "$lang_dir" \
          --log-file data/log/prepare-stage-7.log
        touch "$marker"
      fi
    done
  fi
fi

log "Done: stages $stage..$stop_stage"
