#!/usr/bin/env bash
# Quality and speed harness: krisp denoise vs. RNNoise (C) vs. DeepFilterNet3.
# Usage: bash benches/quality/run.sh [extra harness.py options]
# Env:   KRISP_BIN           krisp binary to test (default: cargo build --release -p krisp-app)
#        KRISP_ARGS          extra arguments for `krisp denoise` (e.g. "--strength 20")
#        KRISP_MODELS        ';'-separated krisp rows, each "MODEL [options]"
#                            (default "rnnoise;dfn3;dfn3 --lookahead 1")
#        KRISP_SHARED_AUDIO  test audio directory (default: <repo>/../shared/audio)
#        QUALITY_REPORT      report path (default: <repo>/docs/quality.md; "-" = don't write)
#        QUALITY_WORK        directory for the generated WAVs (default: benches/quality/work)
#        PYTHON              interpreter used to create the venv (default: python3)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="$HERE/.venv"
REQ="$HERE/requirements.txt"

# 1. Python environment (created once, reinstalled when requirements.txt changes).
if [ ! -x "$VENV/bin/python" ]; then
    echo "[quality] creating $VENV" >&2
    "${PYTHON:-python3}" -m venv "$VENV"
fi
STAMP="$VENV/.requirements.sha256"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$(sha256sum "$REQ" | cut -d' ' -f1)" ]; then
    echo "[quality] installing pinned packages from $REQ" >&2
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQ"
    sha256sum "$REQ" | cut -d' ' -f1 > "$STAMP"
fi

# 2. The krisp binary.
if [ -z "${KRISP_BIN:-}" ]; then
    echo "[quality] building krisp (cargo build --release -p krisp-app)" >&2
    (cd "$ROOT" && cargo build --release -p krisp-app)
    TARGET="${CARGO_TARGET_DIR:-target}"
    case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
    KRISP_BIN="$TARGET/release/krisp"
fi
[ -x "$KRISP_BIN" ] || { echo "[quality] krisp binary not found or not executable: $KRISP_BIN" >&2; exit 1; }

AUDIO="${KRISP_SHARED_AUDIO:-$ROOT/../shared/audio}"
WORK="${QUALITY_WORK:-$HERE/work}"
REPORT="${QUALITY_REPORT:-$ROOT/docs/quality.md}"
REPORT_ARGS=()
[ "$REPORT" = "-" ] || REPORT_ARGS=(--report "$REPORT")

# The command as a person would retype it, recorded in the report.
CMD="bash benches/quality/run.sh $*"
[ -n "${KRISP_ARGS:-}" ] && CMD="KRISP_ARGS='$KRISP_ARGS' $CMD"
[ -n "${KRISP_MODELS:-}" ] && CMD="KRISP_MODELS='$KRISP_MODELS' $CMD"

# 3. Run (offline: every model used is a file inside an installed wheel).
exec "$VENV/bin/python" "$HERE/harness.py" \
    --krisp-bin "$KRISP_BIN" --krisp-args "${KRISP_ARGS:-}" \
    --krisp-models "${KRISP_MODELS:-rnnoise;dfn3;dfn3 --lookahead 1}" \
    --audio-dir "$AUDIO" --work-dir "$WORK" --repo-root "$ROOT" \
    --command "$CMD" "${REPORT_ARGS[@]}" "$@"
