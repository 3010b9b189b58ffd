//! srcstore views in the kernel's mount table.
//!
//! A view is a FUSE mount (type `fuse`, or `fuse.srcstore` where the mount helper records the
//! subtype) whose source is `srcstore:<control socket>`, mounted at its filesystem's root. Any
//! local user can mount FUSE with any source, so nothing read here is trusted: a line only says
//! where to look, and [`super::stage`] checks what it finds by the mount's id.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// A srcstore view in the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewMount {
    /// The kernel's id of the mount (`statx`'s `stx_mnt_id` of anything opened in it).
    pub id: u64,
    /// Its device, `(major, minor)`: for FUSE, the number of its connection.
    pub dev: (u32, u32),
    pub mountpoint: PathBuf,
    pub socket: PathBuf,
    /// Who mounted it (`user_id=`): the uid its daemon must run as.
    pub owner: Option<u32>,
}

/// The srcstore views listed in `/proc/self/mountinfo`. The table is bytes: the kernel escapes
/// only space, tab, newline and backslash, so any user's mount at a name that is not UTF-8
/// makes it so. Each line stands alone; one that is not UTF-8 is no view a derivation (whose
/// strings are) could name.
pub fn view_mounts(mountinfo: &[u8]) -> Vec<ViewMount> {
    mountinfo
        .split(|&b| b == b'\n')
        .filter_map(|line| std::str::from_utf8(line).ok())
        .filter_map(view_mount)
        .collect()
}

fn view_mount(line: &str) -> Option<ViewMount> {
    let (left, right) = line.split_once(" - ")?;
    let mut left = left.split(' ');
    let id = left.next()?.parse().ok()?;
    let (major, minor) = left.nth(1)?.split_once(':')?;
    let dev = (major.parse().ok()?, minor.parse().ok()?);
    // A bind of a directory inside a view (a staged snapshot) is not a view.
    if left.next()? != "/" {
        return None;
    }
    let mountpoint = unescape(left.next()?);
    let mut right = right.split(' ');
    if !matches!(right.next()?, "fuse" | "fuse.srcstore") {
        return None;
    }
    let socket = unescape(right.next()?).strip_prefix(b"srcstore:")?.to_vec();
    let owner = right
        .next()
        .unwrap_or_default()
        .split(',')
        .find_map(|o| o.strip_prefix("user_id=")?.parse().ok());
    Some(ViewMount {
        id,
        dev,
        mountpoint: OsString::from_vec(mountpoint).into(),
        socket: OsString::from_vec(socket).into(),
        owner,
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`; the bytes come back as they
/// are, newlines included (callers decide what they accept).
fn unescape(s: &str) -> Vec<u8> {
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
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::path::Path;

    pub const INFO: &str = "36 35 0:52 / /run/srcstore/proj-1a2b3c4d rw,nosuid,nodev,noatime - fuse.srcstore srcstore:/run/srcstore/abc.sock ro,user_id=0,group_id=0,allow_other\n\
        37 35 0:53 / /tmp/with\\040space ro - fuse.srcstore srcstore:/tmp/s\\040ock ro,user_id=1000\n\
        38 35 0:54 / /mnt/other ro - fuse.bindfs /src ro\n\
        39 35 0:55 / /mnt/plain ro - fuse srcstore:/run/srcstore/def.sock ro\n\
        40 35 0:56 / /mnt/sshfs ro - fuse host:/dir ro\n\
        41 35 0:52 /0m7wq1c0m7wq1c0m7wq1c0m7wq1c0m7w-proj /run/srcstore-hook/1/0 ro - fuse.srcstore srcstore:/run/srcstore/abc.sock ro\n";

    #[test]
    fn views_are_found_in_the_mount_table() {
        let v = view_mounts(INFO.as_bytes());
        assert_eq!(v.len(), 3, "{v:?}");
        assert_eq!(v[2].socket, Path::new("/run/srcstore/def.sock"));
        assert_eq!(v[0].mountpoint, Path::new("/run/srcstore/proj-1a2b3c4d"));
        assert_eq!(v[0].socket, Path::new("/run/srcstore/abc.sock"));
        assert_eq!((v[0].id, v[0].owner), (36, Some(0)));
        assert_eq!(v[1].mountpoint, Path::new("/tmp/with space"));
        assert_eq!(v[1].owner, Some(1000));
        assert_eq!(v[2].owner, None);
    }

    #[test]
    fn an_escaped_newline_comes_back_as_a_newline_for_the_caller_to_refuse() {
        let line = "50 35 0:60 / /tmp/a\\012/root\\012/tmp/b ro - fuse srcstore:/tmp/x.sock ro,user_id=1000";
        let v = view_mounts(line.as_bytes());
        assert_eq!(v[0].mountpoint, Path::new("/tmp/a\n/root\n/tmp/b"));
    }
}

#[cfg(test)]
mod bytes {
    use super::*;

    #[test]
    fn a_mount_at_a_name_that_is_not_utf8_hides_no_other_view() {
        let mut info = tests::INFO.as_bytes().to_vec();
        info.extend_from_slice(b"60 35 0:61 / /tmp/odd/\xff ro - fuse.bindfs /x ro\n");
        assert_eq!(view_mounts(&info), view_mounts(tests::INFO.as_bytes()));
        assert_eq!(view_mounts(&info).len(), 3);
    }
}
