//! Ordinary local users against the root hook, the control socket's client and `nix setup`:
//! each attack run against the real binary and real FUSE, and what must hold under it.
//!
//! Run as root. Each test runs its body in a private mount namespace of its own (`unshare -m`),
//! so the views it mounts never reach the mount table of anything else on the machine. Where
//! the attacker must be an ordinary user, the FUSE server runs as `srcstore-other`
//! (scripts/setup-machine makes the user).

#[path = "support/hostile.rs"]
mod hostile;
mod support;

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hostile::{HostileView, PinServer, Serve, DECOY, HASH};
use support::{chmod, own, stderr, uid_of, wait_for, Sandbox};

const OTHER: &str = "srcstore-other";
/// What the hook allows a daemon for its answer (`ANSWER_TIMEOUT` in src/hook/mod.rs).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the calling test's body in a private mount namespace: true inside it (run the body),
/// false outside (the body ran and passed in the child, or this panics with its output).
fn in_private_namespace(test: &str) -> bool {
    if std::env::var("REVIEW_FINDINGS_INNER").as_deref() == Ok(test) {
        return true;
    }
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("REVIEW_FINDINGS_INNER", test)
        .output()
        .unwrap();
    // The body's hook runs left stagings of builds whose chroots went with its sandbox: one
    // more run, for a derivation naming nothing, sweeps them.
    let sb = Sandbox::new();
    let plain = drv_naming(
        &sb,
        "plain",
        "/nix/store/00000000000000000000000000000000-plain",
    );
    let _ = spawn_hook(&sb, &plain).wait_with_output();
    // Exactly this test ran in the child: a name that matched nothing would pass with none.
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("running 1 test") && said.contains("1 passed"),
        "{test}:\n{said}\n{}",
        stderr(&out)
    );
    false
}

/// A sandbox ordinary users can walk into.
fn open_sandbox() -> Sandbox {
    let sb = Sandbox::new();
    chmod(sb.dir.path(), 0o755);
    sb
}

/// A derivation naming `src`, written where the hook can read it (anyone can write one).
fn drv_naming(sb: &Sandbox, name: &str, src: &str) -> PathBuf {
    let out = "/nix/store/00000000000000000000000000000000-review";
    let text = format!(
        "Derive([(\"out\",\"{out}\",\"\",\"\")],[],[],\"x86_64-linux\",\"/bin/sh\",[\"-c\",\"cat $src/file > $out\"],[(\"out\",\"{out}\"),(\"src\",\"{src}\")])"
    );
    let path = sb.path(&format!("{name}.drv"));
    fs::write(&path, text).unwrap();
    path
}

