//! Attacks on the pre-build hook by a local user who controls a FUSE server, its mountpoint or
//! the socket it names: real FUSE, real Nix (sandbox on, build users), the hook as Nix runs it.
//! The secret is a directory the attacker cannot read (under a root-only parent): it must never
//! reach a build, its log or the store, and a refusal is one line naming the snapshot path.

#[path = "support/hostile.rs"]
mod hostile;
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hostile::{entry, HostileView, PinServer, Serve, DECOY};
use support::{chmod, stderr, write, NixBuild, Sandbox};

/// A directory only root can reach (its parent is 0700), holding `file` with a unique marker.
struct Secret {
    dir: PathBuf,
    marker: String,
}

fn secret(sb: &Sandbox, name: &str) -> Secret {
    let parent = sb.path("secret-parent");
    fs::create_dir_all(&parent).unwrap();
    chmod(&parent, 0o700);
    let dir = parent.join(name);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let marker = format!("SECRET-MARKER-{}-{nanos}", std::process::id());
    write(&dir.join("file"), format!("{marker}\n"));
    chmod(&dir, 0o755);
    chmod(&dir.join("file"), 0o644);
    Secret { dir, marker }
}

/// The lines of `log` the hook wrote.
fn ours(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.starts_with("srcstore:")).collect()
}

/// `path` as the hook's one-line error spells it.
fn escaped(path: &Path) -> String {
    path.to_string_lossy().escape_debug().to_string()
}

/// Asserts the hook refused with exactly one line naming `path`; that line.
fn refused<'a>(log: &'a str, path: &Path) -> &'a str {
    let lines = ours(log);
    assert_eq!(lines.len(), 1, "expected one line of the hook's: {log}");
    let line = lines[0];
    assert!(
        line.starts_with(&format!("srcstore: error: {}: ", escaped(path))),
        "the hook's line does not name {path:?}: {log}"
    );
    line
}

/// The derivation `nix` builds with `src`, and its output paths.
fn derivation(nix: &NixBuild, src: &str) -> (PathBuf, Vec<PathBuf>) {
    let out = Command::new("nix-instantiate")
        .arg(&nix.expr)
        .args(["--argstr", "src", src])
        .env("HOME", nix.sb.home())
        .output()
        .unwrap();
    assert!(out.status.success(), "nix-instantiate: {}", stderr(&out));
    let drv = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let out = Command::new("nix-store")
        .args(["-q", "--outputs"])
        .arg(&drv)
        .output()
        .unwrap();
    assert!(out.status.success(), "nix-store -q: {}", stderr(&out));
    let outputs = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(PathBuf::from)
        .collect();
    (drv, outputs)
}

/// Whether any file at or below `path` holds `marker`.
fn holds(path: &Path, marker: &str) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return false;
    };
    if meta.is_dir() {
        fs::read_dir(path)
            .unwrap()
            .any(|e| holds(&e.unwrap().path(), marker))
    } else if meta.is_file() {
        String::from_utf8_lossy(&fs::read(path).unwrap()).contains(marker)
    } else {
        fs::read_link(path)
            .unwrap()
            .to_string_lossy()
            .contains(marker)
    }
}

/// Builds `src` and asserts the build failed and nothing the derivation builds exists.
fn build_fails(nix: &NixBuild, src: &str) -> String {
    let (_, outputs) = derivation(nix, src);
    let (out, log) = nix.build(src);
    assert!(out.is_none(), "the build ran: {log}");
    for o in &outputs {
        assert!(!o.exists(), "{o:?} was built: {log}");
    }
    log
}

/// Asserts `marker` is nowhere in `log` or in what the derivation of `src` built.
fn never_seen(nix: &NixBuild, src: &str, log: &str, out: Option<&Path>, marker: &str) {
    assert!(!log.contains(marker), "the secret reached the build: {log}");
    let (_, outputs) = derivation(nix, src);
    for o in outputs.iter().map(PathBuf::as_path).chain(out) {
        assert!(!holds(o, marker), "the secret is in {o:?}");
    }
}

