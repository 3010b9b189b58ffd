//! Store path names: what Nix accepts after `<hash>-`.
//!
//! Nix allows `[A-Za-z0-9+-._?=]`, at most 211 characters, not starting with `.`.

use crate::Error;

/// Longest name Nix accepts (a store path basename is at most 211 + 33 bytes).
pub const MAX_LEN: usize = 211;

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || "+-._?=".contains(c)
}

/// Checks a name given by the user; rejects rather than rewrites, so what they asked for is what
/// they get.
pub fn validate(name: &str) -> Result<(), Error> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_LEN {
        "it is longer than 211 characters"
    } else if name.starts_with('.') {
        "it starts with '.'"
    } else if !name.chars().all(allowed) {
        "only letters, digits and + - . _ ? = are allowed"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: name.to_owned(),
        why,
    })
}

/// Turns a directory's basename into a valid name: disallowed characters become `-`, leading dots
/// are dropped, and an empty result becomes `source` (what `builtins.path` and flakes use).
pub fn from_basename(basename: &str) -> String {
    let mapped: String = basename
        .chars()
        .map(|c| if allowed(c) { c } else { '-' })
        .collect();
    let trimmed = mapped.trim_start_matches('.');
    let mut name: String = trimmed.chars().take(MAX_LEN).collect();
    if name.is_empty() {
        name = "source".into();
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basenames_become_valid_names() {
        assert_eq!(from_basename("my proj"), "my-proj");
        assert_eq!(from_basename(".hidden"), "hidden");
        assert_eq!(from_basename("ä"), "-");
        assert_eq!(from_basename("..."), "source");
        for n in ["my proj", ".x", "ä", "a".repeat(300).as_str()] {
            validate(&from_basename(n)).unwrap();
        }
    }

    #[test]
    fn invalid_names_are_rejected_with_a_reason() {
        for bad in ["", ".x", "a b", "a/b", &"x".repeat(212)] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
        validate("source").unwrap();
        validate("a+b-c.d_e?f=g").unwrap();
    }
}