/// The hook as Nix runs it, as root; the running child.
fn spawn_hook(sb: &Sandbox, drv: &Path) -> Child {
    sb.hook(drv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits up to `limit` for `child`; whether it exited, its peak resident size in KiB, and
/// where in the kernel it waited when the time was up.
fn finishes_within(child: &mut Child, limit: Duration) -> (bool, u64, String) {
    let start = Instant::now();
    let mut peak = 0;
    while start.elapsed() < limit {
        if let Ok(status) = fs::read_to_string(format!("/proc/{}/status", child.id())) {
            if let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            {
                peak = kib;
            }
        }
        if child.try_wait().unwrap().is_some() {
            return (true, peak, String::new());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let wchan = fs::read_to_string(format!("/proc/{}/wchan", child.id())).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    (false, peak, wchan)
}

/// A hostile view served by a FUSE server running as `user` (this test binary, run again in
/// helper mode): an ordinary user's mount, `user_id=<uid>` in the mount table.
struct UsersView {
    child: Child,
    mountpoint: PathBuf,
}

impl UsersView {
    /// Mounts, as `user`, a view at `mountpoint` (made, owned by `user`) naming `socket`.
    fn mount(sb: &Sandbox, user: &str, mountpoint: &Path, socket: &Path) -> UsersView {
        fs::create_dir_all(mountpoint).unwrap();
        own(mountpoint, user, 0o755);
        let exe = sb.path("helper-exe");
        if !exe.exists() {
            fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
            chmod(&exe, 0o755);
        }
        let child = Command::new("setpriv")
            .args([
                &format!("--reuid={user}"),
                &format!("--regid={user}"),
                "--init-groups",
            ])
            .arg(&exe)
            .args(["--exact", "zz_helper_a_users_hostile_view", "--nocapture"])
            .env("REVIEW_HELPER_MOUNTPOINT", mountpoint)
            .env("REVIEW_HELPER_SOCKET", socket)
            .env("HOME", "/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let view = UsersView {
            child,
            mountpoint: mountpoint.to_path_buf(),
        };
        let listed = mountinfo_path(mountpoint);
        wait_for("the user's view in the mount table", || {
            fs::read("/proc/self/mountinfo")
                .unwrap()
                .split(|b| *b == b'\n')
                .any(|l| {
                    l.split(|b| *b == b' ').nth(4) == Some(&listed[..])
                        && String::from_utf8_lossy(l).contains(&format!("user_id={}", uid_of(user)))
                })
        });
        view
    }

    fn snapshot(&self) -> PathBuf {
        self.mountpoint.join(hostile::entry())
    }
}

impl Drop for UsersView {
    fn drop(&mut self) {
        support::detach(&self.mountpoint);
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A path as /proc/self/mountinfo spells it (space, tab, newline, backslash as `\ooo`).
fn mountinfo_path(p: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in p.as_os_str().as_bytes() {
        match b {
            b' ' | b'\t' | b'\n' | b'\\' => out.extend(format!("\\{b:03o}").bytes()),
            b => out.push(b),
        }
    }
    out
}

/// Helper mode of [`UsersView`]: mounts a view serving a directory, until stdin closes.
/// Outside helper mode it does nothing.
#[test]
fn zz_helper_a_users_hostile_view() {
    let (Some(mountpoint), Some(socket)) = (
        std::env::var_os("REVIEW_HELPER_MOUNTPOINT"),
        std::env::var_os("REVIEW_HELPER_SOCKET"),
    ) else {
        return;
    };
    let _view = HostileView::mount(Path::new(&mountpoint), Path::new(&socket), Serve::Dir);
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    std::process::exit(0);
}

/// A control socket of root's in a directory only root can enter, which records every byte
/// any client sends it and answers each line with a granted pin: a root service no user may
/// write to.
struct RootsSocket {
    path: PathBuf,
    got: Arc<Mutex<Vec<u8>>>,
    _dir: tempfile::TempDir,
}

impl RootsSocket {
    fn start() -> RootsSocket {
        let dir = tempfile::Builder::new()
            .prefix("srcstore-review-root-only")
            .tempdir_in("/run")
            .unwrap();
        chmod(dir.path(), 0o700);
        let path = dir.path().join("service.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let record = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let record = record.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut writer = stream.try_clone().unwrap();
                    let mut reader = BufReader::new(stream);
                    let mut line = Vec::new();
                    while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                        record.lock().unwrap().extend_from_slice(&line);
                        line.clear();
                        if writer.write_all(b"{\"ok\":true,\"pin\":1}\n").is_err() {
                            break;
                        }
                    }
                });
            }
        });
        RootsSocket {
            path,
            got,
            _dir: dir,
        }
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.got.lock().unwrap()).into_owned()
    }
}

// ---------------------------------------------------------------------------------------------

/// A plain FUSE mount of `user`'s (bindfs of a directory of theirs), nothing like a view,
/// detached when dropped.
struct UsersMount(PathBuf);

impl UsersMount {
    fn mount(sb: &Sandbox, user: &str, mountpoint: &Path) -> UsersMount {
        let source = sb.path("users-files");
        fs::create_dir_all(&source).unwrap();
        own(&source, user, 0o755);
        fs::create_dir_all(mountpoint).unwrap();
        own(mountpoint, user, 0o755);
        let out = Command::new("setpriv")
            .args([
                &format!("--reuid={user}"),
                &format!("--regid={user}"),
                "--init-groups",
                "bindfs",
                "-o",
                "ro",
            ])
            .arg(&source)
            .arg(mountpoint)
            .output()
            .unwrap();
        assert!(out.status.success(), "bindfs: {}", stderr(&out));
        UsersMount(mountpoint.to_path_buf())
    }
}