/// A view and its pin-granting socket, at `<sb>/<name>` and `<sb>/<name>.sock`.
fn hostile_view(sb: &Sandbox, name: &str, serve: Serve) -> (HostileView, PinServer) {
    let mountpoint = sb.path(name);
    fs::create_dir_all(&mountpoint).unwrap();
    let pins = PinServer::start(&sb.path(&format!("{name}.sock")));
    let view = HostileView::mount(&mountpoint, &pins.path, serve);
    (view, pins)
}

#[test]
fn a_symlink_in_a_hostile_view_never_reaches_the_sandbox() {
    let sb = Sandbox::new();
    let secret = secret(&sb, "secret");
    let (view, pins) = hostile_view(&sb, "mnt", Serve::Symlink(secret.dir.clone()));
    let named = view.snapshot();
    // The attack is real: the view serves a symlink, and through it root reads the secret.
    assert_eq!(fs::read_link(&named).unwrap(), secret.dir);
    assert!(fs::read_to_string(named.join("file"))
        .unwrap()
        .contains(&secret.marker));

    let src = named.to_str().unwrap();
    for (name, script) in [
        ("cat-all", "cat $src/* > $out"),
        ("list-and-cat", "ls -R $src > $out; cat $src/file >> $out"),
    ] {
        let nix = NixBuild::new(&sb, name, script);
        let log = build_fails(&nix, src);
        let line = refused(&log, &named);
        assert!(line.contains("refused"), "{log}");
        never_seen(&nix, src, &log, None, &secret.marker);
    }
    assert!(
        pins.requests().iter().all(|r| r.contains(&entry())) && !pins.requests().is_empty(),
        "the hook never asked the view's socket, so its refusal says nothing of resolving: {:?}",
        pins.requests()
    );
}

#[test]
fn a_view_that_turns_a_directory_into_a_symlink_never_shows_the_secret() {
    let sb = Sandbox::new();
    let secret = secret(&sb, "secret");
    for (name, serve) in [
        ("flip", Serve::FlipAfterFirst(secret.dir.clone())),
        ("alternate", Serve::Alternate(secret.dir.clone())),
    ] {
        let (view, _pins) = hostile_view(&sb, &format!("mnt-{name}"), serve);
        let named = view.snapshot();
        let src = named.to_str().unwrap();
        let nix = NixBuild::new(
            &sb,
            name,
            "ls -R $src > $out; cat $src/* >> $out; cat /srcstore/src/* >> $out",
        );
        let (out, log) = nix.build(src);
        assert!(view.lookups() >= 1, "nothing looked at the view: {log}");
        never_seen(&nix, src, &log, out.as_deref(), &secret.marker);
        match &out {
            Some(out) => assert!(
                fs::read_to_string(out).unwrap().contains(DECOY.trim()),
                "{name}: the build saw something else than the directory the view served"
            ),
            None => {
                let lines = ours(&log);
                assert!(lines.len() <= 1, "{name}: {log}");
                if let Some(line) = lines.first() {
                    refused(line, &named);
                } else {
                    assert!(log.contains("error:"), "{name}: {log}");
                }
            }
        }
        if name == "flip" {
            // The hook resolved the directory it was first shown and staged exactly that; the
            // symlink every later lookup answers changed nothing.
            let out = out.unwrap_or_else(|| panic!("{name}: {log}"));
            assert!(fs::read_to_string(out).unwrap().contains(DECOY.trim()));
        }
    }
}

/// A mountpoint at `<sb>/<path>` (made, with every directory on the way), serving a real
/// snapshot directory; the view and its pin socket.
fn view_at(sb: &Sandbox, mountpoint: &Path) -> (HostileView, PinServer) {
    fs::create_dir_all(mountpoint).unwrap();
    let pins = PinServer::start(&sb.path("odd.sock"));
    let view = HostileView::mount(mountpoint, &pins.path, Serve::Dir);
    (view, pins)
}

