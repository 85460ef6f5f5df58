# Sourced by e2e scripts (. "$(dirname "$0")/lib.sh"): strict mode, the tool
# and shared folders from the environment (tests/e2e/run.sh passes them), a
# scratch folder T removed on exit, fail(), and stories_calib, the
# calibration stream most scripts start from.
set -eu
BIN=${AR_BIN:?AR_BIN not set}
SHARED=${AR_SHARED:?AR_SHARED not set}
M=$SHARED/models/stories260K
STORIES_TEXT=$SHARED/data/tinystories/TinyStories-validation-head.txt
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# stories_calib N SEQLEN [ar-calib flags...]: N samples of SEQLEN tokens of
# stories260K on the TinyStories text (to stdout unless the flags say -o).
stories_calib() {
    _sc_n=$1 _sc_l=$2 # sh has no locals: names no script uses
    shift 2
    "$BIN/ar-calib" --model "$M" --dataset "$STORIES_TEXT" --nsamples "$_sc_n" --seqlen "$_sc_l" "$@"
}
