#!/bin/sh
# Builds the guest payloads (Multiboot 1 ELF64 kernels) for the custom target.
# Output: ci/payloads/target/x86_64-gestalt/release/payload-{smp,ept,triple,echo,badstate,badctl,bench,hooks,span,beyond,litmus,slice,reset}
set -eu
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="$PWD/target"
cargo build --release --target ../../targets/x86_64-gestalt.json \
    -Zbuild-std=core -Zbuild-std-features=compiler-builtins-mem "$@"
