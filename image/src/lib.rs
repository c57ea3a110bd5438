//! gestalt-image: the pure logic behind the `gestalt-image` tool — ELF parsing, flattening the
//! firmware's ELF64 into the multiboot load image, the ELF32 wrapper, the build id stamp and the
//! verification of finished images (docs/contracts.md §1–§2). No file or process I/O here, so
//! everything is unit-testable and no input byte sequence can make it panic.
#![warn(missing_docs)]

pub mod boot_config;
pub mod elf;
pub mod error;
pub mod image;
pub mod info;
pub mod iso;
pub mod multiboot;

pub use error::ImageError;
pub use image::{build_image, describe_file, verify_image, Built, FileKind, ImageReport};
