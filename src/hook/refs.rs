//! Which snapshot paths a derivation names, and the `extra-sandbox-paths` block that makes
//! exactly those visible.

use std::path::{Path, PathBuf};

use super::mountinfo::ViewMount;
use super::HookError;
use crate::nix::drv::Derivation;

/// Where, inside the sandbox, the main snapshot also appears: the same path for every
/// snapshot, so compilers that hash absolute source paths keep hitting their caches.
pub const STABLE_SRC: &str = "/srcstore/src";

/// A snapshot path a derivation names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `<mountpoint>/<hash>-<name>`
    pub path: PathBuf,
    pub basename: String,
    /// The view serving it, if one is mounted.
    pub view: Option<ViewMount>,
    /// Named by the `src` attribute.
    pub is_src: bool,
}

/// Snapshot paths in the derivation's strings: under a mounted view, or under a default
/// srcstore runtime directory (`/run/srcstore`, `/run/user/<uid>/srcstore`,
/// `/tmp/srcstore-<uid>`), where a path with no view means its daemon is gone or out of sight.
pub fn references(drv: &Derivation, views: &[ViewMount]) -> Vec<Reference> {
    let mut found: Vec<Reference> = Vec::new();
    let src = drv
        .env
        .iter()
        .find(|(k, _)| k == "src")
        .map(|(_, v)| v.as_str());
    for s in drv.strings() {
        for (start, _) in s.match_indices('/') {
            if start > 0 && !is_path_boundary(s.as_bytes()[start - 1]) {
                continue;
            }
            let Some(reference) = reference_at(&s[start..], views) else {
                continue;
            };
            let is_src = src == Some(s) && start == 0;
            match found.iter_mut().find(|r| r.path == reference.path) {
                Some(r) => r.is_src |= is_src,
                None => found.push(Reference {
                    is_src,
                    ..reference
                }),
            }
        }
    }
    found
}

fn is_path_boundary(b: u8) -> bool {
    !(b.is_ascii_alphanumeric() || b"+-._?=/".contains(&b))
}

/// The snapshot `path` names exactly (`<mountpoint>/<basename>` of a view in `views`, or
/// under a default runtime directory), if it names one.
pub fn reference(path: &str, views: &[ViewMount]) -> Option<Reference> {
    reference_at(path, views).filter(|r| r.path.as_os_str() == path)
}

/// The reference starting at `s` (which starts with `/`), if `s` is `<dir>/<basename>…`.
fn reference_at(s: &str, views: &[ViewMount]) -> Option<Reference> {
    for view in views {
        let Some(m) = view.mountpoint.to_str() else {
            continue; // no derivation string can name it
        };
        if let Some(rest) = s.strip_prefix(m).and_then(|r| r.strip_prefix('/')) {
            let base = snapshot_basename(rest)?;
            return Some(Reference {
                path: view.mountpoint.join(base),
                basename: base.to_owned(),
                view: Some(view.clone()),
                is_src: false,
            });
        }
    }
    let (runtime, rest) = default_runtime_dir(s)?;
    let (mnt, after) = rest.split_once('/')?;
    let base = snapshot_basename(after)?;
    Some(Reference {
        path: Path::new(runtime).join(mnt).join(base),
        basename: base.to_owned(),
        view: None,
        is_src: false,
    })
    .filter(|_| !mnt.is_empty())
}

/// Splits `s` after a default runtime directory of srcstore's: `/run/srcstore/`,
/// `/run/user/<uid>/srcstore/` or `/tmp/srcstore-<uid>/` (see `daemon`'s runtime paths).
pub fn default_runtime_dir(s: &str) -> Option<(&str, &str)> {
    let digits = |r: &str| -> Option<usize> {
        let n = r.bytes().take_while(u8::is_ascii_digit).count();
        (n > 0).then_some(n)
    };
    let len = if s.starts_with("/run/srcstore/") {
        "/run/srcstore".len()
    } else if let Some(r) = s.strip_prefix("/run/user/") {
        let n = digits(r)?;
        r[n..].strip_prefix("/srcstore/")?;
        "/run/user/".len() + n + "/srcstore".len()
    } else {
        let r = s.strip_prefix("/tmp/srcstore-")?;
        let n = digits(r)?;
        r[n..].strip_prefix('/')?;
        "/tmp/srcstore-".len() + n
    };
    Some((&s[..len], &s[len + 1..]))
}

/// The user whose default runtime directory `runtime` (from [`default_runtime_dir`]) is.
pub fn runtime_owner(runtime: &str) -> Option<u32> {
    match runtime.strip_prefix("/run/user/") {
        Some(r) => r.split('/').next()?.parse().ok(),
        None => match runtime.strip_prefix("/tmp/srcstore-") {
            Some(uid) => uid.parse().ok(),
            None => (runtime == "/run/srcstore").then_some(0),
        },
    }
}