impl Drop for UsersMount {
    fn drop(&mut self) {
        support::detach(&self.0);
    }
}

/// What this holds against, as the code once did it. hook/mod.rs `run`: the mount table is read with `fs::read_to_string(...).unwrap_or_default()`,
/// and the kernel prints mountpoints as raw bytes: one mount anywhere at a directory whose name
/// is not UTF-8 (any user's FUSE mount, here bindfs; a USB stick's label) makes the table
/// unreadable as a `String`, so the hook sees no view at all. Every snapshot at a mountpoint
/// of the user's choosing (`--mountpoint`) then gets no output and exit 0: the build runs
/// without its source and without the hook's one-line refusal. (refs.rs `reference_at` has the
/// same flaw a step later, `view.mountpoint.to_str()?` returning from the whole search.)
#[test]
fn a_mount_at_a_non_utf8_directory_hides_no_users_snapshot() {
    if !in_private_namespace("a_mount_at_a_non_utf8_directory_hides_no_users_snapshot") {
        return;
    }
    let sb = open_sandbox();
    // A victim's view and daemon.
    fs::create_dir(sb.path("mnt")).unwrap();
    let pins = PinServer::start(&sb.path("victim.sock"));
    let victim = HostileView::mount(&sb.path("mnt"), &pins.path, Serve::Dir);
    assert_eq!(
        fs::read_to_string(victim.snapshot().join("file")).unwrap(),
        DECOY
    );
    let drv = drv_naming(&sb, "victim", victim.snapshot().to_str().unwrap());
    let staged = |what: &str| {
        let out = spawn_hook(&sb, &drv).wait_with_output().unwrap();
        let block = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            block.contains(&format!("{}=/", victim.snapshot().display())),
            format!(
                "{what}: exit {:?}, stdout {block:?}, stderr {:?}",
                out.status.code(),
                stderr(&out)
            ),
        )
    };
    let (before, shown) = staged("without the other user's mount");
    assert!(before, "{shown}");

    // Another user's ordinary FUSE mount, at a directory named by a byte that is not UTF-8.
    let odd = sb.path("odd").join(OsStr::from_bytes(b"\xff"));
    let attacker = UsersMount::mount(&sb, OTHER, &odd);
    let (during, shown) = staged("with it");
    drop(attacker);
    assert!(
        during,
        "another user's mount at a non-UTF-8 directory made the hook ignore the snapshot the \
         derivation names ({shown}): the build would run without it"
    );
}

