#!/usr/bin/env bash
# A newer PipeWire (bookworm-backports, 1.4.x) unpacked under target/pipewire-backports, without
# touching the system's packages, for running the e2e tests and measurements against it:
#
#   eval "$(bash benches/live/pipewire-backports.sh)"
#   cargo test -p krisp-app --test e2e_linux end_to_end_on_pipewire -- --nocapture
#
# Prints the environment (PATH, LD_LIBRARY_PATH, SPA/PipeWire/WirePlumber directories) that
# makes `pipewire`, `pipewire-pulse` and `wireplumber` the unpacked ones. Debian 12's own
# PipeWire is 0.3.65; distributions since 2024 ship 1.x, whose module-pipe-source behaves
# differently (docs/performance.md, session 8). Needs root for apt-get (the lists go to a
# private directory) and liblua5.4-0 (installed if missing) for WirePlumber 0.5.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD/target/pipewire-backports
if [ ! -x "$root/usr/bin/pipewire" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/lists/partial" "$work/debs"
  cat >"$work/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
SRC
  opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=-"
        -o "Dir::State::Lists=$work/lists" -o "APT::Sandbox::User=root")
  apt-get "${opts[@]}" update -qq >&2
  (cd "$work/debs" && apt-get "${opts[@]}" download -qq \
    pipewire pipewire-bin pipewire-pulse libpipewire-0.3-0 libpipewire-0.3-modules \
    libpipewire-0.3-common libspa-0.2-modules wireplumber libwireplumber-0.5-0 >&2)
  for d in "$work"/debs/*.deb; do dpkg -x "$d" "$root"; done
  dpkg -s liblua5.4-0 >/dev/null 2>&1 || apt-get install -y -qq --no-install-recommends liblua5.4-0 >&2
fi
lib=$root/usr/lib/x86_64-linux-gnu
cat <<ENV
export PATH=$root/usr/bin:\$PATH
export LD_LIBRARY_PATH=$lib
export SPA_PLUGIN_DIR=$lib/spa-0.2
export PIPEWIRE_MODULE_DIR=$lib/pipewire-0.3
export PIPEWIRE_CONFIG_DIR=$root/usr/share/pipewire
export WIREPLUMBER_MODULE_DIR=$lib/wireplumber-0.5
export WIREPLUMBER_CONFIG_DIR=$root/usr/share/wireplumber
export WIREPLUMBER_DATA_DIR=$root/usr/share/wireplumber
ENV
