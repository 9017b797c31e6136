#!/usr/bin/env bash
# Builds the Krisp .deb from a release build (KRISP_DEB_PROFILE: another cargo profile):
#
#   bash installer/linux/build-deb.sh            # -> target/debian/krisp_<version>_<arch>.deb
#   KRISP_DEB_VERSION=1.2.3 bash installer/linux/build-deb.sh
#
# Release pipelines set KRISP_RELEASE_KEYS (the license server's public keys, "kid:base64,…")
# and KRISP_DEFAULT_SERVER for the build; without keys the app trusts no license at all.
# Needs only dpkg-deb (dpkg) besides cargo; the package needs no compiler on the target.
set -euo pipefail
cd "$(dirname "$0")/../.."

version=${KRISP_DEB_VERSION:-$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)}
arch=$(dpkg --print-architecture)
out=target/debian
stage=$out/stage-$version
[ -n "${KRISP_RELEASE_KEYS:-}" ] || echo "build-deb: warning: KRISP_RELEASE_KEYS is not set: this build trusts no license server" >&2

# KRISP_DEB_PROFILE=tests packages the `krisp` that `cargo test --workspace` builds: CI tests
# the package's install, enrolment, upgrade and removal with the build its tests already made
# (the same feature resolution, so only what reads KRISP_RELEASE_KEYS is rebuilt), instead of a
# 10-minute release build. Any other value is a cargo profile; releases use the default.
profile=${KRISP_DEB_PROFILE:-release}
if [ "$profile" = tests ]; then
    echo "build-deb: cargo test --workspace --no-run (packaging its target/debug/krisp)" >&2
    cargo test --workspace --no-run -q >&2
    bin=target/debug/krisp
else
    echo "build-deb: cargo build --profile $profile -p krisp-app" >&2
    cargo build --profile "$profile" -p krisp-app
    case $profile in dev|test) bin=target/debug/krisp ;; *) bin=target/$profile/krisp ;; esac
fi

rm -rf "$stage"
install -Dm755 "$bin" "$stage/usr/bin/krisp"
strip --strip-unneeded "$stage/usr/bin/krisp"
install -Dm644 models/manifest.toml "$stage/usr/share/krisp/models/manifest.toml"
for f in $(sed -n 's/^file *= *"\(.*\)"/\1/p' models/manifest.toml); do
    install -Dm644 "models/$f" "$stage/usr/share/krisp/models/$f"
done
install -Dm644 installer/linux/krisp.desktop "$stage/usr/share/applications/krisp.desktop"
install -Dm644 installer/linux/krisp-autostart.desktop "$stage/etc/xdg/autostart/krisp.desktop"
for i in assets/icons/*.svg; do
    install -Dm644 "$i" "$stage/usr/share/icons/hicolor/scalable/apps/$(basename "$i")"
done
install -Dm644 README.md "$stage/usr/share/doc/krisp/README.md"
cat > "$stage/usr/share/doc/krisp/copyright" <<'COPY'
Krisp — the noise-cancelling microphone.
The RNNoise model weights (usr/share/krisp/models) are BSD-3-Clause, see models/README.md
in the source tree.
COPY

# Shared libraries the binary links, mapped to the packages that ship them.
deps=$(objdump -p "$stage/usr/bin/krisp" | awk '/NEEDED/ {print $2}' | while read -r lib; do
    path=$(ldconfig -p | awk -v l="$lib" '$1 == l {print $NF; exit}')
    [ -n "$path" ] || continue
    # dpkg knows a library by the path its package installed (before or after /usr merge).
    for p in "$path" "$(readlink -f "$path")" "${path/#\/usr\/lib\//\/lib\/}"; do
        pkg=$(dpkg -S "$p" 2>/dev/null | cut -d: -f1 | head -1)
        if [ -n "$pkg" ]; then echo "$pkg"; break; fi
    done
done | sort -u | tr '\n' ' ')
depends=""
for p in $deps; do depends="$depends${depends:+, }$p"; done
# pactl manages "Krisp Microphone" at run time.
depends="$depends, pulseaudio-utils"
# The window's libraries are opened at run time (winit, glutin), so objdump does not see
# them: keyboard maps, EGL/GL and the X11 extensions winit uses (Wayland desktops: XWayland).
depends="$depends, libxkbcommon0, libxkbcommon-x11-0, libegl1, libgl1, libxcursor1, libxrandr2, libxi6"
recommends="xwayland"

size=$(du -sk "$stage" | cut -f1)
mkdir -p "$stage/DEBIAN"
cat > "$stage/DEBIAN/control" <<CTRL
Package: krisp
Version: $version
Architecture: $arch
Maintainer: Krisp <support@krisp.example>
Installed-Size: $size
Depends: $depends
Recommends: $recommends
Section: sound
Priority: optional
Homepage: https://krisp.example
Description: noise-cancelling microphone
 Removes background noise from your voice on this machine, in real time, and offers
 the result as a virtual microphone, "Krisp Microphone", for Zoom, Teams, OBS or a
 browser. Audio never leaves the machine.
 .
 Silent install: KRISP_SERVER=https://… KRISP_ORG_TOKEN=… apt-get install -y ./krisp.deb
CTRL
install -m755 installer/linux/debian/postinst installer/linux/debian/prerm installer/linux/debian/postrm "$stage/DEBIAN/"

deb="$out/krisp_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "build-deb: $deb (depends: $depends)" >&2
echo "$deb"