/// `<32 base-32 chars>-<name>` at the start of `s`, ending at `/`, a non-name byte or the end.
fn snapshot_basename(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    if b.len() < 34 || b[32] != b'-' {
        return None;
    }
    if !b[..32]
        .iter()
        .all(|c| b"0123456789abcdfghijklmnpqrsvwxyz".contains(c))
    {
        return None;
    }
    let end = b[33..]
        .iter()
        .position(|c| !(c.is_ascii_alphanumeric() || b"+-._?=".contains(c)))
        .map_or(b.len(), |p| 33 + p);
    (end > 33).then(|| &s[..end])
}

/// The hook's answer: each snapshot, staged at `staged[i]`, at the path the derivation names;
/// the main one (the `src` attribute's, else the first) also at [`STABLE_SRC`], and every one
/// at `/srcstore/<name>`.
pub fn sandbox_block(refs: &[Reference], staged: &[PathBuf]) -> Result<String, HookError> {
    if refs.is_empty() {
        return Ok(String::new());
    }
    let main = refs.iter().position(|r| r.is_src).unwrap_or(0);
    let mut out = String::from("extra-sandbox-paths\n");
    // Nix keeps the last line for an inside path: each is written once, the main snapshot's
    // stable path first, so no other snapshot (one named `…-src`, two of one name) takes it.
    let mut taken: Vec<PathBuf> = vec![PathBuf::from(STABLE_SRC)];
    out.push_str(&sandbox_line(
        &refs[main].path,
        Path::new(STABLE_SRC),
        &staged[main],
    )?);
    for (r, outside) in refs.iter().zip(staged) {
        out.push_str(&sandbox_line(&r.path, &r.path, outside)?);
        if let Some((_, name)) = r.basename.split_once('-') {
            let inside = Path::new("/srcstore").join(name);
            if !taken.contains(&inside) {
                out.push_str(&sandbox_line(&r.path, &inside, outside)?);
                taken.push(inside);
            }
        }
    }
    out.push('\n');
    Ok(out)
}

/// A block that fails the build with `refusal` in Nix's own error, for a hook whose standard
/// error does not reach the user: nix-daemon sends a hook's stderr to its own log and tells the
/// client only "program failed". A path that does not exist fails the build before it starts
/// (`getting attributes of path '…'`), and the path is the message.
pub fn refusal_block(refusal: &HookError) -> String {
    let message: String = format!("srcstore: {refusal}")
        .chars()
        .map(|c| {
            if matches!(c, '\n' | '\r' | '=' | '\0') {
                ' '
            } else {
                c
            }
        })
        .collect();
    format!("extra-sandbox-paths\n/srcstore/refused=/{message}\n\n")
}

/// One `INSIDE=OUTSIDE` line. Nix splits the hook's output at newlines and each line at its
/// first `=`, so a path holding either would say something else than meant (a mountpoint with
/// a newline in it could add a line of its own): such a path is refused, never written.
pub(super) fn sandbox_line(
    named: &Path,
    inside: &Path,
    outside: &Path,
) -> Result<String, HookError> {
    for p in [inside, outside] {
        let s = p
            .to_str()
            .ok_or_else(|| HookError::new(named, "the path is not UTF-8"))?;
        if let Some(c) = s.chars().find(|c| matches!(c, '\n' | '\r' | '=' | '\0')) {
            return Err(HookError::new(
                named,
                format!(
                    "the path holds {c:?}, which Nix's sandbox-path syntax cannot carry; mount the view where the path has none (`srcstore mount --mountpoint`, `--name`)"
                ),
            ));
        }
    }
    Ok(format!("{}={}\n", inside.display(), outside.display()))
}

#[cfg(test)]
mod tests {
    use super::super::mountinfo::{tests::INFO, view_mounts};
    use super::*;

