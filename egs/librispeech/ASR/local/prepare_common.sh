#!/usr/bin/env bash
# Helpers shared by the recipes' prepare.sh (sourced after shared/parse_options.sh).

# log MESSAGE...: a timestamped line, as icefall's prepare.sh writes them.
log() {
  echo -e "$(date '+%Y-%m-%d %H:%M:%S') (${0##*/}) $*"
}

die() {
  log "ERROR: $*" 1>&2
  exit 1
}

# stage_wanted N: true when stage N lies in [--stage, --stop-stage].
stage_wanted() {
  [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]
}

banner() {
  log "================ Stage $1: $2 ================"
}

# already_done MARKER: true (and says so) when the stage's done-marker exists.
already_done() {
  if [ -f "$1" ]; then
    log "Already done ($1 exists) - skipping. Delete it to run this stage again."
    return 0
  fi
  return 1
}

# find_python: set $python to an interpreter that can import icefall_cif (the repository's .venv
# when the current python3 cannot), or stop with what to do.
find_python() {
  if "$python" -c "import icefall_cif" 2>/dev/null; then
    return
  fi
  local here repo_python
  here=$(dirname "$(readlink -f "$0")")
  repo_python="$here/../../../.venv/bin/python3"
  if [ -x "$repo_python" ] && "$repo_python" -c "import icefall_cif" 2>/dev/null; then
    python=$repo_python
    return
  fi
  die "'$python' cannot import icefall_cif. Run 'make venv' in the repository root and" \
      "'source .venv/bin/activate', or pass --python /path/to/.venv/bin/python3"
}

# synth_cli_args: the options for `python -m icefall_cif.synth` from the --synth-* options
# (only those given), in the array synth_args.
synth_cli_args() {
  synth_args=(--seed "$synth_seed" --num-jobs "$num_jobs")
  [ -z "$synth_hours" ] || synth_args+=(--hours "$synth_hours")
  [ -z "$synth_dev_hours" ] || synth_args+=(--dev-hours "$synth_dev_hours")
  [ -z "$synth_test_hours" ] || synth_args+=(--test-hours "$synth_test_hours")
  [ -z "$synth_num_train_utts" ] || synth_args+=(--num-train-utts "$synth_num_train_utts")
  [ -z "$synth_num_dev_utts" ] || synth_args+=(--num-dev-utts "$synth_num_dev_utts")
  [ -z "$synth_num_test_utts" ] || synth_args+=(--num-test-utts "$synth_num_test_utts")
  if [ -n "$synth_opts" ]; then
    local extra
    read -r -a extra <<< "$synth_opts"
    synth_args+=("${extra[@]}")
  fi
}

# get_corpus CORPUS SUBDIR SYNTH_DIR: stage 0 for any recipe. Links --corpus-dir, or synthesizes
# into SYNTH_DIR with --synthetic 1 (the synthetic tree then appears as download/SUBDIR), or
# checks what download/ already holds.
get_corpus() {
  local corpus=$1 subdir=$2 out=$3
  if [ -n "$corpus_dir" ] && [ "$synthetic" != 0 ]; then
    die "give either --corpus-dir DIR or --synthetic 1, not both"
  fi
  local log_file=data/log/prepare-stage-0.log
  if [ "$synthetic" != 0 ]; then
    if [ -e "$dl_dir/$subdir" ]; then
      log "$dl_dir/$subdir already exists: using it instead of synthesizing (remove it to regenerate)"
    else
      synth_cli_args
      log "Synthesizing a $corpus corpus into $out: ${synth_args[*]}"
      "$python" -m icefall_cif.synth "$corpus" "$out" "${synth_args[@]}" 2>&1 | tee -a "$log_file"
    fi
  fi
  local args=(--download-dir "$dl_dir" --log-file "$log_file")
  [ -z "$corpus_dir" ] || args+=(--corpus-dir "$corpus_dir")
  "$python" local/prepare_corpus.py "${args[@]}"
}