#[test]
fn a_mountpoint_with_a_newline_cannot_add_sandbox_paths() {
    let sb = Sandbox::new();
    let secret = secret(&sb, "secret");
    // Printed as it is, `<mountpoint>/<entry>` would be three sandbox paths: `<sb>/a`, the
    // secret, and `<sb>/c/<entry>` (all three exist, so Nix would bind them all).
    let mountpoint = PathBuf::from(format!(
        "{}/a\n{}\n{}/c",
        sb.dir.path().display(),
        secret.dir.display(),
        sb.dir.path().display()
    ));
    fs::create_dir_all(sb.path("a")).unwrap();
    fs::create_dir_all(sb.path("c").join(entry())).unwrap();
    let (view, _pins) = view_at(&sb, &mountpoint);
    let named = view.snapshot();
    assert_eq!(
        fs::read_to_string(named.join("file")).unwrap(),
        DECOY,
        "the view serves a real snapshot"
    );
    let src = named.to_str().unwrap();
    let nix = NixBuild::new(
        &sb,
        "newline",
        &format!("cat {}/file > $out; ls $src >> $out", secret.dir.display()),
    );
    let log = build_fails(&nix, src);
    let line = refused(&log, &named);
    assert!(line.contains("'\\n'"), "{log}");
    never_seen(&nix, src, &log, None, &secret.marker);
}

#[test]
fn a_mountpoint_with_an_equals_sign_cannot_choose_what_is_bound() {
    let sb = Sandbox::new();
    // Printed as it is, `<sb>/e=<secret-parent>/<entry>` would bind the secret at `<sb>/e`.
    let secret = secret(&sb, &entry());
    let parent = secret.dir.parent().unwrap();
    let mountpoint = PathBuf::from(format!(
        "{}/e={}",
        sb.dir.path().display(),
        parent.display()
    ));
    fs::create_dir_all(sb.path("e")).unwrap();
    let (view, _pins) = view_at(&sb, &mountpoint);
    let named = view.snapshot();
    assert_eq!(fs::read_to_string(named.join("file")).unwrap(), DECOY);
    let src = named.to_str().unwrap();
    let nix = NixBuild::new(
        &sb,
        "equals",
        &format!("cat {}/e/file > $out", sb.dir.path().display()),
    );
    let log = build_fails(&nix, src);
    let line = refused(&log, &named);
    assert!(line.contains("'='"), "{log}");
    never_seen(&nix, src, &log, None, &secret.marker);
}

/// A process of the test's, killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A control socket at `socket` served by `python3` running as nobody, which records in
/// `record` how many connections it took and how many bytes they sent (`<conns> <bytes>`).
fn nobodys_socket(socket: &Path, record: &Path) -> Killed {
    const SERVER: &str = r#"
import os, socket, sys
path, record = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
s.listen(8)
conns = total = 0
while True:
    c, _ = s.accept()
    c.settimeout(5)
    got = b""
    try:
        while not got.endswith(b"\n"):
            b = c.recv(4096)
            if not b:
                break
            got += b
        if got:
            c.sendall(b'{"ok":true,"pin":7}\n')
    except OSError:
        pass
    c.close()
    conns += 1
    total += len(got)
    with open(record + ".new", "w") as f:
        f.write("%d %d\n" % (conns, total))
    os.rename(record + ".new", record)
"#;
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("python3");
    let child = Killed(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                python,
                "-c",
                SERVER,
            ])
            .arg(socket)
            .arg(record)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..200 {
        if socket.exists() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nobody's socket server did not start");
}

/// `(connections, bytes)` once `record` shows at least `conns` connections.
fn recorded(record: &Path, conns: u64) -> (u64, u64) {
    for _ in 0..200 {
        if let Ok(text) = fs::read_to_string(record) {
            let mut it = text.split_whitespace().map(|n| n.parse::<u64>().unwrap());
            let seen = (it.next().unwrap(), it.next().unwrap());
            if seen.0 >= conns {
                return seen;
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nobody's socket server recorded fewer than {conns} connections");
}

#[test]
fn a_socket_served_by_another_user_is_never_written_to() {
    let sb = Sandbox::new();
    chmod(sb.dir.path(), 0o711);
    let dir = sb.path("nobody");
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    chmod(&dir, 0o755);
    let socket = dir.join("view.sock");
    let record = dir.join("record");
    let _server = nobodys_socket(&socket, &record);
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(&socket).unwrap().uid(), 65534);
    }
    let mountpoint = sb.path("mnt");
    fs::create_dir(&mountpoint).unwrap();
    // root's own view (user_id=0), naming nobody's socket.
    let view = HostileView::mount(&mountpoint, &socket, Serve::Dir);
    let named = view.snapshot();
    assert_eq!(fs::read_to_string(named.join("file")).unwrap(), DECOY);

    let nix = NixBuild::new(&sb, "foreign-socket", "cat $src/file > $out");
    let src = named.to_str().unwrap();
    let log = build_fails(&nix, src);
    let line = refused(&log, &named);
    assert!(
        line.contains("refused") && line.contains("uid"),
        "not refused for whom it runs as: {log}"
    );
    assert_eq!(
        recorded(&record, 1),
        (1, 0),
        "the hook connected once and sent nothing"
    );

    // The record counts what a client sends.
    let mut client = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    std::io::Write::write_all(&mut client, b"{}\n").unwrap();
    let mut answer = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&client), &mut answer).unwrap();
    drop(client);
    assert_eq!(recorded(&record, 2), (2, 3));
}

