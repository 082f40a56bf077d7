#!/usr/bin/env bash
# Install the Debian packages the tests and the corpus synthesiser need, only if missing.
set -euo pipefail
need=()
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v flite >/dev/null || need+=(flite)
command -v text2wave >/dev/null || need+=(festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts)
command -v sox >/dev/null || need+=(sox)
[ -d /usr/share/games/fortunes ] || need+=(fortunes)
[ -d /usr/share/wordnet ] || need+=(wordnet-base)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${need[*]}; run as root: apt-get install -y ${need[*]}" >&2
    exit 1
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