/// What this holds against, as the code once did it. client.rs `connect_within`: a peer running as root is believed whatever the view's owner,
/// so a user whose view names a root service's socket makes the root hook connect to it (the
/// socket's file mode never applies to root) and write a pin request into it; the service's
/// answer is then taken for the daemon's, and the user's view is staged with no daemon of
/// theirs involved.
#[test]
fn a_users_view_naming_a_root_socket_never_makes_root_write_to_it() {
    if !in_private_namespace("a_users_view_naming_a_root_socket_never_makes_root_write_to_it") {
        return;
    }
    let sb = open_sandbox();
    let service = RootsSocket::start();
    let view = UsersView::mount(&sb, OTHER, &sb.path("mnt"), &service.path);
    let drv = drv_naming(&sb, "root-socket", view.snapshot().to_str().unwrap());
    let out = spawn_hook(&sb, &drv).wait_with_output().unwrap();
    let got = service.received();
    assert!(
        got.is_empty(),
        "the root hook wrote {got:?} into a root-only socket that a view of uid {} named \
         (hook exit {:?}, stdout {:?})",
        uid_of(OTHER),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// What this holds against, as the code once did it. hook/mod.rs `serving_daemon`: every `*.sock` entry of a user's own runtime directory is
/// connected to by path, following symlinks, and a root peer is believed: an entry linking to
/// a root service's socket makes the root hook write a status request into it.
#[test]
fn a_symlinked_socket_in_a_runtime_directory_never_makes_root_write_to_roots_socket() {
    if !in_private_namespace(
        "a_symlinked_socket_in_a_runtime_directory_never_makes_root_write_to_roots_socket",
    ) {
        return;
    }
    let sb = open_sandbox();
    let service = RootsSocket::start();
    // A user's fallback runtime directory (a uid no test uses, so no other run shares it).
    let uid = 54000 + std::process::id() % 1000;
    let runtime = PathBuf::from(format!("/tmp/srcstore-{uid}"));
    let _ = fs::remove_dir_all(&runtime);
    fs::create_dir(&runtime).unwrap();
    std::os::unix::fs::symlink(&service.path, runtime.join("x.sock")).unwrap();
    std::os::unix::fs::lchown(runtime.join("x.sock"), Some(uid), Some(uid)).unwrap();
    std::os::unix::fs::chown(&runtime, Some(uid), Some(uid)).unwrap();
    chmod(&runtime, 0o700);
    let named = runtime.join(format!("gone-1a2b3c4d/{HASH}-x"));
    let drv = drv_naming(&sb, "runtime-link", named.to_str().unwrap());
    let out = spawn_hook(&sb, &drv).wait_with_output().unwrap();
    let _ = fs::remove_dir_all(&runtime);
    let got = service.received();
    assert!(
        got.is_empty(),
        "the root hook wrote {got:?} into a root-only socket that uid {uid}'s runtime \
         directory linked to (hook stderr {:?})",
        stderr(&out)
    );
}

/// A socket that accepts, reads the request, then answers a line that never ends: a few
/// bytes at a time (each read returns before the read timeout) or a stream.
fn endless_answer(
    path: &Path,
    chunk: usize,
    every: Duration,
) -> Arc<std::sync::atomic::AtomicBool> {
    let listener = UnixListener::bind(path).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let stopped = stopped.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                let mut writer = stream;
                let bytes = vec![b'x'; chunk];
                let _ = writer.write_all(b"{\"ok\":true,\"error\":\"");
                while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    if writer.write_all(&bytes).is_err() {
                        return;
                    }
                    std::thread::sleep(every);
                }
            });
        }
    });
    stop
}

/// What this holds against, as the code once did it. client.rs `request`: `read_line` into a `String` with no bound, and a read timeout that
/// only limits each `read`: a daemon that answers one endless line keeps the root hook (and
/// so the build, and its build user) past the hook's ten seconds, its memory growing for as
/// long as the daemon likes.
#[test]
fn an_endless_answer_never_keeps_the_root_hook_past_its_timeout() {
    if !in_private_namespace("an_endless_answer_never_keeps_the_root_hook_past_its_timeout") {
        return;
    }
    let sb = open_sandbox();
    let socket = sb.path("endless.sock");
    // 1 MiB every 100 ms: gentle for the machine, and no read ever waits.
    let stop = endless_answer(&socket, 1 << 20, Duration::from_millis(100));
    fs::create_dir(sb.path("mnt")).unwrap();
    let view = HostileView::mount(&sb.path("mnt"), &socket, Serve::Dir);
    let drv = drv_naming(&sb, "endless", view.snapshot().to_str().unwrap());
    let mut hook = spawn_hook(&sb, &drv);
    let (finished, peak_kib, _) =
        finishes_within(&mut hook, ANSWER_TIMEOUT + Duration::from_secs(5));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        finished && peak_kib < 64 * 1024,
        "the root hook, reading a daemon's endless answer, {} after {:?} with a peak of {} MiB",
        if finished {
            "finished"
        } else {
            "was still reading"
        },
        ANSWER_TIMEOUT + Duration::from_secs(5),
        peak_kib / 1024
    );
}