/// Runs `srcstore nix hook <drv> <chroot>` directly; its output and pid.
fn run_hook(sb: &Sandbox, drv: &Path) -> (std::process::Output, u32) {
    let child = sb
        .hook(drv)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    (child.wait_with_output().unwrap(), pid)
}

/// Whether a staging directory of the hook run `pid` is left.
fn staged_by(pid: u32) -> bool {
    fs::read_dir(srcstore::hook::STAGE_ROOT)
        .map(|d| {
            d.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{pid}-"))
            })
        })
        .unwrap_or(false)
}

#[test]
fn the_hook_run_by_hand_on_a_symlink_prints_no_sandbox_path() {
    let sb = Sandbox::new();
    let secret = secret(&sb, "secret");
    let (real, _p1) = hostile_view(&sb, "mnt-dir", Serve::Dir);
    let (view, _p2) = hostile_view(&sb, "mnt", Serve::Symlink(secret.dir.clone()));
    let nix = NixBuild::new(&sb, "by-hand", "cat $src/file > $out");

    // The same hook, by hand, stages a directory the view serves.
    let (drv, _) = derivation(&nix, real.snapshot().to_str().unwrap());
    let (out, good) = run_hook(&sb, &drv);
    assert!(out.status.success(), "{}", stderr(&out));
    let block = String::from_utf8(out.stdout).unwrap();
    assert!(
        block.starts_with("extra-sandbox-paths\n")
            && block.contains(&format!("{}=/", real.snapshot().display())),
        "{block}"
    );
    sb.end_builds();

    let named = view.snapshot();
    let (drv, _) = derivation(&nix, named.to_str().unwrap());
    let (out, pid) = run_hook(&sb, &drv);
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "a refused hook printed sandbox paths"
    );
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    refused(&err, &named);
    assert!(!err.contains(&secret.marker));
    assert!(!staged_by(pid), "a refused hook left a staging behind");
    assert!(
        !staged_by(good),
        "the staging of a build whose chroot is gone outlived the next hook run"
    );
}

/// A tmpfs mounted over `path`, detached when dropped.
struct Cover(PathBuf);

impl Cover {
    fn mount(path: &Path) -> Cover {
        rustix::mount::mount(
            "none",
            path,
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            None,
        )
        .unwrap_or_else(|e| panic!("mount tmpfs at {}: {e}", path.display()));
        Cover(path.to_path_buf())
    }
}

impl Drop for Cover {
    fn drop(&mut self) {
        support::detach(&self.0);
    }
}

#[test]
fn a_refusal_stays_one_line_whatever_the_view_names() {
    let sb = Sandbox::new();
    let forged = "\nsrcstore: error: forged";
    let nix = NixBuild::new(&sb, "odd-names", "cat $src/file > $out");
    let mut spans = Vec::new();
    let mut check = |case: &str, named: &Path| {
        let (drv, _) = derivation(&nix, named.to_str().unwrap());
        let (out, _) = run_hook(&sb, &drv);
        assert!(!out.status.success() && out.stdout.is_empty(), "{case}");
        let err = stderr(&out);
        if err.lines().count() != 1 || !err.starts_with("srcstore: error: ") {
            spans.push(format!("{case}:\n{err}"));
        }
    };

    // A socket name no daemon answers at.
    fs::create_dir(sb.path("mnt")).unwrap();
    let view = HostileView::mount(
        &sb.path("mnt"),
        &sb.path(&format!("x{forged}.sock")),
        Serve::Dir,
    );
    check("a socket name with a newline", &view.snapshot());

    // A view another mount covers, at a mountpoint with a newline.
    let pins = PinServer::start(&sb.path("covered.sock"));
    let mountpoint = sb.path(&format!("covered{forged}"));
    fs::create_dir_all(&mountpoint).unwrap();
    let covered = HostileView::mount(&mountpoint, &pins.path, Serve::Dir);
    let cover = Cover::mount(&mountpoint);
    check("a covered mountpoint with a newline", &covered.snapshot());
    drop(cover);

    assert!(
        spans.is_empty(),
        "a refusal spans lines (a view can forge the hook's lines):\n{}",
        spans.join("\n")
    );
}

