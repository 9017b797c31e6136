#!/usr/bin/env bash
# Whole-process figures of `krisp run --headless` on a private headless PulseAudio (or PipeWire
# with pipewire-pulse and WirePlumber: KRISP_AUDIO_SERVER=pipewire):
# CPU % of one core and peak RSS while denoising 48 kHz mono with a recorder attached, the
# same with nobody recording, and xruns with both cores loaded by a stress process.
# CPU is the process's own threads ("own") and, beside it, the same plus the child processes
# it started and reaped in the window (`pactl` calls: "+children"). A per-thread breakdown
# (from /proc/PID/task/*/stat) follows each state.
# Usage: benches/live/measure.sh [seconds=60] [stress_seconds=120]   (stress 0: skip it)
# KRISP_BIN picks the binary (default target/release/krisp); KRISP_ARGS adds options to `run`.
# Each state also shows the audio server's CPU in the same window, and a reference in the same
# run: `parecord` recording the fake mic in Krisp's fragments (a client with Krisp's wake-up
# rate and no processing), so the figures can be read as ratios on a noisy shared machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-60}
stress_secs=${2:-120}
bin=${KRISP_BIN:-target/release/krisp}
[ -x "$bin" ] || cargo build --release -p krisp-app
export XDG_RUNTIME_DIR=$(mktemp -d); chmod 700 "$XDG_RUNTIME_DIR"
export HOME=$XDG_RUNTIME_DIR
export KRISP_CONFIG_DIR=$XDG_RUNTIME_DIR/cfg KRISP_SOCKET=$XDG_RUNTIME_DIR/krisp.sock
export KRISP_SERVER=http://127.0.0.1:9 KRISP_POLICY_FILE=$XDG_RUNTIME_DIR/no-policy.toml
unset PULSE_SERVER
server=${KRISP_AUDIO_SERVER:-pulseaudio}
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  [ -f "$XDG_RUNTIME_DIR/pulse/pid" ] && kill "$(cat "$XDG_RUNTIME_DIR/pulse/pid")" 2>/dev/null
  [ -f "$XDG_RUNTIME_DIR/dbus.pid" ] && kill "$(cat "$XDG_RUNTIME_DIR/dbus.pid")" 2>/dev/null
  sleep 0.3; rm -rf "$XDG_RUNTIME_DIR"
}
trap cleanup EXIT
if [ "$server" = pipewire ]; then
  export DBUS_SESSION_BUS_ADDRESS=unix:path=$XDG_RUNTIME_DIR/bus
  dbus-daemon --session --fork --print-pid --address="$DBUS_SESSION_BUS_ADDRESS" >"$XDG_RUNTIME_DIR/dbus.pid"
  pipewire >"$XDG_RUNTIME_DIR/pipewire.log" 2>&1 &
  sleep 0.3
  pipewire-pulse >"$XDG_RUNTIME_DIR/pipewire-pulse.log" 2>&1 &
  wireplumber >"$XDG_RUNTIME_DIR/wireplumber.log" 2>&1 &
  for _ in $(seq 100); do pactl info >/dev/null 2>&1 && break; sleep 0.1; done
  pactl load-module module-null-sink sink_name=fake_mic_sink rate=48000 channels=1 >/dev/null
  pactl load-module module-remap-source master=fake_mic_sink.monitor source_name=fake_mic >/dev/null
  server_pids="$(pgrep -x pipewire -P $$) $(pgrep -x pipewire-pulse -P $$) $(pgrep -x wireplumber -P $$)"
  echo "server: $(pipewire --version | tail -1)"
else
  pulseaudio -n --daemonize=yes --exit-idle-time=-1 --system=false --realtime=true \
    --log-target=file:$XDG_RUNTIME_DIR/pulse.log \
    -L "module-native-protocol-unix auth-anonymous=1" \
    -L "module-null-sink sink_name=fake_mic_sink rate=48000 channels=1" \
    -L "module-remap-source master=fake_mic_sink.monitor source_name=fake_mic"
  sleep 1
  server_pids=$(cat "$XDG_RUNTIME_DIR/pulse/pid")
  echo "server: $(pulseaudio --version)"
fi
# Noisy speech from the shipped sample, looped for the whole run.
( while true; do paplay -d fake_mic_sink assets/samples/noisy-speech-5db.wav; done ) &

