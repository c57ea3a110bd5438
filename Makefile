# Gestalt: the two commands a new user needs are `make run` and `make test` (README).
# GUEST=linux: Debian's cloud kernel with a shell on its console, on one Bochs node (VMX) with
# one vCPU unless NODES, EMU and CPUS say otherwise (EMU=qemu: under SVM, much faster;
# NODES=2 CPUS=2: across two Bochs nodes, the guest clock dilated 20x).
ifeq ($(GUEST),linux)
NODES ?= 1
EMU ?= bochs
CPUS ?= 1
endif
NODES ?= 2
EMU ?= qemu
OUT ?= out
FIRMWARE := target/x86_64-gestalt/release/gestalt-firmware
CARGO ?= cargo

.PHONY: setup firmware image payloads run test lint check host-test bench clean

setup:
	@scripts/setup.sh

firmware: setup
	$(CARGO) firmware

image: firmware
	$(CARGO) run -q -p gestalt-image -- build --firmware $(FIRMWARE) --out $(OUT)

# Guest payloads (bare-metal test programs the VMX tests boot as the guest module).
payloads: setup
	ci/payloads/build.sh

# The cluster runs one guest across its nodes: the span test payload unless GUEST= names
# another Multiboot kernel (or `linux`, above: fetched and packed by gestalt-cluster). QEMU
# nodes run it with SVM and nested paging (its page tables per node: QEMU 7.2 walks guest page
# tables as writes, docs/design.md §9); EMU=bochs with VMX.
GUEST ?= ci/payloads/target/x86_64-gestalt/release/payload-span
CPUS ?= 2
run: image payloads
	$(CARGO) run -q -p gestalt-ci --bin gestalt-cluster -- run --nodes $(NODES) --emu $(EMU) --cpus $(CPUS) --out $(OUT) --guest $(GUEST)

lint: setup
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) firmware-clippy -- -D warnings

host-test: setup
	$(CARGO) test --workspace

# Every test: the image, then all host and emulator tests (the emulator tests boot out/
# artifacts). Lints are not tests: a lint that a newer nightly adds must never stop a new
# user's `make test`. `make lint` (which .ci/run runs too) keeps the code warning-free on the
# nightly the developers' machines carry; `make check` runs both.
test: image payloads
	GESTALT_OUT=$(CURDIR)/$(OUT) GESTALT_PAYLOADS_PREBUILT=1 $(CARGO) test --workspace --no-fail-fast

check: lint test

# Host benchmarks (criterion): transport and coherence engine. Figures, not pass/fail.
# Short criterion runs (the machine is shared); the transport bench ends with CPU per page in
# TSC ticks, udp_netbench with the ratios to plain UDP on 127.0.0.1 at MTU 1500 and 9000.
bench: setup
	$(CARGO) bench -p gestalt-netstack --bench transport -- --warm-up-time 1 --measurement-time 3
	$(CARGO) run --release -p gestalt-netstack --features std --example udp_netbench
	$(CARGO) bench -p gestalt-coherence

clean:
	$(CARGO) clean
	rm -rf $(OUT)
