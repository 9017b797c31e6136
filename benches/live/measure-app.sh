#!/usr/bin/env bash
# Whole-process figures of the desktop app (`krisp run`, window + tray) on a private headless
# PulseAudio, a private X server (Xvfb, Mesa's software GL) and a private session bus for the
# tray: CPU % of one core and RSS with the window closed (tray only) and open, a recorder
# attached to "Krisp Microphone" throughout (the model runs). The app is the tray process;
# while open, the window is its child process (`krisp window`), measured in the same seconds.
# Usage: benches/live/measure-app.sh [seconds=30]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-30}
bin=${KRISP_BIN:-target/release/krisp}
[ -x "$bin" ] || cargo build --release -p krisp-app
export XDG_RUNTIME_DIR=$(mktemp -d); chmod 700 "$XDG_RUNTIME_DIR"
export HOME=$XDG_RUNTIME_DIR XDG_CONFIG_HOME=$XDG_RUNTIME_DIR/xdg
export KRISP_CONFIG_DIR=$XDG_RUNTIME_DIR/cfg KRISP_SOCKET=$XDG_RUNTIME_DIR/krisp.sock
export KRISP_SERVER=http://127.0.0.1:9 KRISP_POLICY_FILE=$XDG_RUNTIME_DIR/no-policy.toml
unset PULSE_SERVER
cleanup() { kill $(jobs -p) 2>/dev/null || true; pulseaudio --kill 2>/dev/null || true; rm -rf "$XDG_RUNTIME_DIR"; }
trap cleanup EXIT
pulseaudio -n --daemonize=yes --exit-idle-time=-1 --system=false --realtime=true \
  --log-target=file:$XDG_RUNTIME_DIR/pulse.log \
  -L "module-native-protocol-unix auth-anonymous=1" \
  -L "module-null-sink sink_name=fake_mic_sink rate=48000 channels=1" \
  -L "module-remap-source master=fake_mic_sink.monitor source_name=fake_mic"
display=:$(( 300 + $$ % 100 ))
Xvfb "$display" -screen 0 1024x768x24 -nolisten tcp >/dev/null 2>&1 &
dbus-daemon --session --address=unix:path=$XDG_RUNTIME_DIR/bus --nofork >/dev/null 2>&1 &
export DISPLAY=$display DBUS_SESSION_BUS_ADDRESS=unix:path=$XDG_RUNTIME_DIR/bus
sleep 1
( while true; do paplay -d fake_mic_sink assets/samples/noisy-speech-5db.wav; done ) &

cpu_ticks() { awk '{print $14+$15}' /proc/$1/stat; }
rss_mb() { awk '/VmRSS/{printf "%.1f", $2/1024}' /proc/$1/status; }
cpu_pct() { echo "($2-$1)*100/$(getconf CLK_TCK)/$3" | bc -l; }
window_pid() { pgrep -P "$1" -x krisp | head -1 || true; }
measure() { # label app-pid seconds: the app, and its window's process if one runs
  local pid=$2 t=$3 a b wpid wa wb
  wpid=$(window_pid "$pid")
  a=$(cpu_ticks "$pid"); [ -n "$wpid" ] && wa=$(cpu_ticks "$wpid")
  sleep "$t"
  b=$(cpu_ticks "$pid"); [ -n "$wpid" ] && wb=$(cpu_ticks "$wpid")
  if [ -n "$wpid" ]; then
    printf '| %s | %.2f %% | %.1f MB | %.2f %% | %.1f MB |\n' "$1" "$(cpu_pct "$a" "$b" "$t")" \
      "$(rss_mb "$pid")" "$(cpu_pct "$wa" "$wb" "$t")" "$(rss_mb "$wpid")"
  else
    printf '| %s | %.2f %% | %.1f MB | – | – |\n' "$1" "$(cpu_pct "$a" "$b" "$t")" "$(rss_mb "$pid")"
  fi
}

"$bin" run --minimized --input fake_mic 2>$XDG_RUNTIME_DIR/krisp.log &
kpid=$!
sleep 4
parecord -d krisp_mic /dev/null &
sleep 2
echo "| state (recorder attached, ${secs} s each) | app CPU (one core) | app RSS | window process CPU | window process RSS |"
echo "|---|---|---|---|---|"
measure "tray only (started --minimized)" $kpid "$secs"
"$bin" run >/dev/null 2>&1   # a second launch shows the first one's window
sleep 2
measure "window open, meters at 20 fps" $kpid "$secs"
# The window's close button (WM_DELETE_WINDOW): Krisp goes back to the tray.
python3 crates/krisp-app/tests/tools/close-window.py "$(xdotool search --onlyvisible --name '^Krisp$' | head -1)"
sleep 2
measure "window closed again (tray)" $kpid "$secs"
echo
echo "app's peak RSS: $(awk '/VmHWM/{printf "%.1f MB", $2/1024}' /proc/$kpid/status)"
left=$(ps -o pid=,stat= --ppid "$kpid" || true)
echo "app's child processes after the window closed: ${left:-none}"
kill -INT $kpid; wait $kpid || true
