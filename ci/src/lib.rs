//! Emulator cluster harness (work in progress).
