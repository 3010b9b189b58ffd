//! Store mode for a user: root's store service (`srcstore store serve`) publishes a user's
//! snapshots, reading them from the user's own view, and trusts nothing the user says; the
//! user builds the published flake through a real nix-daemon.

mod support;

#[path = "support/hostile.rs"]
mod hostile;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use hostile::{HostileView, Serve};
use support::world::{World, DEV, OTHER};
use support::{own, stderr, valid, verify_path, wait_for, write, Sandbox};

/// A flake project owned by `user`, its lock file committed, whose output is its `msg`.
fn flake_project(w: &World, user: &str) -> PathBuf {
    let p = w.sb.path("flake");
    write(&p.join("flake.nix"), support::flake_nix());
    write(&p.join("msg"), "first");
    let lock = Command::new("nix")
        .args(["--extra-experimental-features", "nix-command flakes"])
        .args(["flake", "lock"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(lock.status.success(), "nix flake lock: {}", stderr(&lock));
    // Its own bytes, so that its paths are its own: written after the lock, since locking a
    // `path:` flake copies the tree into the store.
    write(&p.join("unique"), w.sb.dir.path().to_str().unwrap());
    for f in ["", "flake.nix", "flake.lock", "msg", "unique"] {
        own(&p.join(f), user, if f.is_empty() { 0o755 } else { 0o644 });
    }
    p
}

/// The path Nix gives `dir` as a `source` path with srcstore's filter (root computes it).
fn nix_would_give(sb: &Sandbox, dir: &Path) -> String {
    let v = sb.json(&["--nix", "--name", "source", dir.to_str().unwrap()]);
    v["store_path"].as_str().unwrap().to_owned()
}

/// `srcstore path --store` as `user`: its exit code, stdout, stderr.
fn publish_as(w: &World, user: &str, project: &Path) -> (Option<i32>, String, String) {
    let out = w.srcstore(user, &["path", "--store", project.to_str().unwrap()]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        stderr(&out),
    )
}

/// `nix build "path:<path>"` as `user` through nix-daemon: the output's text.
fn build_flake_as(w: &World, user: &str, path: &str) -> String {
    let out = w.user(
        user,
        &[
            "nix",
            "--extra-experimental-features",
            "nix-command flakes",
            "build",
            "--no-link",
            "--json",
            &format!("path:{path}"),
        ],
    );
    assert!(out.status.success(), "nix build: {}", stderr(&out));
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let output = built[0]["outputs"]["out"].as_str().unwrap();
    fs::read_to_string(output).unwrap().trim().to_owned()
}

/// A `publish` request sent straight to the service at `socket` by `user` (root if `None`),
/// in `w`'s world if given: the answer.
fn ask(w: Option<&World>, user: Option<&str>, socket: &Path, view: &Path) -> serde_json::Value {
    let request = serde_json::json!({"v": 1, "op": "publish", "view": view});
    send(w, user, socket, &request)
}

/// `request` sent straight to the service at `socket`, as [`ask`] sends it: the answer.
fn send(
    w: Option<&World>,
    user: Option<&str>,
    socket: &Path,
    request: &serde_json::Value,
) -> serde_json::Value {
    let request = request.to_string();
    let out = match w {
        Some(w) => {
            w.in_ns(user)
                .args(["socat", "-", &format!("UNIX-CONNECT:{}", socket.display())])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    c.stdin
                        .take()
                        .unwrap()
                        .write_all(format!("{request}\n").as_bytes())?;
                    c.wait_with_output()
                })
                .unwrap()
                .stdout
        }
        None => {
            let mut s = UnixStream::connect(socket).unwrap();
            s.write_all(format!("{request}\n").as_bytes()).unwrap();
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).unwrap();
            line.into_bytes()
        }
    };
    serde_json::from_slice(&out).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out));
    })
}

/// A world with root's store service, and `srcstore-dev`'s [`flake_project`] served in store
/// mode and published once: the world, the project, its path.
fn published() -> (World, PathBuf, String) {
    let mut w = World::new(true);
    w.serve_store(60);
    let p = flake_project(&w, DEV);
    w.mount_with(DEV, &p, &["--store"]);
    let (code, path, err) = publish_as(&w, DEV, &p);
    assert_eq!(code, Some(0), "{err}");
    (w, p, path)
}