    fn drv(env: &[(&str, &str)]) -> Derivation {
        Derivation {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    const H: &str = "0m7wq1c0m7wq1c0m7wq1c0m7wq1c0m7w";

    #[test]
    fn snapshot_paths_are_found_anywhere_in_strings_and_nothing_else() {
        let views = view_mounts(INFO.as_bytes());
        let h = H;
        let d = drv(&[
            ("src", &format!("/run/srcstore/proj-1a2b3c4d/{h}-proj")),
            ("script", &format!("cd /tmp/with space/{h}-lib/sub && make")),
            (
                "unrelated",
                "/nix/store/abc-foo /run/srcstore/proj-1a2b3c4d/not-a-snapshot",
            ),
            ("gone", &format!("/run/user/1000/srcstore/x-1/{h}-old")),
            ("fallback", &format!("/tmp/srcstore-1000/y-2/{h}-tmp")),
            (
                "prefixed",
                &format!("x/run/srcstore/proj-1a2b3c4d/{h}-nope"),
            ),
            ("not-a-uid", &format!("/tmp/srcstore-x/y-2/{h}-nope")),
        ]);
        let refs = references(&d, &views);
        let paths: Vec<_> = refs
            .iter()
            .map(|r| r.path.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            paths,
            vec![
                format!("/run/srcstore/proj-1a2b3c4d/{h}-proj"),
                format!("/tmp/with space/{h}-lib"),
                format!("/run/user/1000/srcstore/x-1/{h}-old"),
                format!("/tmp/srcstore-1000/y-2/{h}-tmp"),
            ]
        );
        assert!(refs[0].is_src && refs[0].view.is_some());
        assert!(
            refs[2].view.is_none() && refs[3].view.is_none(),
            "a default-location path with no view is a dead daemon's"
        );
        let staged: Vec<PathBuf> = (0..4).map(|i| format!("/stage/{i}").into()).collect();
        let block = sandbox_block(&refs, &staged).unwrap();
        assert!(block.starts_with("extra-sandbox-paths\n") && block.ends_with("\n\n"));
        assert!(block.contains(&format!("/run/srcstore/proj-1a2b3c4d/{h}-proj=/stage/0\n")));
        assert!(block.contains("/srcstore/src=/stage/0\n"));
        assert!(block.contains("/srcstore/lib=/stage/1\n"));
        assert!(
            block
                .lines()
                .skip(1)
                .all(|l| l.is_empty() || l.contains("=/stage/")),
            "every line maps a path to what the hook staged: {block}"
        );
    }

    #[test]
    fn no_other_snapshot_takes_the_stable_path_or_a_name_already_given() {
        let views = view_mounts(INFO.as_bytes());
        let m = "/run/srcstore/proj-1a2b3c4d";
        let h2 = "1m7wq1c0m7wq1c0m7wq1c0m7wq1c0m7w";
        let d = drv(&[
            ("src", &format!("{m}/{H}-proj")),
            ("other", &format!("{m}/{h2}-src")),
            ("again", &format!("{m}/{h2}-proj")),
        ]);
        let refs = references(&d, &views);
        let staged: Vec<PathBuf> = (0..3).map(|i| format!("/stage/{i}").into()).collect();
        let block = sandbox_block(&refs, &staged).unwrap();
        let lines: Vec<&str> = block.lines().collect();
        let of = |inside: &str| -> Vec<&str> {
            lines
                .iter()
                .filter(|l| l.split_once('=').is_some_and(|(i, _)| i == inside))
                .copied()
                .collect()
        };
        assert_eq!(of("/srcstore/src"), ["/srcstore/src=/stage/0"], "{block}");
        assert_eq!(of("/srcstore/proj"), ["/srcstore/proj=/stage/0"], "{block}");
    }

    #[test]
    fn a_derivation_naming_no_snapshot_gets_no_block() {
        let d = drv(&[("src", "/nix/store/aaaa-src"), ("x", "/run/srcstore/")]);
        assert!(references(&d, &view_mounts(INFO.as_bytes())).is_empty());
        assert_eq!(sandbox_block(&[], &[]).unwrap(), "");
    }

    #[test]
    fn a_refusal_is_one_line_naming_a_path_nothing_can_create() {
        let refusal = HookError::new("/tmp/a\n/root=x", "refused");
        let block = refusal_block(&refusal);
        let lines: Vec<&str> = block.lines().collect();
        assert_eq!(lines.len(), 3, "{block}");
        assert_eq!((lines[0], lines[2]), ("extra-sandbox-paths", ""));
        let (inside, outside) = lines[1].split_once('=').unwrap();
        assert_eq!(inside, "/srcstore/refused");
        assert!(
            !outside.contains('=') && outside.starts_with("/srcstore: "),
            "{outside}"
        );
        assert!(outside.contains("refused"));
    }

    #[test]
    fn a_mountpoint_with_a_newline_or_an_equals_sign_never_reaches_the_block() {
        for mnt in ["/tmp/a\\012/root\\012/tmp/b", "/tmp/a=/root"] {
            let info = format!("50 35 0:60 / {mnt} ro - fuse srcstore:/tmp/x.sock ro,user_id=1000");
            let views = view_mounts(info.as_bytes());
            let named = format!("{}/{H}-x", views[0].mountpoint.display());
            let refs = references(&drv(&[("src", &named)]), &views);
            assert_eq!(refs.len(), 1);
            let err = sandbox_block(&refs, &["/stage/0".into()]).unwrap_err();
            let shown = named.replace('\n', "\\n");
            assert!(err.to_string().starts_with(&shown), "{err}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
    }
}
