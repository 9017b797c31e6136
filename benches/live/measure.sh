#!/usr/bin/env bash
# Whole-process figures of `krisp run --headless` on a private headless PulseAudio:
# CPU % of one core and peak RSS while denoising 48 kHz mono with a recorder attached, the
# same with nobody recording, and xruns with both cores loaded by a stress process.
# Usage: benches/live/measure.sh [seconds=60] [stress_seconds=120]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-60}
stress_secs=${2:-120}
bin=${KRISP_BIN:-target/release/krisp}
[ -x "$bin" ] || cargo build --release -p krisp-app
export XDG_RUNTIME_DIR=$(mktemp -d); chmod 700 "$XDG_RUNTIME_DIR"
export KRISP_CONFIG_DIR=$XDG_RUNTIME_DIR/cfg KRISP_SOCKET=$XDG_RUNTIME_DIR/krisp.sock
cleanup() { kill $(jobs -p) 2>/dev/null || true; pulseaudio --kill 2>/dev/null || true; rm -rf "$XDG_RUNTIME_DIR"; }
trap cleanup EXIT
pulseaudio -n --daemonize=yes --exit-idle-time=-1 --system=false --realtime=true \
  --log-target=file:$XDG_RUNTIME_DIR/pulse.log \
  -L "module-native-protocol-unix auth-anonymous=1" \
  -L "module-null-sink sink_name=fake_mic_sink rate=48000 channels=1" \
  -L "module-remap-source master=fake_mic_sink.monitor source_name=fake_mic"
sleep 1
# Noisy speech from the shipped sample, looped for the whole run.
( while true; do paplay -d fake_mic_sink assets/samples/noisy-speech-5db.wav; done ) &

cpu_ticks() { awk '{print $14+$15}' /proc/$1/stat; }
measure() { # label seconds
  local pid=$2 t=$3
  local a b hz; hz=$(getconf CLK_TCK)
  a=$(cpu_ticks "$pid"); sleep "$t"; b=$(cpu_ticks "$pid")
  local rss; rss=$(awk '/VmHWM/{print $2}' /proc/$pid/status)
  printf '| %s | %.2f %% | %.1f MB |\n' "$1" "$(echo "($b-$a)*100/$hz/$t" | bc -l)" "$(echo "$rss/1024" | bc -l)"
}

"$bin" run --headless --input fake_mic 2>$XDG_RUNTIME_DIR/krisp.log &
kpid=$!
sleep 3
echo "| state | CPU (one core) | peak RSS |"
echo "|---|---|---|"
parecord -d krisp_mic /dev/null &
rec=$!
sleep 2
measure "denoising, one recorder attached, ${secs} s" $kpid "$secs"
kill $rec; sleep 2
measure "nobody recording, ${secs} s" $kpid "$secs"

parecord -d krisp_mic /dev/null &
rec=$!
sleep 2
before=$("$bin" status --json | python3 -c 'import json,sys; s=json.load(sys.stdin)["stats"]; print(s["underruns"], s["overruns"])')
stress_pids=()
for _ in 1 2; do ( end=$((SECONDS+stress_secs)); while [ $SECONDS -lt $end ]; do :; done ) & stress_pids+=($!); done
sleep "$stress_secs"
kill "${stress_pids[@]}" 2>/dev/null || true
after=$("$bin" status --json | python3 -c 'import json,sys; s=json.load(sys.stdin)["stats"]; print(s["underruns"], s["overruns"], s["added_latency_ms"])')
echo
echo "under ${stress_secs} s of two busy-loop processes (both cores): underruns/overruns before: $before; after (and added latency ms): $after"
kill $rec
kill -INT $kpid; wait $kpid || true