#[test]
fn a_daemon_speaking_another_protocol_fails_the_build_naming_setup_apply() {
    let sb = Sandbox::new();
    let mountpoint = sb.path("newer");
    fs::create_dir_all(&mountpoint).unwrap();
    let pins = PinServer::answering(
        &sb.path("newer.sock"),
        r#"{"ok":false,"error":"protocol version 1 not spoken here (this daemon speaks 2)","speaks":2}"#,
    );
    let view = HostileView::mount(&mountpoint, &pins.path, Serve::Dir);
    let nix = NixBuild::new(&sb, "newer", "cat $src/file > $out");
    let src = view.snapshot();
    let log = build_fails(&nix, src.to_str().unwrap());
    let line = refused(&log, &src);
    assert!(
        line.contains("protocol 2") && line.contains("srcstore nix setup --apply"),
        "{line}"
    );
}

#[test]
fn a_daemon_naming_a_cache_volume_root_cannot_vouch_for_gets_no_volume_and_the_build_runs() {
    let sb = Sandbox::new();
    let secret = secret(&sb, "secret");
    // What a daemon may name as its volume: a link to the secret, a directory open to others,
    // a directory of another user's. Root opens none of them for the build.
    let link = sb.path("link");
    std::os::unix::fs::symlink(&secret.dir, &link).unwrap();
    let open = sb.path("open");
    fs::create_dir(&open).unwrap();
    write(&open.join("file"), &secret.marker);
    chmod(&open, 0o755);
    let theirs = sb.path("theirs");
    fs::create_dir(&theirs).unwrap();
    write(&theirs.join("file"), &secret.marker);
    support::own(&theirs, "srcstore-other", 0o700);
    // And a path with a newline: the note stays one line, and nothing is forged after it.
    let forged = PathBuf::from("/nonexistent\nFORGED: srcstore used the cache");
    for (name, named) in [
        ("link", &link),
        ("open", &open),
        ("theirs", &theirs),
        ("newline", &forged),
    ] {
        let mountpoint = sb.path(&format!("mnt-{name}"));
        fs::create_dir_all(&mountpoint).unwrap();
        // One answer to every request: the pin, and the volume's path.
        let reply = serde_json::json!({ "ok": true, "pin": 7, "path": named }).to_string();
        let pins = PinServer::answering(&sb.path(&format!("{name}.sock")), reply.leak());
        let view = HostileView::mount(&mountpoint, &pins.path, Serve::Dir);
        let src = view.snapshot();
        let src = src.to_str().unwrap();
        let nix = NixBuild::with_attrs(
            &sb,
            &format!("volume-{name}"),
            "ls -R /srcstore/cache > $out 2>&1; cat /srcstore/cache/file >> $out 2>&1; \
             cat /srcstore/no-cache >> $out",
            r#"{ srcstoreCache = "go"; }"#,
        );
        let (out, log) = nix.build(src);
        let out = out.unwrap_or_else(|| panic!("{name}: the build did not run: {log}"));
        never_seen(&nix, src, &log, Some(&out), &secret.marker);
        let said = fs::read_to_string(&out).unwrap();
        assert!(
            said.contains("built without the cache volume"),
            "{name}: {said}"
        );
        assert!(
            !said.lines().any(|l| l.starts_with("FORGED")),
            "{name}: a line was forged: {said}"
        );
        assert!(
            pins.requests().iter().any(|r| r.contains("\"volume\"")),
            "{name}: the hook never asked for the volume: {:?}",
            pins.requests()
        );
    }
}
