//! Every byte that leaves srcstore is proven by its content: a stamp (size, times, inode) can
//! stay put while the bytes change. A write through a shared mapping to a page that is already
//! dirty changes neither mtime nor ctime and raises no inotify event, so these tests write
//! through mappings and check that neither a FUSE read nor a NAR serves the new bytes under
//! the old hash, and that every failed read is counted and logged alike.

mod support;

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{write, Daemon, Sandbox};

/// A shared, writable mapping of a project file, as an editor or a database holds one.
struct Mapping {
    ptr: *mut u8,
    len: usize,
    _file: fs::File,
}

impl Mapping {
    fn new(path: &Path) -> Self {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let len = file.metadata().unwrap().len() as usize;
        // SAFETY: a fresh mapping of a file this process opened; unmapped on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap failed");
        Mapping {
            ptr: ptr.cast(),
            len,
            _file: file,
        }
    }

    fn set(&self, at: usize, byte: u8) {
        assert!(at < self.len);
        // SAFETY: within the mapping.
        unsafe { self.ptr.add(at).write_volatile(byte) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// What a stamp is made of: whatever moves it is seen by a scan.
fn stamp(path: &Path) -> (u64, i64, i64, i64, i64, u64) {
    let m = fs::metadata(path).unwrap();
    (
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        m.ino(),
    )
}

/// Longer than any timestamp tick that makes a stamp racy (50 ms), so the stamp is trusted.
const PAST_RACY: Duration = Duration::from_millis(200);

/// Writes `byte` at `at` through `m`, a page already dirty, and says whether the file's stamp
/// stayed put (it moves only if the kernel wrote the page back in between, which a `sync`
/// elsewhere on the machine can do: the caller then tries again).
fn write_unseen(m: &Mapping, path: &Path, at: usize, byte: u8) -> bool {
    let before = stamp(path);
    m.set(at, byte);
    before == stamp(path)
}

fn eio(r: std::io::Result<Vec<u8>>, what: &str) {
    match r {
        Ok(v) => panic!(
            "{what}: served {:?}… instead of failing",
            String::from_utf8_lossy(&v[..v.len().min(8)])
        ),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{what}: {e}"),
    }
}

fn counted(d: &Daemon, sb: &Sandbox) -> u64 {
    let s = d.status(sb);
    s["stale_reads"].as_u64().unwrap() + s["torn_reads"].as_u64().unwrap()
}

/// Waits a little for `needle` in the daemon's log (it is written as the read fails).
fn logged(d: &Daemon, needle: &str) -> bool {
    for _ in 0..40 {
        if d.log_text().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// A snapshot holding `name` as `m` made it (its first write stamped the file), taken after an
/// unrelated event in the same directory made the daemon look at it again.
fn snapshot_after_mapped_write(d: &Daemon, sb: &Sandbox, p: &Path, attempt: usize) -> PathBuf {
    std::thread::sleep(PAST_RACY);
    write(&p.join("unrelated"), format!("event {attempt}"));
    let snap = d.path(sb);
    assert_eq!(
        snap.file_name().unwrap().to_str().unwrap(),
        sb.hash(p),
        "the snapshot does not hold the tree as the first write left it"
    );
    snap
}

#[test]
fn a_mapped_write_that_moves_no_stamp_fails_the_read_instead_of_serving_other_bytes() {
    let sb = Sandbox::new();
    let p = sb.path("proj");
    write(&p.join("unrelated"), "event");
    for attempt in 0..5 {
        write(&p.join(format!("f{attempt}")), vec![b'A'; 8192]);
    }
    let d = Daemon::start(&sb, &p, &[]);
    for attempt in 0..5 {
        let name = format!("f{attempt}");
        let f = p.join(&name);
        let m = Mapping::new(&f);
        m.set(0, b'B');
        let snap = snapshot_after_mapped_write(&d, &sb, &p, attempt);
        let failed = counted(&d, &sb);
        if !write_unseen(&m, &f, 1, b'C') {
            continue;
        }
        // The snapshot's hash covers B A A A…; the file now holds B C A A….
        eio(fs::read(snap.join(&name)), "a file changed without a stamp");
        // (The kernel asks again for the page a failed readahead left out: one or two reads.)
        assert!(counted(&d, &sb) > failed, "the failed read was not counted");
        let line = format!("{}: changed since the snapshot was taken", f.display());
        assert!(logged(&d, &line), "not logged: {}", d.log_text());
        return;
    }
    panic!("the kernel wrote the mapped page back before every second write; nothing was tested");
}

#[test]
fn a_large_file_serves_the_ranges_it_can_prove_and_no_other() {
    const SIZE: usize = 1 << 20;
    let sb = Sandbox::new();
    let p = sb.path("proj");
    write(&p.join("unrelated"), "event");
    for attempt in 0..5 {
        write(&p.join(format!("big{attempt}")), vec![b'A'; SIZE]);
    }
    let d = Daemon::start(&sb, &p, &[]);
    for attempt in 0..5 {
        let name = format!("big{attempt}");
        let f = p.join(&name);
        let m = Mapping::new(&f);
        m.set(0, b'B');
        m.set(900_000, b'B');
        let snap = snapshot_after_mapped_write(&d, &sb, &p, attempt);
        let view = fs::File::open(snap.join(&name)).unwrap();
        let mut head = [0; 4096];
        view.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(head[..2], *b"BA");
        // The large file's chunk tree is held beside the snapshots, and reported apart.
        let trees = &d.status(&sb)["chunk_trees"];
        assert!(
            trees["trees"].as_u64() >= Some(1) && trees["bytes"].as_u64() > Some(0),
            "{trees}"
        );
        let failed = counted(&d, &sb);
        if !write_unseen(&m, &f, 900_001, b'C') {
            continue;
        }
        let mut piece = [0; 4096];
        eio(
            view.read_exact_at(&mut piece, 900_000)
                .map(|_| piece[..2].to_vec()),
            "a range holding a byte changed without a stamp",
        );
        assert!(counted(&d, &sb) > failed, "the failed read was not counted");
        // A range the change did not reach is still the snapshot's, and proven so.
        view.read_exact_at(&mut piece, 500_000).unwrap();
        assert_eq!(piece, [b'A'; 4096]);
        return;
    }
    panic!("the kernel wrote the mapped page back before every second write; nothing was tested");
}

#[test]
fn a_nar_never_carries_bytes_changed_behind_a_stamp_the_file_is_hashed_again() {
    let sb = Sandbox::new();
    let p = sb.path("proj");
    for attempt in 0..5 {
        let f = p.join(format!("f{attempt}"));
        write(&f, vec![b'A'; 8192]);
        let m = Mapping::new(&f);
        m.set(0, b'B');
        std::thread::sleep(PAST_RACY);
        // Hashed as B A A A… and recorded in the index under the stamp the first write left.
        let first = sb.ok(&["hash", "--nix", p.to_str().unwrap()]);
        assert!(first.contains("nar_hash sha256:"), "{first}");
        if !write_unseen(&m, &f, 1, b'C') {
            fs::remove_file(&f).unwrap();
            continue;
        }
        // The index still vouches for B A A A… by its stamp; the NAR must not carry B C A A….
        // Its proof refuses those bytes, so the file is hashed again: hash and NAR agree, and
        // they are those of the bytes on disk, as a run without the index gives them.
        let second = sb.ok(&["hash", "--nix", p.to_str().unwrap()]);
        assert_ne!(second.lines().next(), first.lines().next(), "{second}");
        let fresh = sb.ok(&["hash", "--nix", "--no-index", p.to_str().unwrap()]);
        assert_eq!(second, fresh, "what the index said was taken again");
        // And the index it left is right: the next run agrees without hashing anew.
        assert_eq!(sb.ok(&["hash", "--nix", p.to_str().unwrap()]), fresh);
        return;
    }
    panic!("the kernel wrote the mapped page back before every second write; nothing was tested");
}

#[test]
fn a_read_of_a_place_that_no_longer_holds_the_file_is_counted_and_logged() {
    let sb = Sandbox::new();
    let p = sb.path("proj");
    for f in ["now-a-link", "now-a-dir", "now-a-fifo", "dir/under-a-link"] {
        write(&p.join(f), format!("{f}\n"));
    }
    let d = Daemon::start(&sb, &p, &[]);
    let old = d.path(&sb);
    // Each file's place now holds something else: a symlink, a directory, a fifo; and the
    // directory of the last one is now a symlink to a copy of it.
    fs::remove_file(p.join("now-a-link")).unwrap();
    std::os::unix::fs::symlink("now-a-dir", p.join("now-a-link")).unwrap();
    fs::remove_file(p.join("now-a-dir")).unwrap();
    fs::create_dir(p.join("now-a-dir")).unwrap();
    fs::remove_file(p.join("now-a-fifo")).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(p.join("now-a-fifo"))
        .status()
        .unwrap();
    assert!(fifo.success());
    fs::rename(p.join("dir"), p.join("moved")).unwrap();
    std::os::unix::fs::symlink("moved", p.join("dir")).unwrap();
    for f in ["now-a-link", "now-a-dir", "now-a-fifo", "dir/under-a-link"] {
        let before = counted(&d, &sb);
        // In a thread of its own: a read that opened the fifo would wait for a writer.
        let path = old.join(f);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(fs::read(path)));
        let read = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{f}: the read hung"));
        eio(read, f);
        assert!(
            counted(&d, &sb) > before,
            "{f}: the failed read was not counted"
        );
        let line = format!(
            "{}: changed since the snapshot was taken: the read failed (EIO)",
            p.join(f).display()
        );
        assert!(logged(&d, &line), "{f}: not logged: {}", d.log_text());
    }
}
