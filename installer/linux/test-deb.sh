#!/usr/bin/env bash
# The .deb, end to end, on this machine (as root; CI runs it after the tests):
#   1. the real license server on loopback; an IT admin signs in (code from the server log),
#      creates an organisation and gets its enrolment token;
#   2. the .deb is built with that server's public key embedded (as a release would be);
#   3. silent install with KRISP_SERVER/KRISP_ORG_TOKEN: files, policy, permissions, --version;
#   4. first start enrols the machine without anyone signing in;
#   5. upgrade to a newer package keeps the policy and the user's license;
#   6. remove while "Krisp Microphone" is live in a PulseAudio server: the device goes away,
#      the app and its autostart go, the policy stays; purge removes the policy and group.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

fail() { echo "test-deb: FAIL: $*" >&2; exit 1; }
ok() { echo "test-deb: ok: $*" >&2; }
[ "$(id -u)" = 0 ] || { echo "test-deb: needs root (installs a package)" >&2; exit 2; }
if dpkg -s krisp >/dev/null 2>&1; then fail "a krisp package is already installed here"; fi

work=$(mktemp -d /tmp/krisp-deb-test.XXXXXX)
chmod 700 "$work"
server_pid=""
pulse_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    [ -n "$pulse_pid" ] && kill "$pulse_pid" 2>/dev/null || true
    pkill -KILL -x krisp 2>/dev/null || true
    dpkg -s krisp >/dev/null 2>&1 && apt-get purge -y -qq krisp >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# 1. The license server on loopback.
# (KRISP_SERVER_BIN: a server binary built elsewhere.)
server_bin=${KRISP_SERVER_BIN:-}
if [ -z "$server_bin" ]; then
    cargo build -q -p krisp-server
    server_bin=$root/target/debug/krisp-server
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
(cd "$work" && exec "$server_bin" --listen "127.0.0.1:$port" \
    --database-url "sqlite://$work/server.db" >"$work/server.log" 2>&1) &
server_pid=$!
for _ in $(seq 100); do curl -fsS "$url/v1/keys" >/dev/null 2>&1 && break; sleep 0.1; done
keys=$(curl -fsS "$url/v1/keys" | python3 -c 'import json,sys; print(",".join(k["kid"]+":"+k["public_key"] for k in json.load(sys.stdin)["keys"]))')
[ -n "$keys" ] || fail "the server published no keys"
admin=it-admin@example.com
curl -fsS -X POST "$url/v1/auth/email" -H 'content-type: application/json' -d "{\"email\":\"$admin\"}" >/dev/null
code=""
for _ in $(seq 50); do
    code=$(sed -n "s/.*sign-in code for $admin is \([0-9]\{6\}\).*/\1/p" "$work/server.log" | tail -1)
    [ -n "$code" ] && break
    sleep 0.1