#[test]
fn a_users_snapshot_is_published_by_roots_service_and_its_flake_builds_through_nix_daemon() {
    let (w, p, path) = published();
    assert_eq!(
        path,
        nix_would_give(&w.sb, &p),
        "the path Nix gives the tree"
    );
    verify_path(&path);
    assert_eq!(build_flake_as(&w, DEV, &path), "first");

    // An edit: a new path, and a build of it.
    write(&p.join("msg"), "second");
    let (code, edited, err) = publish_as(&w, DEV, &p);
    assert_eq!(code, Some(0), "{err}");
    assert_ne!(edited, path);
    verify_path(&edited);
    assert_eq!(build_flake_as(&w, DEV, &edited), "second");
    // The first stays as registered.
    verify_path(&path);
}

#[test]
fn another_user_cannot_have_the_service_publish_the_owners_snapshot() {
    let mut w = World::new(true);
    let socket = w.serve_store(60);
    let p = flake_project(&w, DEV);
    w.mount(DEV, &p);
    let view = PathBuf::from(w.path(DEV, &p));
    let path = nix_would_give(&w.sb, &p);

    let answer = ask(Some(&w), Some(OTHER), &socket, &view);
    assert_eq!(answer["ok"], false, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("may publish only its own snapshots"),
        "{error}"
    );
    assert!(!valid(&path), "{path} was registered for another user");

    // Nor anything that is not a view's snapshot: the path of the project itself.
    let answer = ask(Some(&w), Some(OTHER), &socket, &p);
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(!valid(&path));
}

#[test]
fn store_mode_for_a_user_with_no_service_running_says_how_to_start_one() {
    let w = World::new(true);
    let p = flake_project(&w, DEV);
    let out = w
        .in_ns(Some(DEV))
        .env("SRCSTORE_STORE_SERVICE", w.sb.path("no-service.sock"))
        .arg(support::srcstore_bin())
        .args(["mount", "--store", "--allow-other"])
        .arg(&p)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("no-service.sock") && err.contains("srcstore store serve"),
        "{err}"
    );
}

/// Root's store service in this process's namespace, at a socket of its own: for views the
/// test mounts itself.
struct Service {
    child: Child,
    socket: PathBuf,
}

impl Service {
    fn start(sb: &Sandbox, stall: u64) -> Service {
        Service::start_with(sb, &["--stall", &stall.to_string()])
    }

    fn start_with(sb: &Sandbox, args: &[&str]) -> Service {
        let mut c = sb.cmd();
        c.args(["store", "serve"]);
        let (child, socket) = support::store_service(c, sb, args);
        Service { child, socket }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A hostile view serving one snapshot, `hostile::entry()`, with one file.
fn hostile_view(sb: &Sandbox, serve: Serve) -> HostileView {
    let mnt = sb.path("hostile");
    fs::create_dir_all(&mnt).unwrap();
    HostileView::mount(&mnt, &sb.path("pins.sock"), serve)
}

#[test]
fn a_view_that_answers_each_read_differently_gets_nothing_registered() {
    let sb = Sandbox::new();
    let service = Service::start(&sb, 60);
    let view = hostile_view(&sb, Serve::Shifting);
    let answer = ask(None, None, &service.socket, &view.snapshot());
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("file changed since the snapshot was taken"),
        "{answer}"
    );
    // Whatever the view said the file held, no path of it is valid.
    let records = fs::read_dir("/nix/var/srcstore/published").unwrap();
    for r in records.flatten() {
        let key = fs::read_to_string(r.path()).unwrap_or_default();
        let project = fs::read_to_string(format!("/nix/var/srcstore/projects/{}", key.trim()))
            .unwrap_or_default();
        assert!(
            !project.contains(&format!("dir {}\n", view.mountpoint.display())),
            "{:?} was published from the hostile view",
            r.file_name()
        );
    }
}

#[test]
fn a_view_that_stops_answering_is_cut_off_and_the_service_answers_on() {
    let sb = Sandbox::new();
    let service = Service::start(&sb, 2);
    let stalled = hostile_view(&sb, Serve::Stalled);
    let started = Instant::now();
    let answer = ask(None, None, &service.socket, &stalled.snapshot());
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the service waited {:?} on a view that never answers",
        started.elapsed()
    );
    assert!(
        answer["error"].as_str().unwrap().contains("was cut off"),
        "{answer}"
    );
    // The service goes on answering.
    let again = ask(None, None, &service.socket, &sb.path("nothing"));
    assert_eq!(again["ok"], false, "{again}");
    assert!(
        again["error"]
            .as_str()
            .unwrap()
            .contains("not a snapshot path"),
        "{again}"
    );
}

