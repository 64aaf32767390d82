#!/usr/bin/env bash
# Signs Linux packages: a detached, ASCII-armoured gpg signature next to each package (PKG.asc)
# and a SHA256SUMS file (with its own SHA256SUMS.asc) in the packages' folder.
#
#   tools/sign_linux.sh [--key KEYID] PACKAGE...      (default key: $LIKENESS_GPG_KEY, else gpg's default key)
#   tools/sign_linux.sh --verify PACKAGE...           checks PKG.asc and SHA256SUMS
#
# A company signs with its own key: import it (`gpg --import company-signing.key`) on the build
# machine and pass its id. Users (or the deployment tool) verify with the public key:
#   gpg --verify likeness_0.1.0_amd64.deb.asc likeness_0.1.0_amd64.deb && sha256sum -c SHA256SUMS
# GNUPGHOME selects another keyring (CI uses a throwaway one).
set -euo pipefail
key="${LIKENESS_GPG_KEY:-}"
verify=0
while [ $# -gt 0 ]; do
  case "$1" in
    --key) key="$2"; shift 2 ;;
    --verify) verify=1; shift ;;
    --) shift; break ;;
    -*) echo "sign_linux: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: tools/sign_linux.sh [--key KEYID | --verify] PACKAGE..." >&2; exit 2; }
dir="$(cd "$(dirname "$1")" && pwd)"
names=()
for pkg in "$@"; do
  [ -f "$pkg" ] || { echo "sign_linux: $pkg is not a file" >&2; exit 1; }
  [ "$(cd "$(dirname "$pkg")" && pwd)" = "$dir" ] || { echo "sign_linux: put all packages in one folder" >&2; exit 1; }
  names+=("$(basename "$pkg")")
done
cd "$dir"
if [ "$verify" = 1 ]; then
  for n in "${names[@]}"; do gpg --batch --verify "$n.asc" "$n"; done
  gpg --batch --verify SHA256SUMS.asc SHA256SUMS
  sha256sum -c SHA256SUMS
  exit 0
fi
keyarg=()
[ -n "$key" ] && keyarg=(--local-user "$key")
for n in "${names[@]}"; do
  rm -f "$n.asc"
  gpg --batch --yes "${keyarg[@]}" --armor --detach-sign --output "$n.asc" "$n"
done
sha256sum "${names[@]}" > SHA256SUMS
rm -f SHA256SUMS.asc
gpg --batch --yes "${keyarg[@]}" --armor --detach-sign --output SHA256SUMS.asc SHA256SUMS
echo "sign_linux: signed ${names[*]}; wrote $dir/SHA256SUMS (+ .asc)"
