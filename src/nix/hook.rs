//! The pre-build hook's logic: which snapshot paths a derivation names, which daemon serves
//! each, and the `extra-sandbox-paths` block that makes exactly those visible.
//!
//! Daemons are found in the kernel's mount table: a srcstore view is a FUSE mount (type `fuse`,
//! or `fuse.srcstore` where the mount helper records the subtype) whose source is
//! `srcstore:<control socket>`.

use std::path::PathBuf;

use super::drv::Derivation;

/// Where, inside the sandbox, the main snapshot also appears: the same path for every
/// snapshot, so compilers that hash absolute source paths keep hitting their caches.
pub const STABLE_SRC: &str = "/srcstore/src";

/// A srcstore view in the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewMount {
    pub mountpoint: PathBuf,
    pub socket: PathBuf,
}

/// The srcstore views listed in `/proc/self/mountinfo` text.
pub fn view_mounts(mountinfo: &str) -> Vec<ViewMount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mountpoint = unescape(left.split(' ').nth(4)?);
            let mut right = right.split(' ');
            if !matches!(right.next()?, "fuse" | "fuse.srcstore") {
                return None;
            }
            let socket = unescape(right.next()?)
                .strip_prefix("srcstore:")?
                .to_owned();
            Some(ViewMount {
                mountpoint: mountpoint.into(),
                socket: socket.into(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

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
/// srcstore runtime directory (`/run/srcstore`, `/run/user/<uid>/srcstore`), where a path with
/// no view means its daemon is gone.
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

/// The reference starting at `s` (which starts with `/`), if `s` is `<dir>/<basename>…`.
fn reference_at(s: &str, views: &[ViewMount]) -> Option<Reference> {
    for view in views {
        let m = view.mountpoint.to_str()?;
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
    // /run/srcstore/<mnt>/<base> or /run/user/<uid>/srcstore/<mnt>/<base>
    let rest = s.strip_prefix("/run/srcstore/").or_else(|| {
        s.strip_prefix("/run/user/")
            .and_then(|r| r.split_once("/srcstore/"))
            .map(|(_, r)| r)
    })?;
    let (mnt, after) = rest.split_once('/')?;
    let base = snapshot_basename(after)?;
    let prefix_len = s.len() - after.len();
    Some(Reference {
        path: PathBuf::from(&s[..prefix_len]).join(base),
        basename: base.to_owned(),
        view: None,
        is_src: false,
    })
    .filter(|_| !mnt.is_empty())
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

/// The hook's answer: each snapshot at its own path, the main one (the `src` attribute's, else
/// the first) also at [`STABLE_SRC`], and every one at `/srcstore/<name>`.
pub fn sandbox_block(refs: &[Reference]) -> String {
    if refs.is_empty() {
        return String::new();
    }
    let main = refs.iter().position(|r| r.is_src).unwrap_or(0);
    let mut out = String::from("extra-sandbox-paths\n");
    for (i, r) in refs.iter().enumerate() {
        let p = r.path.display();
        out.push_str(&format!("{p}\n"));
        if i == main {
            out.push_str(&format!("{STABLE_SRC}={p}\n"));
        }
        if let Some((_, name)) = r.basename.split_once('-') {
            if i != main || name != "src" {
                out.push_str(&format!("/srcstore/{name}={p}\n"));
            }
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const INFO: &str = "36 35 0:52 / /run/srcstore/proj-1a2b3c4d rw,nosuid,nodev,noatime - fuse.srcstore srcstore:/run/srcstore/abc.sock ro,user_id=0,group_id=0,allow_other\n\
        37 35 0:53 / /tmp/with\\040space ro - fuse.srcstore srcstore:/tmp/s\\040ock ro\n\
        38 35 0:54 / /mnt/other ro - fuse.bindfs /src ro\n\
        39 35 0:55 / /mnt/plain ro - fuse srcstore:/run/srcstore/def.sock ro\n\
        40 35 0:56 / /mnt/sshfs ro - fuse host:/dir ro\n";

    fn drv(env: &[(&str, &str)]) -> Derivation {
        Derivation {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn views_are_found_in_the_mount_table() {
        let v = view_mounts(INFO);
        assert_eq!(v.len(), 3);
        assert_eq!(v[2].socket, Path::new("/run/srcstore/def.sock"));
        assert_eq!(v[0].mountpoint, Path::new("/run/srcstore/proj-1a2b3c4d"));
        assert_eq!(v[0].socket, Path::new("/run/srcstore/abc.sock"));
        assert_eq!(v[1].mountpoint, Path::new("/tmp/with space"));
    }

    #[test]
    fn snapshot_paths_are_found_anywhere_in_strings_and_nothing_else() {
        let views = view_mounts(INFO);
        let h = "0m7wq1c0m7wq1c0m7wq1c0m7wq1c0m7w";
        let d = drv(&[
            ("src", &format!("/run/srcstore/proj-1a2b3c4d/{h}-proj")),
            ("script", &format!("cd /tmp/with space/{h}-lib/sub && make")),
            (
                "unrelated",
                "/nix/store/abc-foo /run/srcstore/proj-1a2b3c4d/not-a-snapshot",
            ),
            ("gone", &format!("/run/user/1000/srcstore/x-1/{h}-old")),
            (
                "prefixed",
                &format!("x/run/srcstore/proj-1a2b3c4d/{h}-nope"),
            ),
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
            ]
        );
        assert!(refs[0].is_src && refs[0].view.is_some());
        assert!(
            refs[2].view.is_none(),
            "a default-location path with no view is a dead daemon's"
        );
        let block = sandbox_block(&refs);
        assert!(block.starts_with("extra-sandbox-paths\n") && block.ends_with("\n\n"));
        assert!(block.contains(&format!(
            "/srcstore/src=/run/srcstore/proj-1a2b3c4d/{h}-proj\n"
        )));
        assert!(block.contains(&format!("/srcstore/lib=/tmp/with space/{h}-lib\n")));
    }

    #[test]
    fn a_derivation_naming_no_snapshot_gets_no_block() {
        let d = drv(&[("src", "/nix/store/aaaa-src"), ("x", "/run/srcstore/")]);
        assert!(references(&d, &view_mounts(INFO)).is_empty());
        assert_eq!(sandbox_block(&[]), "");
    }
}
