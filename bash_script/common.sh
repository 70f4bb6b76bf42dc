# Sourced by the run scripts: `source bash_script/common.sh "$@"` from the repository root.
# Sets PY (the interpreter: $PYTHON, else make's .venv/bin/python where it exists, else python), CONFIG
# (the first argument unless it is an option; default the embedded default) and EXTRA (the rest: --set
# overrides), generates the synthetic data when the config uses it, and defines `step SCRIPT [ARGS...]`,
# which runs one step with the config and overrides.
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then  # a first argument that is not an option names the config
  CONFIG=$1
  shift
else
  CONFIG=config/BB_synthetic.yaml
fi
EXTRA=("$@")

if grep -qE '^dataset: *synthetic_cub' "$CONFIG"; then
  PYTHON="$PY" bash bash_script/prepare_synthetic.sh
fi

step() { echo; echo "== $*"; "$PY" "$@" --config "$CONFIG" "${EXTRA[@]}"; }
