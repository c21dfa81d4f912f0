#!/usr/bin/env bash
# The aishell demo: synthetic corpus -> prepare.sh -> train -> decode -> table. See shared/demo.sh.
# From the repository root: make demo RECIPE=aishell [DEMO_SCALE=large]
cd "$(dirname "$0")"
exec ./shared/demo.sh aishell "$@"
