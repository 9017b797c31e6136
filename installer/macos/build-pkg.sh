#!/usr/bin/env bash
# Builds Krisp.pkg on macOS (Xcode command-line tools; rustup targets aarch64-apple-darwin and
# x86_64-apple-darwin). Not runnable on Linux; reviewed against `man pkgbuild`, `man
# productbuild` and Apple's "Distribution XML Reference".
#
#   KRISP_VERSION=1.0.0 KRISP_RELEASE_KEYS=kid:base64 bash installer/macos/build-pkg.sh
#   # optional: SIGN_APP="Developer ID Application: …" SIGN_PKG="Developer ID Installer: …"
#   # release: KRISP_TEAM_ID=<Developer ID team id> (the ring daemon hands the ring only to
#   #   com.krisp.app signed by that team)
#
# The package installs:
#   /Applications/Krisp.app                           the app (the `krisp` binary inside)
#   /Library/Audio/Plug-Ins/HAL/KrispAudio.driver     "Krisp Microphone" (drivers/macos)
#   /Library/LaunchAgents/com.krisp.app.plist         start at login for every user
#   /Library/Application Support/Krisp/krisp-ringd    the ring daemon (drivers/macos/krisp_ringd.c)
#   /Library/LaunchDaemons/com.krisp.audio.ringd.plist  … as a LaunchDaemon
# and its postinstall (re)loads the ring daemon, then restarts coreaudiod so the device
# appears without a reboot.
set -euo pipefail
cd "$(dirname "$0")/../.."
version=${KRISP_VERSION:?set KRISP_VERSION}
out=target/macos
stage=$out/root
rm -rf "$out"
mkdir -p "$stage/Applications/Krisp.app/Contents/MacOS" "$stage/Library/Audio/Plug-Ins/HAL" \
    "$stage/Library/LaunchAgents" "$stage/Applications/Krisp.app/Contents/Resources/models" \
    "$stage/Library/LaunchDaemons" "$stage/Library/Application Support/Krisp"

for t in aarch64-apple-darwin x86_64-apple-darwin; do
    cargo build --release -p krisp-app --target "$t"
done
lipo -create -output "$stage/Applications/Krisp.app/Contents/MacOS/krisp" \
    target/aarch64-apple-darwin/release/krisp target/x86_64-apple-darwin/release/krisp
sed "s/@VERSION@/$version/g" installer/macos/Info.plist.in > "$stage/Applications/Krisp.app/Contents/Info.plist"
cp models/manifest.toml models/*.rnn "$stage/Applications/Krisp.app/Contents/Resources/models/"

make -C drivers/macos
make -C drivers/macos ringd ${KRISP_TEAM_ID:+TEAM_ID="$KRISP_TEAM_ID"}
cp -R drivers/macos/build/KrispAudio.driver "$stage/Library/Audio/Plug-Ins/HAL/"
cp drivers/macos/build/krisp-ringd "$stage/Library/Application Support/Krisp/"
cp drivers/macos/com.krisp.audio.ringd.plist "$stage/Library/LaunchDaemons/"
cp installer/macos/com.krisp.app.plist "$stage/Library/LaunchAgents/"

if [ -n "${SIGN_APP:-}" ]; then
    codesign --force --options runtime --timestamp --sign "$SIGN_APP" \
        "$stage/Library/Audio/Plug-Ins/HAL/KrispAudio.driver" "$stage/Applications/Krisp.app" \
        "$stage/Library/Application Support/Krisp/krisp-ringd"
fi

pkgbuild --root "$stage" --scripts installer/macos/scripts --identifier com.krisp.app \
    --version "$version" --install-location / "$out/krisp-component.pkg"
productbuild --distribution installer/macos/Distribution.xml --package-path "$out" \
    ${SIGN_PKG:+--sign "$SIGN_PKG"} "$out/Krisp-$version.pkg"
echo "$out/Krisp-$version.pkg"
