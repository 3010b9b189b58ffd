//! Reading `nix.conf` and adding or removing srcstore's block in it.
//!
//! srcstore never edits a line it did not write: `--apply` appends one marked block (later
//! settings override earlier ones in nix.conf), `--undo` removes exactly that block, so the file
//! returns to its previous bytes.

const BEGIN: &str = "# BEGIN srcstore: added by `srcstore nix setup --apply`; `srcstore nix setup --undo` removes it";
/// The same marker, when a newline had to be added to the end of the file before the block.
const BEGIN_JOINED: &str = "# BEGIN srcstore (newline added): added by `srcstore nix setup --apply`; `srcstore nix setup --undo` removes it";
const END: &str = "# END srcstore";

/// The value in effect for `key` (the last assignment wins), ignoring srcstore's own block.
pub fn setting(conf: &str, key: &str) -> Option<String> {
    let without_block = remove_block(conf);
    setting_in(&without_block, key)
}

/// The value in effect for `key`, srcstore's block included.
pub fn effective(conf: &str, key: &str) -> Option<String> {
    setting_in(conf, key)
}

fn setting_in(conf: &str, key: &str) -> Option<String> {
    conf.lines()
        .filter_map(|line| {
            let line = line.split('#').next()?.trim();
            let (k, v) = line.split_once('=')?;
            (k.trim() == key).then(|| v.trim().to_owned())
        })
        .next_back()
}

/// The block currently in the file, if any.
pub fn block(conf: &str) -> Option<String> {
    let start = conf.find(BEGIN).or_else(|| conf.find(BEGIN_JOINED))?;
    let end = conf[start..].find(END)? + start + END.len();
    Some(conf[start..end].to_owned())
}

/// `conf` with `settings` (`key = value` lines) appended as srcstore's block, replacing an
/// earlier block.
pub fn with_block(conf: &str, settings: &[String]) -> String {
    let mut out = remove_block(conf);
    let joined = !out.is_empty() && !out.ends_with('\n');
    if joined {
        out.push('\n');
    }
    out.push_str(if joined { BEGIN_JOINED } else { BEGIN });
    out.push('\n');
    for s in settings {
        out.push_str(s);
        out.push('\n');
    }
    out.push_str(END);
    out.push('\n');
    out
}

/// `conf` as it was before srcstore's block was added.
pub fn remove_block(conf: &str) -> String {
    let (start, joined) = match (conf.find(BEGIN), conf.find(BEGIN_JOINED)) {
        (Some(s), _) => (s, false),
        (None, Some(s)) => (s, true),
        (None, None) => return conf.to_owned(),
    };
    let Some(end) = conf[start..].find(END).map(|e| e + start + END.len()) else {
        return conf.to_owned();
    };
    let end = if conf[end..].starts_with('\n') {
        end + 1
    } else {
        end
    };
    let mut out = format!("{}{}", &conf[..start], &conf[end..]);
    if joined && conf[end..].is_empty() && out.ends_with('\n') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_and_removing_the_block_restores_the_bytes() {
        for original in [
            "",
            "sandbox = false\n",
            "a = 1\nb = 2",
            "pre-build-hook = /x # old\n",
        ] {
            let added = with_block(original, &["pre-build-hook = /h".into()]);
            assert_eq!(effective(&added, "pre-build-hook").as_deref(), Some("/h"));
            assert_eq!(
                with_block(&added, &["pre-build-hook = /h".into()]),
                added,
                "idempotent"
            );
            assert_eq!(remove_block(&added), original);
            assert!(block(&added).is_some() && block(original).is_none());
        }
    }

    #[test]
    fn the_last_assignment_wins_and_comments_are_ignored() {
        let c = "sandbox = false\n# sandbox = relaxed\nsandbox = true # yes\n";
        assert_eq!(setting(c, "sandbox").as_deref(), Some("true"));
        assert_eq!(setting(c, "missing"), None);
    }
}