/// What this holds against, as the code once did it. client.rs `connect_within`: the timeouts are set after `connect`, and a Unix stream
/// `connect` to a listener whose backlog is full waits for as long as the socket's send
/// timeout (none yet): a socket that never accepts hangs the root hook, and with it the
/// build and its build user, for ever. The peer check comes after, so any user's socket
/// does it.
#[test]
fn a_socket_that_never_accepts_never_hangs_the_root_hook() {
    if !in_private_namespace("a_socket_that_never_accepts_never_hangs_the_root_hook") {
        return;
    }
    let sb = open_sandbox();
    let socket = sb.path("full.sock");
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let addr = SocketAddrUnix::new(&socket).unwrap();
    let listener = rustix::net::socket(AddressFamily::UNIX, SocketType::STREAM, None).unwrap();
    rustix::net::bind(&listener, &addr).unwrap();
    rustix::net::listen(&listener, 0).unwrap();
    // Fill the backlog (a connection nobody accepts), without waiting ourselves.
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let filler = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        let _ = rustix::net::connect(&filler, &addr);
        fillers.push(filler);
    }
    fs::create_dir(sb.path("mnt")).unwrap();
    let view = HostileView::mount(&sb.path("mnt"), &socket, Serve::Dir);
    let drv = drv_naming(&sb, "full", view.snapshot().to_str().unwrap());
    let mut hook = spawn_hook(&sb, &drv);
    let limit = ANSWER_TIMEOUT + Duration::from_secs(10);
    let (finished, _, wchan) = finishes_within(&mut hook, limit);
    drop(listener);
    assert!(
        finished,
        "the root hook was still connecting to a socket that never accepts after {limit:?} \
         (waiting in {wchan})"
    );
}

