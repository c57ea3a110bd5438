//! Why a file is not a firmware ELF or not a valid Gestalt image, in words a person can act on.

use std::fmt;

/// Everything that can be wrong with an input file. Every variant says what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageError {
    /// The file ends before a structure that must be there.
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed (from the start of the file).
        need: u64,
        /// Bytes the file has.
        have: u64,
    },
    /// The file does not start with the ELF magic.
    NotElf {
        /// What the file looks like instead (e.g. "an ISO 9660 image", "empty").
        looks_like: String,
    },
    /// An ELF, but not the kind this operation needs.
    WrongElfKind {
        /// What was found ("ELF64 x86-64 executable", …).
        found: String,
        /// What was expected, with a hint at the right operation.
        expected: &'static str,
    },
    /// The program headers are inconsistent (outside the file, overlapping, too big…).
    BadSegments(String),
    /// No Multiboot 1 header in the first 8 KiB of the load image.
    NoMultibootHeader,
    /// The multiboot header is present but one of its fields is wrong.
    BadMultiboot(String),
    /// The `GESTALT_IMAGE_V1` info block is missing, duplicated or malformed.
    BadInfoBlock(String),
    /// The image was never stamped by `gestalt-image build`.
    Unstamped,
    /// The stamped build id is not the hash of the image: the image was modified after build.
    BuildIdMismatch {
        /// The id in the file (hex).
        stored: String,
        /// The id recomputed from the file's load image (hex).
        computed: String,
    },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Truncated { what, need, have } => write!(
                f,
                "file is truncated: {what} needs {need} bytes but the file has only {have}"
            ),
            ImageError::NotElf { looks_like } => write!(
                f,
                "not an ELF file ({looks_like}); expected gestalt.elf from `gestalt-image build` \
                 (or, for `build`, the firmware ELF64 from `cargo firmware`)"
            ),
            ImageError::WrongElfKind { found, expected } => {
                write!(f, "this is {found}, but {expected}")
            }
            ImageError::BadSegments(why) => write!(f, "bad ELF program headers: {why}"),
            ImageError::NoMultibootHeader => write!(
                f,
                "no Multiboot 1 header (magic 0x1BADB002 with a valid checksum) in the first \
                 8 KiB of the load image; the firmware must start with it (contracts.md §1)"
            ),
            ImageError::BadMultiboot(why) => write!(f, "bad multiboot header: {why}"),
            ImageError::BadInfoBlock(why) => write!(f, "image info block: {why}"),
            ImageError::Unstamped => write!(
                f,
                "the build id is all zero: this image was never stamped; build it with \
                 `gestalt-image build`"
            ),
            ImageError::BuildIdMismatch { stored, computed } => write!(
                f,
                "build id mismatch: the file says {stored} but its load image hashes to \
                 {computed}; the image was modified after `gestalt-image build`"
            ),
        }
    }
}

impl std::error::Error for ImageError {}
