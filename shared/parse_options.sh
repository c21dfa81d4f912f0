#!/usr/bin/env bash
# Command-line options for recipe shell scripts (icefall/Kaldi convention).
#
# Source it after declaring the variables that are options, with their defaults:
#
#   stage=0
#   num_jobs=2
#   help_message="Usage: $0 [--stage N] [--num-jobs J]"
#   . shared/parse_options.sh || exit 1
#
# `--num-jobs 4` (or `--num-jobs=4`) then sets `num_jobs=4`: dashes in the option name become
# underscores. Only variables declared before sourcing are options, so a typo is an error
# instead of a silently ignored setting. A variable whose default is true/false only accepts
# true/false. `--help`/`-h` prints $help_message and exits 0. Parsing stops at the first
# argument that does not start with `--`; the remaining arguments stay in "$@".

_po_usage() {
  if [ -n "${help_message:-}" ]; then
    printf '%b\n' "$help_message" 1>&2
  fi
}

while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      if [ -n "${help_message:-}" ]; then
        printf '%b\n' "$help_message"
      else
        echo "$0: no help message defined (read the options at the top of $0)"
      fi
      exit 0
      ;;
    --*=*)
      _po_opt="${1%%=*}"
      _po_val="${1#*=}"
      shift
      ;;
    --*)
      _po_opt="$1"
      if [ $# -lt 2 ]; then
        echo "$0: option $_po_opt needs a value, e.g. $_po_opt VALUE" 1>&2
        _po_usage
        exit 1
      fi
      _po_val="$2"
      shift 2
      ;;
    *)
      break
      ;;
  esac

  _po_name="${_po_opt#--}"
  _po_name="${_po_name//-/_}"
  if ! [[ "$_po_name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || ! [[ -v "$_po_name" ]]; then
    echo "$0: unknown option $_po_opt (run $0 --help for the valid options)" 1>&2
    _po_usage
    exit 1
  fi

  _po_old="${!_po_name}"
  if { [ "$_po_old" = "true" ] || [ "$_po_old" = "false" ]; } &&
     [ "$_po_val" != "true" ] && [ "$_po_val" != "false" ]; then
    echo "$0: option $_po_opt expects true or false, got '$_po_val'" 1>&2
    exit 1
  fi
  printf -v "$_po_name" '%s' "$_po_val"
done

unset _po_opt _po_val _po_name _po_old
unset -f _po_usage
true