/// What this holds against, as the code once did it. hook/refs.rs and hook/mod.rs: a view at a user's default place (`/tmp/srcstore-<uid>/…`)
/// is believed whoever mounted it. When that directory is missing (a cleaned `/tmp`, a
/// reboot), another user makes it, mounts a view of theirs where a derivation of the victim's
/// names a snapshot, and builds that derivation (any user may build any `.drv` in the store):
/// the hook stages the attacker's tree under the victim's hash, and the output lands in the
/// shared store as the victim's derivation's.
#[test]
fn a_view_at_another_users_default_place_is_refused() {
    if !in_private_namespace("a_view_at_another_users_default_place_is_refused") {
        return;
    }
    let sb = open_sandbox();
    // The victim's uid: one no test uses, so no other run shares its runtime directory.
    let victim = 55000 + std::process::id() % 1000;
    let runtime = PathBuf::from(format!("/tmp/srcstore-{victim}"));
    let _ = fs::remove_dir_all(&runtime);
    fs::create_dir(&runtime).unwrap();
    own(&runtime, OTHER, 0o755);
    let pins = sb.path("attacker.sock");
    let _pins = {
        let p = PinServer::start(&pins);
        own(&pins, OTHER, 0o777);
        p
    };
    // Stands in for the attacker's own daemon: the pin server answers as root here, which the
    // hook accepts for any view.
    let view = UsersView::mount(&sb, OTHER, &runtime.join("proj-1a2b3c4d"), &pins);
    let drv = drv_naming(&sb, "victims", view.snapshot().to_str().unwrap());
    let out = spawn_hook(&sb, &drv).wait_with_output().unwrap();
    drop(view);
    let _ = fs::remove_dir_all(&runtime);
    assert!(
        !out.status.success() && out.stdout.is_empty(),
        "a view of uid {} at uid {victim}'s default place was staged for a build naming it: {}",
        uid_of(OTHER),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// What this holds against, as the code once did it. cmd/setup.rs `check_root_only` checks the canonical directory, but `--apply` writes the
/// path as given and names it in nix.conf and in the wrapper: through a symlink that lives in
/// a directory a user can write, the check passes, and the user re-points the link afterwards
/// so that nix-daemon, as root, runs the user's file as the hook.
#[test]
fn apply_through_a_users_symlink_never_lets_the_user_choose_what_root_runs() {
    let sb = open_sandbox();
    let root_only = tempfile::Builder::new()
        .prefix("srcstore-review")
        .tempdir_in("/run")
        .unwrap();
    chmod(root_only.path(), 0o755);
    let real = root_only.path().join("etc-nix");
    fs::create_dir(&real).unwrap();
    chmod(&real, 0o755);
    fs::write(real.join("nix.conf"), "sandbox = true\n").unwrap();
    let fuse = sb.path("fuse.conf");
    fs::write(&fuse, "user_allow_other\n").unwrap();
    // A directory of the user's, holding a link to the root-only configuration directory.
    let users = sb.path("users");
    fs::create_dir(&users).unwrap();
    own(&users, OTHER, 0o755);
    let link = users.join("nix");
    std::os::unix::fs::symlink(&real, &link).unwrap();

    let out = sb
        .cmd()
        .env("NIX_CONF_DIR", &link)
        .args(["nix", "setup", "--apply", "--fuse-conf"])
        .arg(&fuse)
        .arg("--systemd-dir")
        .arg(sb.path("systemd-system"))
        .output()
        .unwrap();
    if !out.status.success() {
        // Refused, as it may: saying where, and changing nothing.
        let err = stderr(&out);
        assert!(err.contains(&users.display().to_string()), "{err}");
        assert_eq!(
            fs::read_to_string(real.join("nix.conf")).unwrap(),
            "sandbox = true\n"
        );
        return;
    }
    let conf = fs::read_to_string(real.join("nix.conf")).unwrap();
    let hook = conf
        .lines()
        .filter_map(|l| l.strip_prefix("pre-build-hook = "))
        .next_back()
        .unwrap()
        .to_owned();
    // The user re-points the link at a directory of theirs with a hook of theirs.
    let evil = users.join("evil");
    fs::create_dir(&evil).unwrap();
    fs::write(
        evil.join("srcstore-pre-build-hook"),
        "#!/bin/sh\nid > /tmp/owned\n",
    )
    .unwrap();
    own(&evil, OTHER, 0o755);
    own(&evil.join("srcstore-pre-build-hook"), OTHER, 0o755);
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&evil, &link).unwrap();
    let runs = fs::metadata(&hook).map(|m| m.uid());
    assert!(
        !matches!(runs, Ok(uid) if uid != 0),
        "nix.conf says `pre-build-hook = {hook}`, which is now a file of uid {:?}: root runs \
         what the user wrote",
        runs
    );
}

/// A view that serves a directory under every snapshot-shaped name it is asked for.
struct ManyFs {
    names: Mutex<Vec<Vec<u8>>>,
}

impl ManyFs {
    fn dir_attr(ino: u64) -> fuser::FileAttr {
        let time = std::time::UNIX_EPOCH + Duration::from_secs(1);
        fuser::FileAttr {
            ino: fuser::INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind: fuser::FileType::Directory,
            perm: 0o555,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        }
    }
}

impl fuser::Filesystem for ManyFs {
    fn lookup(
        &self,
        _req: &fuser::Request,
        parent: fuser::INodeNo,
        name: &OsStr,
        reply: fuser::ReplyEntry,
    ) {
        if parent.0 != 1 || !name.as_bytes().ends_with(b"-x") {
            return reply.error(fuser::Errno::ENOENT);
        }
        let mut names = self.names.lock().unwrap();
        let i = match names.iter().position(|n| n == name.as_bytes()) {
            Some(i) => i,
            None => {
                names.push(name.as_bytes().to_vec());
                names.len() - 1
            }
        };
        reply.entry(
            &Duration::ZERO,
            &ManyFs::dir_attr(2 + i as u64),
            fuser::Generation(0),
        );
    }

    fn getattr(
        &self,
        _req: &fuser::Request,
        ino: fuser::INodeNo,
        _fh: Option<fuser::FileHandle>,
        reply: fuser::ReplyAttr,
    ) {
        reply.attr(&Duration::ZERO, &ManyFs::dir_attr(ino.0));
    }
}

/// What this holds against, as the code once did it. hook/mod.rs `run` and stage.rs: every snapshot a derivation names costs root one mount in
/// nix-daemon's mount namespace (and the sandbox three binds of it), with no bound, and the
/// mounts stay until the build is over. A user's derivation naming tens of thousands of paths
/// of a view of theirs (a few MiB of environment) fills that namespace towards `fs.mount-max`
/// (100000 by default): every sandbox Nix then makes for anyone copies them, and once the
/// limit is reached the binds of every other build, and the hook's own stagings, fail.
#[test]
fn one_derivation_cannot_make_root_mount_without_bound() {
    if !in_private_namespace("one_derivation_cannot_make_root_mount_without_bound") {
        return;
    }
    let sb = open_sandbox();
    let pins = PinServer::start(&sb.path("many.sock"));
    let mountpoint = sb.path("many");
    fs::create_dir(&mountpoint).unwrap();
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName(format!("srcstore:{}", pins.path.display())),
    ];
    config.acl = fuser::SessionACL::All;
    let session = fuser::Session::new(
        ManyFs {
            names: Mutex::new(Vec::new()),
        },
        &mountpoint,
        &config,
    )
    .unwrap();
    std::thread::spawn(move || session.run());
    const NAMED: usize = 300;
    let paths: Vec<String> = (0..NAMED)
        .map(|i| format!("{}/{i:032}-x", mountpoint.display()))
        .collect();
    let out = "/nix/store/00000000000000000000000000000000-review";
    let text = format!(
        "Derive([(\"out\",\"{out}\",\"\",\"\")],[],[],\"x86_64-linux\",\"/bin/sh\",[],[(\"out\",\"{out}\"),(\"src\",\"{}\"),(\"more\",\"{}\")])",
        paths[0],
        paths[1..].join(" ")
    );
    let drv = sb.path("many.drv");
    fs::write(&drv, text).unwrap();
    let result = spawn_hook(&sb, &drv).wait_with_output().unwrap();
    let block = String::from_utf8_lossy(&result.stdout);
    let mut slots: Vec<&str> = block
        .lines()
        .filter_map(|l| l.split_once("=/run/srcstore-hook/").map(|(_, s)| s))
        .collect();
    slots.sort();
    slots.dedup();
    support::detach(&mountpoint);
    assert!(
        slots.len() <= srcstore::hook::MAX_SNAPSHOTS,
        "one derivation made the root hook mount {} staged snapshots ({} sandbox lines), more \
         than one build may have",
        slots.len(),
        block.lines().count()
    );
}