/// A project of 3,000 files owned by `user`, its own.
fn big_project(w: &World, user: &str) -> PathBuf {
    let p = w.sb.path("big");
    for i in 0..3000 {
        write(
            &p.join(format!("d{}/f{i}", i % 30)),
            format!("{i} {}", w.sb.dir.path().display()).repeat(100),
        );
    }
    let chown = Command::new("chown")
        .args(["-R", user])
        .arg(&p)
        .status()
        .unwrap();
    assert!(chown.success());
    p
}

#[test]
fn the_service_killed_mid_publication_leaves_nothing_valid_and_wrong_and_its_restart_repairs() {
    let mut w = World::new(true);
    w.serve_store(60);
    let p = big_project(&w, DEV);
    let path = nix_would_give(&w.sb, &p);
    // Each file the service makes takes 2 ms longer: the publication is under way for seconds.
    let slowed = support::slow_down(w.store_child.as_ref().unwrap().id(), 2000);
    // The first publication starts with the daemon.
    w.mount_with(DEV, &p, &["--store"]);
    let view = PathBuf::from(w.path(DEV, &p));
    let mountpoint = view.parent().unwrap();
    let mut making = None;
    for _ in 0..5000 {
        if let Some(entry) = support::under_way(mountpoint) {
            w.stop_store();
            drop(slowed);
            making = Some(entry);
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let making = making.expect("the publication was never seen under way");
    // Never valid and wrong: invalid (half made), or valid and whole.
    if valid(&path) {
        verify_path(&path);
    }

    w.serve_store(60);
    let log = fs::read_to_string(w.sb.path("store-service.log")).unwrap();
    assert!(
        log.contains(&format!("{making}: removed, left half-made"))
            || log.contains(&format!("{making}: published whole")),
        "the restart did not say what it repaired: {log}"
    );
    assert!(fs::symlink_metadata(&making).is_err() || valid(&making));
    let (code, again, err) = publish_as(&w, DEV, &p);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(again, path);
    verify_path(&again);
}

#[test]
fn a_published_path_travels_through_a_binary_cache_into_a_store_that_requires_signatures() {
    let (w, _, path) = published();
    let cache = w.sb.path("cache");
    let other = w.sb.path("other-store");
    let nix = |args: &[&str]| {
        let out = Command::new("nix")
            .args(["--extra-experimental-features", "nix-command"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "nix {args:?}: {}", stderr(&out));
    };
    nix(&[
        "copy",
        "--to",
        &format!("file://{}", cache.display()),
        &path,
    ]);
    // `require-sigs` is on by default; nothing here turns signature checks off.
    nix(&[
        "copy",
        "--option",
        "require-sigs",
        "true",
        "--from",
        &format!("file://{}", cache.display()),
        "--to",
        other.to_str().unwrap(),
        &path,
    ]);
    let copied = other.join(path.trim_start_matches('/'));
    assert_eq!(fs::read_to_string(copied.join("msg")).unwrap(), "first");
}

#[test]
fn a_user_nix_does_not_allow_cannot_publish_and_one_a_group_of_allowed_users_names_can() {
    // srcstore-dev's primary group is its own.
    let mut w = World::with_conf(true, "allowed-users = @srcstore-dev");
    w.serve_store(60);
    let p = flake_project(&w, DEV);
    w.mount_with(DEV, &p, &["--store"]);
    let (code, _, err) = publish_as(&w, DEV, &p);
    assert_eq!(code, Some(0), "{err}");

    let q = w.project(OTHER, "others");
    w.mount_with(OTHER, &q, &["--store"]);
    let (code, _, err) = publish_as(&w, OTHER, &q);
    assert_eq!(code, Some(4), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("allowed-users"), "{err}");
}

#[test]
fn a_publication_past_the_users_quota_is_refused_in_one_line_and_nothing_registered() {
    let mut w = World::new(true);
    w.serve_store_with(&["--quota-bytes", "100000"]);
    let p = big_project(&w, DEV);
    let path = nix_would_give(&w.sb, &p);
    w.mount_with(DEV, &p, &["--store"]);
    let (code, _, err) = publish_as(&w, DEV, &p);
    assert_eq!(code, Some(4), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("more than the 100000 bytes") && err.contains("quota"),
        "{err}"
    );
    assert!(!valid(&path));

    // Paths count as well: 3,000 files and 30 directories are more than 1,000.
    w.stop_store();
    w.serve_store_with(&["--quota-paths", "1000"]);
    let (code, _, err) = publish_as(&w, DEV, &p);
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("more than the 1000 entries"), "{err}");
    assert!(!valid(&path));
}

#[test]
fn the_quota_holds_while_reading_a_file_that_claims_a_terabyte_is_never_read() {
    let sb = Sandbox::new();
    let service = Service::start_with(&sb, &["--quota-bytes", "1000000"]);
    let view = hostile_view(&sb, Serve::Huge);
    let started = Instant::now();
    let answer = ask(None, None, &service.socket, &view.snapshot());
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("1000000 bytes"),
        "{answer}"
    );
    assert_eq!(view.reads(), 0, "the service read a file past its quota");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Whether srcstore's records root `path` (for any project).
fn rooted(path: &str) -> bool {
    let base = path.trim_start_matches("/nix/store/");
    fs::read_dir("/nix/var/nix/gcroots/srcstore")
        .unwrap()
        .flatten()
        .any(|project| project.path().join(base).symlink_metadata().is_ok())
}

#[test]
fn a_user_drops_only_their_own_roots_and_a_daemon_that_stops_drops_its_own() {
    let (mut w, p, path) = published();
    let socket = w.store_service.clone().unwrap();
    assert!(rooted(&path));
    let view = PathBuf::from(w.path(DEV, &p));
    let mountpoint = view.parent().unwrap();

    let release = serde_json::json!({"v": 1, "op": "release", "mountpoint": mountpoint});
    let answer = send(Some(&w), Some(OTHER), &socket, &release);
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(rooted(&path), "another user dropped the owner's roots");

    w.stop_mounts();
    wait_for("the stopped daemon's roots to go", || !rooted(&path));
    assert!(valid(&path), "released, not deleted: Nix collects it");
}

#[test]
fn the_service_starts_on_a_machine_where_nix_has_made_no_gcroots_yet() {
    let sb = Sandbox::new();
    // Nix's state directory as a fresh install has it before Nix first runs: empty.
    let mut c = Command::new("unshare");
    c.args([
        "-m",
        "sh",
        "-c",
        r#"mount -t tmpfs tmpfs /nix/var/nix && exec "$0" "$@""#,
    ])
    .arg(support::srcstore_bin())
    .args(["store", "serve"]);
    let (mut service, _) = support::store_service(c, &sb, &[]);
    service.kill().unwrap();
    service.wait().unwrap();
}

#[test]
fn a_view_whose_name_claims_a_hash_gets_the_path_of_the_bytes_root_read() {
    let sb = Sandbox::new();
    let service = Service::start(&sb, 60);
    // Its one snapshot is named by a hash of the server's choosing (`hostile::HASH`).
    let view = hostile_view(&sb, Serve::Dir);
    let answer = ask(None, None, &service.socket, &view.snapshot());
    assert_eq!(answer["ok"], true, "{answer}");
    let path = answer["path"].as_str().unwrap();
    // The same bytes, as Nix would add them.
    let copy = sb.path("copy/source");
    write(&copy.join("file"), hostile::DECOY);
    assert_eq!(path, support::nix_store_add(&copy));
    verify_path(path);
    assert!(!path.contains(hostile::HASH));
}
