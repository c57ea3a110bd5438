#!/usr/bin/env bash
# Idempotent machine setup for `make run` / `make test`: Debian packages and the nightly
# rust-src component. Installs only what is missing; names the step that failed.
set -uo pipefail

PKGS=(qemu-system-x86 bochs bochs-term bochsbios vgabios grub-pc-bin grub-common xorriso mtools ipxe-qemu pxelinux syslinux-common)

fail() { echo "setup: FAILED at step '$1': $2" >&2; exit 1; }

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || fail "apt packages" "not root and no sudo; install: ${missing[*]}"
    SUDO=sudo
  fi
  $SUDO apt-get update -qq || fail "apt-get update" "could not refresh the package lists"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || fail "apt-get install" "could not install ${missing[*]}"
fi

command -v rustup >/dev/null || fail "rustup" "rustup is not on PATH (install Rust with rustup first)"
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  echo "setup: adding rust-src to the nightly toolchain"
  rustup toolchain install nightly --profile minimal -c rust-src,rustfmt,clippy >/dev/null 2>&1 \
    || rustup component add rust-src --toolchain nightly \
    || fail "rustup component add rust-src --toolchain nightly" "could not add rust-src"
fi
for c in rustfmt clippy; do
  rustup component list --toolchain nightly --installed 2>/dev/null | grep -q "^$c" \
    || rustup component add "$c" --toolchain nightly >/dev/null 2>&1 \
    || fail "rustup component add $c --toolchain nightly" "could not add $c"
done
exit 0