hz=$(getconf CLK_TCK)
# utime+stime of the process, and the same plus reaped children (cutime+cstime).
cpu_ticks() { awk '{print $14+$15, $14+$15+$16+$17}' /proc/$1/stat; }
thread_ticks() { # tid name utime+stime, robust to names with spaces
  for t in /proc/$1/task/*; do
    [ -r "$t/stat" ] || continue
    local s name rest; s=$(cat "$t/stat" 2>/dev/null) || continue
    name=${s#*(}; name=${name%)*}; rest=${s##*) }
    echo "$(basename "$t") ${name// /_} $(echo "$rest" | awk '{print $12+$13}')"
  done
}
# CPU ticks of the audio server's processes together.
server_ticks() { local n=0 p; for p in $server_pids; do n=$((n + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $n; }
measure() { # label pid seconds [reference pid]
  local pid=$2 t=$3 ref=${4:-}
  local a b ta tb rss sa sb ra rb
  a=$(cpu_ticks "$pid"); ta=$(thread_ticks "$pid"); sa=$(server_ticks)
  [ -n "$ref" ] && ra=$(cpu_ticks "$ref")
  sleep "$t"
  b=$(cpu_ticks "$pid"); tb=$(thread_ticks "$pid"); sb=$(server_ticks)
  [ -n "$ref" ] && rb=$(cpu_ticks "$ref")
  rss=$(awk '/VmHWM/{print $2}' /proc/$pid/status)
  read -r a1 a2 <<<"$a"; read -r b1 b2 <<<"$b"
  local refcol="–"
  if [ -n "$ref" ]; then
    read -r ra1 _ <<<"$ra"; read -r rb1 _ <<<"$rb"
    refcol=$(printf '%.2f %%' "$(echo "($rb1-$ra1)*100/$hz/$t" | bc -l)")
  fi
  printf '| %s | %.2f %% | %.2f %% | %.1f MB | %.2f %% | %s |\n' "$1" \
    "$(echo "($b1-$a1)*100/$hz/$t" | bc -l)" "$(echo "($b2-$a2)*100/$hz/$t" | bc -l)" \
    "$(echo "$rss/1024" | bc -l)" "$(echo "($sb-$sa)*100/$hz/$t" | bc -l)" "$refcol"
  # Per thread: name, CPU % (threads with the same name summed).
  join <(echo "$ta" | sort) <(echo "$tb" | sort) |
    awk -v hz="$hz" -v t="$t" '{d[$2]+=$5-$3} END {for (n in d) printf "    %-20s %.2f %%\n", n, d[n]*100/hz/t}' |
    sort -k2 -rn >>"$XDG_RUNTIME_DIR/threads.txt"
  echo "  ($1)" >>"$XDG_RUNTIME_DIR/threads.txt"
  "$bin" status --json | python3 -c 'import json,sys; s=json.load(sys.stdin)["stats"]; print("  engine: listeners", s["listeners"], "underruns", s["underruns"], "overruns", s["overruns"], "added latency", round(s["added_latency_ms"], 1), "ms")' >>"$XDG_RUNTIME_DIR/threads.txt"
}

"$bin" run --headless --input fake_mic ${KRISP_ARGS:-} 2>$XDG_RUNTIME_DIR/krisp.log &
kpid=$!
sleep 3
# The reference asks for the fragment Krisp's capture asks for (capture.rs, fragment_frames):
# 20 ms when it feeds our PipeWire node (pipewire-pulse runs the graph at half of it), 10 ms
# otherwise. Both record the same microphone, so the smaller request would set both their
# wake-up rates. REF_MS overrides it (e.g. 10 with KRISP_ARGS="--device node --capture-frames
# 240" for the fragment before).
on_node=$("$bin" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["stats"].get("node", False))')
ref_ms=${REF_MS:-$([ "$on_node" = True ] && echo 20 || echo 10)}
echo "| state | CPU own | CPU +children | peak RSS | audio server | reference: parecord of the mic, ${ref_ms} ms |"
echo "|---|---|---|---|---|---|"
parecord -d krisp_mic /dev/null &
rec=$!
parecord -d fake_mic --latency-msec="$ref_ms" /dev/null &
ref=$!
sleep 2
measure "denoising, one recorder attached, ${secs} s" $kpid "$secs" $ref
kill $rec; sleep 2
measure "nobody recording, ${secs} s" $kpid "$secs" $ref
kill $ref
echo
echo "per thread (CPU % of one core):"
cat "$XDG_RUNTIME_DIR/threads.txt"

# Gaps as a recorder hears them: runs of >= 48 exact zeros (1 ms) in a raw float recording,
# after its first second. The fake mic itself is recorded alongside: its player restarts at
# each loop of the sample, and the server may drop under load, which is not Krisp's doing.
gaps() {
  python3 - "$1" <<'PY'
import array, sys
a = array.array('f'); a.frombytes(open(sys.argv[1], 'rb').read()); a = a[48000:]
runs, n = [], 0
for x in a:
    if x == 0.0: n += 1
    else:
        if n >= 48: runs.append(n)
        n = 0
print(f"{len(runs)} gaps, {sum(runs)} samples, longest {max(runs, default=0)} in {len(a) / 48000:.3f} s (a shorter recording than the mic's lost audio without a gap)")
PY
}

if [ "$stress_secs" -gt 0 ]; then
  raw="parecord --raw --format=float32le --rate=48000 --channels=1"
  $raw -d krisp_mic "$XDG_RUNTIME_DIR/krisp.raw" &
  rec=$!
  $raw -d fake_mic "$XDG_RUNTIME_DIR/mic.raw" &
  rec_mic=$!
  sleep 2
  before=$("$bin" status --json | python3 -c 'import json,sys; s=json.load(sys.stdin)["stats"]; print(s["underruns"], s["overruns"])')
  stress_pids=()
  for _ in 1 2; do ( end=$((SECONDS+stress_secs)); while [ $SECONDS -lt $end ]; do :; done ) & stress_pids+=($!); done
  sleep "$stress_secs"
  kill "${stress_pids[@]}" 2>/dev/null || true
  after=$("$bin" status --json | python3 -c 'import json,sys; s=json.load(sys.stdin)["stats"]; print(s["underruns"], s["overruns"], s["added_latency_ms"])')
  echo
  echo "under ${stress_secs} s of two busy-loop processes (both cores): underruns/overruns before: $before; after (and added latency ms): $after"
  kill $rec $rec_mic; sleep 0.5
  echo "recorded from Krisp Microphone meanwhile: $(gaps "$XDG_RUNTIME_DIR/krisp.raw")"
  echo "recorded from the fake mic meanwhile:     $(gaps "$XDG_RUNTIME_DIR/mic.raw")"
fi
kill -INT $kpid; wait $kpid || true