done
[ -n "$code" ] || fail "no sign-in code in the server log"
access=$(curl -fsS -X POST "$url/v1/auth/verify" -H 'content-type: application/json' \
    -d "{\"email\":\"$admin\",\"code\":\"$code\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
org=$(curl -fsS -X POST "$url/v1/orgs" -H "authorization: Bearer $access" -H 'content-type: application/json' \
    -d '{"name":"Acme IT","seats":5}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
org_token=$(curl -fsS -X POST "$url/v1/orgs/$org/enrolment-token" -H "authorization: Bearer $access" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["enrolment_token"])')
ok "license server on $url, organisation $org"

# 2. Two package versions, built like a release (the server's key embedded).
export KRISP_RELEASE_KEYS=$keys
deb1=$(KRISP_DEB_VERSION=0.1.0 bash installer/linux/build-deb.sh | tail -1)
deb2=$(KRISP_DEB_VERSION=0.1.1 bash installer/linux/build-deb.sh | tail -1)
unset KRISP_RELEASE_KEYS
cp "$deb1" "$deb2" "$work/"
deb1="$work/$(basename "$deb1")"
deb2="$work/$(basename "$deb2")"

# 3. Silent install.
KRISP_SERVER="$url" KRISP_ORG_TOKEN="$org_token" DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq "$deb1" >"$work/install.log" 2>&1 || { cat "$work/install.log"; fail "install"; }
for f in /usr/bin/krisp /usr/share/krisp/models/manifest.toml /usr/share/krisp/models/rnnoise.rnn \
    /usr/share/applications/krisp.desktop /etc/xdg/autostart/krisp.desktop \
    /usr/share/icons/hicolor/scalable/apps/krisp.svg /etc/krisp/policy.toml /etc/krisp/enrolment-token; do
    [ -e "$f" ] || fail "$f missing after install"
done
[ "$(stat -c '%U:%G %a' /etc/krisp/policy.toml)" = "root:root 644" ] || fail "policy.toml: $(stat -c '%U:%G %a' /etc/krisp/policy.toml)"
[ "$(stat -c '%U:%G %a' /etc/krisp/enrolment-token)" = "root:krisp 640" ] || fail "enrolment-token: $(stat -c '%U:%G %a' /etc/krisp/enrolment-token)"
grep -q "server_url = \"$url\"" /etc/krisp/policy.toml || fail "policy has no server: $(cat /etc/krisp/policy.toml)"
if grep -q "$org_token" /etc/krisp/policy.toml; then fail "the enrolment token is in the world-readable policy"; fi
/usr/bin/krisp --version | grep -q '^krisp ' || fail "krisp --version"
if ldd /usr/bin/krisp | grep -q 'not found'; then fail "unresolved libraries: $(ldd /usr/bin/krisp)"; fi
ok "silent install: files, policy 0644, token root:krisp 0640, $(/usr/bin/krisp --version)"

# 4. First start enrols the machine (a user's home, nobody signs in).
export HOME="$work/home"
mkdir -p "$HOME"
unset KRISP_CONFIG_DIR KRISP_SERVER KRISP_POLICY_FILE KRISP_DEV_TRUSTED_KEYS
/usr/bin/krisp license --check --json >"$work/license.json" 2>"$work/license.err" \
    || { cat "$work/license.err"; fail "krisp license --check"; }
python3 - "$work/license.json" <<'PY' || fail "not enrolled: $(cat "$work/license.json" "$work/license.err")"
import json, sys
v = json.load(open(sys.argv[1]))
assert v["state"] == "active", v
assert v["allows_noise_removal"] is True, v
PY
grep -q "enrolled by the IT policy" "$work/license.err" || fail "no enrolment message"
ok "first start enrolled the machine from the policy"

# 5. Upgrade keeps the policy and the license.
policy_before=$(sha256sum /etc/krisp/policy.toml)
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$deb2" >"$work/upgrade.log" 2>&1 || { cat "$work/upgrade.log"; fail "upgrade"; }
[ "$(dpkg-query -W -f '${Version}' krisp)" = 0.1.1 ] || fail "version after upgrade"
[ "$(sha256sum /etc/krisp/policy.toml)" = "$policy_before" ] || fail "the upgrade changed the policy"
/usr/bin/krisp license --json | python3 -c 'import json,sys; v=json.load(sys.stdin); assert v["state"]=="active", v' \
    || fail "license lost on upgrade"
ok "upgrade to 0.1.1 kept policy and license"

# 6. Remove while Krisp Microphone is live, then purge.
export XDG_RUNTIME_DIR="$work/run"
mkdir -p "$XDG_RUNTIME_DIR"
chmod 700 "$XDG_RUNTIME_DIR"
pulseaudio -n --daemonize=no --exit-idle-time=-1 --system=false \
    -L "module-native-protocol-unix auth-anonymous=1" -L module-always-sink \
    -L "module-null-sink sink_name=fake_mic_sink" \
    -L "module-remap-source master=fake_mic_sink.monitor source_name=fake_mic" >"$work/pulse.log" 2>&1 &
pulse_pid=$!
for _ in $(seq 100); do pactl info >/dev/null 2>&1 && break; sleep 0.1; done
/usr/bin/krisp run --headless --input fake_mic >"$work/krisp.log" 2>&1 &
for _ in $(seq 100); do pactl list short sources | grep -q krisp_mic && break; sleep 0.1; done
pactl list short sources | grep -q krisp_mic || { cat "$work/krisp.log"; fail "Krisp Microphone did not appear"; }
DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq krisp >"$work/remove.log" 2>&1 || { cat "$work/remove.log"; fail "remove"; }
if pactl list short sources | grep -q krisp_mic; then fail "Krisp Microphone left behind after remove"; fi
if pactl list short modules | grep -q krisp.owner; then fail "Krisp modules left behind"; fi
for f in /usr/bin/krisp /etc/xdg/autostart/krisp.desktop /usr/share/applications/krisp.desktop; do
    [ ! -e "$f" ] || fail "$f left after remove"
done
[ -e /etc/krisp/policy.toml ] || fail "remove (not purge) deleted the policy"
ok "remove stopped the running app, its device and autostart are gone, the policy stays"
DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq krisp >"$work/purge.log" 2>&1 || { cat "$work/purge.log"; fail "purge"; }
[ ! -e /etc/krisp ] || fail "/etc/krisp left after purge: $(ls -la /etc/krisp)"
if getent group krisp >/dev/null; then fail "group krisp left after purge"; fi
if dpkg -s krisp >/dev/null 2>&1; then fail "still installed"; fi
ok "purge removed the policy and the group; nothing left"
echo "test-deb: all good" >&2
