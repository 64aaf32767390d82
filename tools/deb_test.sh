#!/usr/bin/env bash
# The Linux package end to end, as an IT team deploys it: build the .deb from the release build
# tools/test.sh already made (same profile and features: nothing is compiled twice), sign it with a
# throwaway gpg key and verify the signature and SHA256SUMS, install it with apt, run the installed
# `likeness` CLI on the sample photo with the installed models, launch the installed app under Xvfb
# to its first window, then purge it and check that no file is left. Needs root (apt) and the
# packages of tools/setup.sh. Inside tools/test.sh's D-Bus session, or on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "deb_test: run as root (it installs and removes the package with apt)" >&2; exit 1; }
WORK="$(mktemp -d)"
cleanup() {
  dpkg -s likeness >/dev/null 2>&1 && apt-get remove --purge -y -qq likeness >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
t0=$(date +%s)

# 1. The package, from the existing release build (tauri adds only the bundling step).
rm -rf target/release/bundle/deb
# `tauri bundle` packages the binaries tools/test.sh built with exactly `tauri build`'s cargo command
# (`cargo build --release --locked --bins --features tauri/custom-protocol`); `tauri build` itself
# would rerun the UI build and rebuild the app.
APP_BIN=target/release/likeness-app CLI_BIN=target/release/likeness
if [ ! -x "$APP_BIN" ] || [ ! -x "$CLI_BIN" ]; then
  cargo build --release --locked --bins --features tauri/custom-protocol
fi
npx tauri bundle --bundles deb --ci >"$WORK/tauri-build.log" 2>&1 || { tail -40 "$WORK/tauri-build.log" >&2; exit 1; }
DEB="$(ls target/release/bundle/deb/likeness_*_amd64.deb target/release/bundle/deb/likeness_*.deb 2>/dev/null | head -1)"
[ -f "$DEB" ] || { echo "deb_test: no .deb in target/release/bundle/deb" >&2; exit 1; }
echo "deb_test: built $DEB ($(du -h "$DEB" | cut -f1)) in $(( $(date +%s) - t0 )) s"
dpkg-deb -c "$DEB" > "$WORK/contents"
for f in usr/bin/likeness usr/bin/likeness-app usr/lib/likeness/models/manifest.toml \
         usr/lib/likeness/models/face_mesh_468.safetensors usr/lib/likeness/assets/licenses/Apache-2.0.txt \
         usr/lib/likeness/assets/backdrops/warm-beige.jpg; do
  grep -qE " (\./)?$f\$" "$WORK/contents" || { echo "deb_test: the package lacks /$f" >&2; exit 1; }
done

# 2. Sign with a throwaway key, verify.
export GNUPGHOME="$WORK/gnupg"; mkdir -m 700 "$GNUPGHOME"
gpg --batch --quiet --passphrase '' --quick-gen-key 'Likeness CI (throwaway) <ci@likeness.invalid>' ed25519 sign 1d 2>/dev/null
cp "$DEB" "$WORK/"; PKG="$WORK/$(basename "$DEB")"
tools/sign_linux.sh --key ci@likeness.invalid "$PKG" >/dev/null
tools/sign_linux.sh --verify "$PKG" >/dev/null 2>&1 || { echo "deb_test: signature does not verify" >&2; exit 1; }
printf 'x' >> "$PKG"
if tools/sign_linux.sh --verify "$PKG" >/dev/null 2>&1; then echo "deb_test: a tampered package verified" >&2; exit 1; fi
echo "deb_test: signed and verified (and a tampered copy was refused)"

# 3. Install with apt (dependencies are already on the machine: no download).
dpkg -s likeness >/dev/null 2>&1 && apt-get remove --purge -y -qq likeness >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$PWD/$DEB" >/dev/null
dpkg -L likeness | while read -r f; do if [ -f "$f" ]; then echo "$f"; fi; done > "$WORK/installed"
echo "deb_test: installed $(wc -l < "$WORK/installed") files"

# 4. The installed CLI on the sample photo, with the installed models (run from / so nothing of
#    this checkout is near; the key from a passphrase, not the session's keyring).
OUT="$WORK/out"
( cd / && env -u DBUS_SESSION_BUS_ADDRESS -u DISPLAY -u LIKENESS_MODELS_DIR -u LIKENESS_ASSETS_DIR LIKENESS_DATA_DIR="$WORK/data" LIKENESS_PASSPHRASE=deb-test \
    /usr/bin/likeness models verify >/dev/null &&
  env -u DBUS_SESSION_BUS_ADDRESS -u DISPLAY -u LIKENESS_MODELS_DIR -u LIKENESS_ASSETS_DIR LIKENESS_DATA_DIR="$WORK/data" LIKENESS_PASSPHRASE=deb-test \
    /usr/bin/likeness generate "$OLDPWD/assets/photos/grace_hopper_512x512.jpg" --background image:warm-beige --out "$OUT" >/dev/null 2>"$WORK/gen.err" ) \
  || { cat "$WORK/gen.err" >&2; echo "deb_test: the installed likeness failed" >&2; exit 1; }
[ -n "$(ls "$OUT")" ] || { echo "deb_test: the installed likeness wrote nothing" >&2; exit 1; }
echo "deb_test: installed CLI made $(ls "$OUT")"

# 5. The installed app to its first window.
LIKENESS_DATA_DIR="$WORK/appdata" LIKENESS_PASSPHRASE=deb-test NO_AT_BRIDGE=1 xvfb-run -a -s "-screen 0 1280x800x24" bash -c '
  /usr/bin/likeness-app >"$0/app.log" 2>&1 & APP=$!
  rc=0; timeout 60 xdotool search --sync --onlyvisible --name "^Likeness$" >/dev/null || rc=$?
  kill $APP 2>/dev/null; wait $APP 2>/dev/null || true
  exit $rc' "$WORK" || { tail -20 "$WORK/app.log" >&2; echo "deb_test: the installed app showed no window" >&2; exit 1; }
echo "deb_test: installed app opened its window"

# 6. Purge, and nothing may be left.
DEBIAN_FRONTEND=noninteractive apt-get remove --purge -y -qq likeness >/dev/null
left="$(while read -r f; do if [ -e "$f" ]; then echo "$f"; fi; done < "$WORK/installed")"
[ -z "$left" ] || { echo "deb_test: files left after purge:" >&2; echo "$left" >&2; exit 1; }
[ ! -e /usr/lib/likeness ] || { echo "deb_test: /usr/lib/likeness is left after purge" >&2; exit 1; }
echo "deb_test: purged, no file left ($(( $(date +%s) - t0 )) s in all)"
