//! Which Nix a machine has, from what `nix --version` prints, and what that means for the
//! pre-build hook. Versions are read from that one line: `nix (Nix) 2.26.3`,
//! `nix (Lix, like Nix) 2.93.0`, `nix (Determinate Nix 3.22.0) 2.35.1`.

/// A Nix implementation and its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub lix: bool,
    /// Major, minor, patch (the Nix-compatible version for Determinate).
    pub number: (u32, u32, u32),
}

impl Version {
    /// Parses the first line of `nix --version`.
    pub fn parse(line: &str) -> Option<Version> {
        let line = line.lines().next()?;
        let mut parts = line.rsplit(' ').next()?.split('.').map(|n| {
            let digits: String = n.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
        let number = (
            parts.next()??,
            parts.next()??,
            parts.next().flatten().unwrap_or(0),
        );
        Some(Version {
            lix: line.contains("Lix"),
            number,
        })
    }

    /// Lix from 2.93 on runs the pre-build hook and discards what it prints (read from its
    /// source, `libstore/build/local-derivation-goal.cc`), so no snapshot reaches a sandbox.
    pub fn discards_hook_output(&self) -> bool {
        self.lix && self.number >= (2, 93, 0)
    }

    /// One line for a user of such a Nix, or none.
    pub fn hook_warning(&self) -> Option<String> {
        let (a, b, c) = self.number;
        self.discards_hook_output().then(|| {
            format!(
                "Lix {a}.{b}.{c} discards what the pre-build hook prints, so builds will not see snapshots; store mode (a snapshot published into the Nix store) is the way for Lix, see docs/nix.md"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flavour_of_version_line_is_read_and_only_lix_from_2_93_discards_the_hook() {
        let v = |l: &str| Version::parse(l).unwrap();
        assert_eq!(v("nix (Nix) 2.8.0").number, (2, 8, 0));
        assert!(!v("nix (Nix) 2.34.8").discards_hook_output());
        assert!(!v("nix (Determinate Nix 3.22.0) 2.35.1").discards_hook_output());
        assert!(!v("nix (Lix, like Nix) 2.92.3").discards_hook_output());
        assert!(v("nix (Lix, like Nix) 2.93.0").discards_hook_output());
        assert!(v("nix (Lix, like Nix) 2.95.0-pre20260101_abc").discards_hook_output());
        assert_eq!(Version::parse("garbage"), None);
    }
}