/// What this holds against, as the code once did it. cmd/setup.rs `write_atomically`: the temporary file has a fixed name beside the target and
/// is opened with `File::create` (follows a symlink, truncates), and `--undo` writes nix.conf
/// without `check_root_only`. In a configuration directory a user can write, the user plants
/// `.nix.conf.srcstore-tmp` as a link to any file: root truncates and overwrites that file,
/// then renames the link over nix.conf.
#[test]
fn undo_never_writes_through_a_planted_temporary_link() {
    let sb = open_sandbox();
    let root_only = tempfile::Builder::new()
        .prefix("srcstore-review")
        .tempdir_in("/run")
        .unwrap();
    let precious = root_only.path().join("precious");
    fs::write(&precious, "root's own bytes\n").unwrap();
    let conf = sb.path("users-conf");
    fs::create_dir(&conf).unwrap();
    fs::write(
        conf.join("nix.conf"),
        "sandbox = true\n# BEGIN srcstore: added by `srcstore nix setup --apply`; `srcstore nix setup --undo` removes it\npre-build-hook = /x\n# END srcstore\n",
    )
    .unwrap();
    own(&conf, OTHER, 0o755);
    own(&conf.join("nix.conf"), OTHER, 0o644);
    // Planted by the user who owns the directory.
    std::os::unix::fs::symlink(&precious, conf.join(".nix.conf.srcstore-tmp")).unwrap();
    let fuse = sb.path("fuse.conf");
    fs::write(&fuse, "user_allow_other\n").unwrap();
    let out = sb
        .cmd()
        .env("NIX_CONF_DIR", &conf)
        .args(["nix", "setup", "--undo", "--fuse-conf"])
        .arg(&fuse)
        .arg("--systemd-dir")
        .arg(sb.path("systemd-system"))
        .output()
        .unwrap();
    assert_eq!(
        fs::read_to_string(&precious).unwrap(),
        "root's own bytes\n",
        "`nix setup --undo` (exit {:?}) wrote through a link a user planted beside nix.conf",
        out.status.code()
    );
}
