//! Nix's hash encodings and the store path a source tree gets.

use sha2::{Digest, Sha256};

/// Nix's base-32 (alphabet without e, o, u, t; most significant character first).
pub fn base32(bytes: &[u8]) -> String {
    nix_base32::to_nix_base32(bytes)
}

/// `sha256:<base32>`, the form `nix path-info` and `narHash` attributes use.
pub fn sha256_string(digest: &[u8; 32]) -> String {
    format!("sha256:{}", base32(digest))
}

/// The path `nix-store --add` (or `builtins.path`) gives a tree with this NAR hash and name:
/// a content-addressed, recursive SHA-256 path with no references.
pub fn source_store_path(store_dir: &str, nar_sha256: &[u8; 32], name: &str) -> String {
    let fingerprint = format!("source:sha256:{}:{}:{}", hex(nar_sha256), store_dir, name);
    let digest = Sha256::digest(fingerprint.as_bytes());
    let mut folded = [0u8; 20];
    for (i, b) in digest.iter().enumerate() {
        folded[i % 20] ^= b;
    }
    format!("{}/{}-{}", store_dir, base32(&folded), name)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_nix() {
        // sha256 of the empty string, as `nix hash file` prints it.
        let d: [u8; 32] = Sha256::digest(b"").into();
        assert_eq!(
            base32(&d),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
    }
}
