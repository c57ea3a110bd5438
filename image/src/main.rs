//! gestalt-image: build, inspect and verify firmware images.
fn main() {}
