//! The image info block (docs/contracts.md §2): version, commit, protocol version and the
//! build id that `gestalt-image build` stamps into the image after linking.

/// Magic that `gestalt-image` searches for.
pub const MAGIC: [u8; 16] = *b"GESTALT_IMAGE_V1";
/// Layout version of [`ImageInfo`].
pub const LAYOUT_VERSION: u32 = 1;
/// Wire protocol version spoken by transport and coherence. 2: the transport's session
/// nonces (netstack README "Freshness"). 3: Poly1305 datagram tags (netstack README "Which
/// MAC, and why").
pub const PROTOCOL_VERSION: u32 = 3;
// The image says which protocol it speaks: the transport's own version must agree.
const _: () = assert!(PROTOCOL_VERSION == gestalt_netstack::transport::PROTOCOL_VERSION as u32);

/// The block as laid out in the image (136 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ImageInfo {
    /// [`MAGIC`].
    pub magic: [u8; 16],
    /// [`LAYOUT_VERSION`].
    pub layout_version: u32,
    /// [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// SHA-256 of the load image with this field zeroed; zero until stamped.
    pub build_id: [u8; 32],
    /// Crate version, NUL padded.
    pub version: [u8; 32],
    /// `git describe` of the source, NUL padded.
    pub git_commit: [u8; 48],
}

const fn padded<const N: usize>(s: &str) -> [u8; N] {
    let b = s.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < b.len() && i < N {
        out[i] = b[i];
        i += 1;
    }
    out
}

/// This image's block; `#[used]` and in its own section so the linker keeps it in place.
#[used]
#[unsafe(link_section = ".gestalt_info")]
pub static IMAGE_INFO: ImageInfo = ImageInfo {
    magic: MAGIC,
    layout_version: LAYOUT_VERSION,
    protocol_version: PROTOCOL_VERSION,
    build_id: [0; 32],
    version: padded(env!("CARGO_PKG_VERSION")),
    git_commit: padded(env!("GESTALT_GIT_COMMIT")),
};

/// The block as it is in memory now, read so the compiler cannot fold in the unstamped
/// build id it saw at compile time.
pub fn current() -> ImageInfo {
    // SAFETY: IMAGE_INFO is a valid, aligned static, never written while the program runs.
    unsafe { volatile::VolatilePtr::new_read_only(core::ptr::NonNull::from(&IMAGE_INFO)).read() }
}

impl ImageInfo {
    /// The NUL-padded text field as a str.
    fn text(field: &[u8]) -> &str {
        let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
        core::str::from_utf8(&field[..end]).unwrap_or("?")
    }

    /// Crate version.
    pub fn version_str(&self) -> &str {
        Self::text(&self.version)
    }

    /// Git commit.
    pub fn commit_str(&self) -> &str {
        Self::text(&self.git_commit)
    }

    /// The short build id: first 8 bytes as 16 hex digits, or `None` when unstamped.
    pub fn short_build_id(&self) -> Option<[u8; 16]> {
        if self.build_id.iter().all(|&b| b == 0) {
            return None;
        }
        let hex = b"0123456789abcdef";
        let mut out = [0u8; 16];
        for (i, b) in self.build_id[..8].iter().enumerate() {
            out[2 * i] = hex[usize::from(b >> 4)];
            out[2 * i + 1] = hex[usize::from(b & 15)];
        }
        Some(out)
    }
}

impl core::fmt::Display for ImageInfo {
    /// `Gestalt <version> (commit <commit>) build <id> protocol <n>` — the boot banner.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let id = self.short_build_id();
        let id = id.as_ref().map_or("unstamped", |b| core::str::from_utf8(b).unwrap_or("?"));
        write!(
            f,
            "Gestalt {} (commit {}) build {} protocol {}",
            self.version_str(),
            self.commit_str(),
            id,
            self.protocol_version
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_block_is_136_bytes_as_the_contract_says() {
        assert_eq!(core::mem::size_of::<ImageInfo>(), 136);
        assert_eq!(core::mem::offset_of!(ImageInfo, build_id), 24);
        assert_eq!(core::mem::offset_of!(ImageInfo, version), 56);
        assert_eq!(core::mem::offset_of!(ImageInfo, git_commit), 88);
    }

    #[test]
    fn unstamped_image_says_so_and_stamped_shows_sixteen_hex_digits() {
        let mut info = current();
        assert!(info.to_string().contains("build unstamped"));
        info.build_id[0] = 0xab;
        info.build_id[7] = 0x01;
        let want = format!("build ab00000000000001 protocol {PROTOCOL_VERSION}");
        assert!(info.to_string().contains(&want), "{info}");
    }
}
