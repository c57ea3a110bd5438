//! The image info block of contracts.md §2: locate it by its magic, decode it, and compute and
//! stamp the build id (SHA-256 of the flat load image with the id field zeroed).

use sha2::{Digest, Sha256};

use crate::error::ImageError;

/// Magic at offset 0 of the block.
pub const MAGIC: &[u8; 16] = b"GESTALT_IMAGE_V1";
/// The layout version this tool understands.
pub const LAYOUT_VERSION: u32 = 1;
/// Size of the block in bytes.
pub const SIZE: usize = 136;
/// Offset and length of the build id inside the block.
pub const BUILD_ID: std::ops::Range<usize> = 24..56;
const VERSION: std::ops::Range<usize> = 56..88;
const COMMIT: std::ops::Range<usize> = 88..136;

/// The decoded info block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Offset of the block inside the load image.
    pub offset: usize,
    /// Layout version (1).
    pub layout: u32,
    /// Wire protocol version of transport + coherence.
    pub protocol: u32,
    /// The stamped build id (all zero when unstamped).
    pub build_id: [u8; 32],
    /// Crate version of the firmware.
    pub version: String,
    /// `git describe --always --dirty` at firmware build time.
    pub commit: String,
}

impl Info {
    /// True when `gestalt-image build` has stamped the id.
    pub fn is_stamped(&self) -> bool {
        self.build_id != [0; 32]
    }

    /// The full build id as 64 hex digits.
    pub fn build_id_hex(&self) -> String {
        hex(&self.build_id)
    }

    /// The form the firmware prints: the first 8 bytes as 16 hex digits, or `unstamped`.
    pub fn build_id_short(&self) -> String {
        if self.is_stamped() {
            hex(&self.build_id[..8])
        } else {
            "unstamped".into()
        }
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decode a NUL-padded UTF-8 string field.
fn text(field: &[u8], name: &str) -> Result<String, ImageError> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    std::str::from_utf8(&field[..end])
        .map(str::to_owned)
        .map_err(|_| ImageError::BadInfoBlock(format!("the {name} field is not UTF-8")))
}

/// Find the one info block in `image` (the flat load image) and decode it.
pub fn find(image: &[u8]) -> Result<Info, ImageError> {
    let hits: Vec<usize> = image
        .windows(MAGIC.len())
        .enumerate()
        .filter(|(_, w)| w == MAGIC)
        .map(|(i, _)| i)
        .collect();
    let offset = match hits.as_slice() {
        [] => {
            return Err(ImageError::BadInfoBlock(
                "no block with magic GESTALT_IMAGE_V1 in the load image (it must be in \
                 initialised data, section .gestalt_info)"
                    .into(),
            ))
        }
        [one] => *one,
        many => {
            return Err(ImageError::BadInfoBlock(format!(
                "the magic GESTALT_IMAGE_V1 occurs {} times (offsets {:x?}); there must be \
                 exactly one block",
                many.len(),
                many
            )))
        }
    };
    let block = image.get(offset..offset + SIZE).ok_or_else(|| {
        ImageError::BadInfoBlock(format!(
            "the block at offset {offset:#x} is cut off by the end of the initialised image \
             ({} bytes; the block has {SIZE})",
            image.len()
        ))
    })?;
    let word =
        |at: usize| u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]);
    let layout = word(16);
    if layout != LAYOUT_VERSION {
        return Err(ImageError::BadInfoBlock(format!(
            "layout version {layout}; this tool knows version {LAYOUT_VERSION}"
        )));
    }
    let mut build_id = [0u8; 32];
    build_id.copy_from_slice(&block[BUILD_ID]);
    Ok(Info {
        offset,
        layout,
        protocol: word(20),
        build_id,
        version: text(&block[VERSION], "version")?,
        commit: text(&block[COMMIT], "commit")?,
    })
}

/// The build id of `image` whose info block is at `info_offset`: SHA-256 over the image with the
/// 32 id bytes taken as zero.
pub fn compute_build_id(image: &[u8], info_offset: usize) -> [u8; 32] {
    let id_start = (info_offset + BUILD_ID.start).min(image.len());
    let id_end = (info_offset + BUILD_ID.end).min(image.len());
    let mut h = Sha256::new();
    h.update(&image[..id_start]);
    h.update(vec![0u8; id_end - id_start]);
    h.update(&image[id_end..]);
    h.finalize().into()
}

/// Compute the build id and write it into the block; returns the decoded, stamped block.
pub fn stamp(image: &mut [u8]) -> Result<Info, ImageError> {
    let mut info = find(image)?;
    let id = compute_build_id(image, info.offset);
    image[info.offset + BUILD_ID.start..info.offset + BUILD_ID.end].copy_from_slice(&id);
    info.build_id = id;
    Ok(info)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn block(protocol: u32, version: &str, commit: &str) -> Vec<u8> {
        let mut b = vec![0u8; SIZE];
        b[..16].copy_from_slice(MAGIC);
        b[16..20].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
        b[20..24].copy_from_slice(&protocol.to_le_bytes());
        b[VERSION.start..VERSION.start + version.len()].copy_from_slice(version.as_bytes());
        b[COMMIT.start..COMMIT.start + commit.len()].copy_from_slice(commit.as_bytes());
        b
    }

    #[test]
    fn stamping_writes_the_hash_of_the_image_with_the_id_zeroed() {
        let mut img = vec![0xaa; 100];
        img.extend(block(3, "0.1.0", "abc1234-dirty"));
        img.extend([0xbb; 50]);
        let unstamped = find(&img).unwrap();
        assert!(!unstamped.is_stamped());
        assert_eq!(unstamped.build_id_short(), "unstamped");
        let expected: [u8; 32] = Sha256::digest(&img).into();
        let info = stamp(&mut img).unwrap();
        assert_eq!(info.build_id, expected);
        assert_eq!(find(&img).unwrap(), info);
        assert_eq!(compute_build_id(&img, info.offset), expected, "stamping is idempotent");
        assert_eq!((info.protocol, info.version.as_str()), (3, "0.1.0"));
        assert_eq!(info.commit, "abc1234-dirty");
        assert_eq!(info.build_id_short(), hex(&expected[..8]));
    }

    #[test]
    fn two_blocks_are_ambiguous() {
        let mut img = block(1, "a", "b");
        img.extend(block(1, "a", "b"));
        assert!(find(&img).unwrap_err().to_string().contains("2 times"));
    }

    #[test]
    fn a_block_cut_off_by_the_image_end_is_reported() {
        let img = &block(1, "a", "b")[..100];
        assert!(find(img).unwrap_err().to_string().contains("cut off"));
    }
}
