//! The places srcstore trusts are its user's own: a runtime directory someone else made or
//! opened is refused, a client believes only a daemon of its own user, and a mount that
//! cannot start leaves nothing behind that would mislead the next command.
//!
//! Run as root, acting as the users `srcstore-dev` and `srcstore-other` (scripts/setup-machine).

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use support::{own, srcstore_as, uid_of, write, Sandbox};

const DEV: &str = "srcstore-dev";
const OTHER: &str = "srcstore-other";

fn one_line_failure(out: &Output) -> String {
    assert!(!out.status.success(), "succeeded: {out:?}");
    assert!(
        out.stdout.is_empty(),
        "a failing run printed a result: {out:?}"
    );
    let err = support::stderr(out);
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

/// A sandbox the test users can walk into, with a project `user` owns.
fn world(user: &str) -> (Sandbox, PathBuf) {
    let sb = Sandbox::new();
    fs::set_permissions(sb.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let p = sb.path("proj");
    write(&p.join("f"), "hello\n");
    own(&p, user, 0o755);
    own(&p.join("f"), user, 0o644);
    (sb, p)
}

#[test]
fn a_runtime_directory_another_user_made_is_refused_with_one_line() {
    let (sb, p) = world(DEV);
    let xdg = sb.path("xdg");
    fs::create_dir_all(xdg.join("srcstore")).unwrap();
    own(&xdg, DEV, 0o700);
    own(&xdg.join("srcstore"), OTHER, 0o777);
    let env = [("XDG_RUNTIME_DIR", xdg.to_str().unwrap())];
    for args in [
        vec!["mount", "--allow-other", p.to_str().unwrap()],
        vec!["path", p.to_str().unwrap()],
    ] {
        let err = one_line_failure(&srcstore_as(DEV, &env, &args));
        assert!(
            err.contains(xdg.join("srcstore").to_str().unwrap()) && err.contains("owned by uid"),
            "{err}"
        );
    }
    // Its own but open to others: refused too, with the fix.
    own(&xdg.join("srcstore"), DEV, 0o755);
    let err = one_line_failure(&srcstore_as(DEV, &env, &["path", p.to_str().unwrap()]));
    assert!(err.contains("chmod 700"), "{err}");
}

#[test]
fn without_xdg_runtime_dir_the_place_is_tmp_srcstore_uid_whatever_tmpdir_says() {
    // srcstore-other's fallback directory, made first by srcstore-dev, as an attacker would.
    let (sb, p) = world(OTHER);
    let fallback = PathBuf::from(format!("/tmp/srcstore-{}", uid_of(OTHER)));
    let _ = fs::remove_dir_all(&fallback);
    fs::create_dir(&fallback).unwrap();
    own(&fallback, DEV, 0o777);
    let elsewhere = sb.path("tmpdir");
    fs::create_dir(&elsewhere).unwrap();
    own(&elsewhere, OTHER, 0o700);
    let out = srcstore_as(
        OTHER,
        &[("TMPDIR", elsewhere.to_str().unwrap())],
        &["mount", "--allow-other", p.to_str().unwrap()],
    );
    let _ = fs::remove_dir_all(&fallback);
    let err = one_line_failure(&out);
    assert!(
        err.contains(fallback.to_str().unwrap()) && err.contains("owned by uid"),
        "{err}"
    );
    assert_eq!(
        fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "TMPDIR was used"
    );
}

#[test]
fn a_client_never_believes_a_daemon_of_another_user() {
    let (sb, p) = world(DEV);
    let xdg = sb.path("xdg");
    fs::create_dir_all(xdg.join("srcstore")).unwrap();
    own(&xdg, DEV, 0o700);
    own(&xdg.join("srcstore"), DEV, 0o700);
    // Another user's server that answers every request with a path of its choosing, reached
    // through a link in the owner's directory (made by mistake, or by a tool run there).
    let theirs = sb.path("theirs");
    fs::create_dir(&theirs).unwrap();
    own(&theirs, OTHER, 0o755);
    let sock = theirs.join("evil.sock");
    let server = "import socket,sys,os\n\
        s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); os.chmod(sys.argv[1],0o777); s.listen(4)\n\
        while True:\n    c,_=s.accept()\n    try: c.recv(65536); c.sendall(b'{\"ok\":true,\"path\":\"/evil\"}\\n')\n    except OSError: pass\n    c.close()\n";
    let mut evil = Command::new("setpriv")
        .args([
            &format!("--reuid={OTHER}"),
            &format!("--regid={OTHER}"),
            "--init-groups",
        ])
        .args(["/usr/bin/python3", "-c", server])
        .arg(&sock)
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let ours = srcstore::daemon::paths::socket_path(&xdg.join("srcstore"), &p);
    std::os::unix::fs::symlink(&sock, &ours).unwrap();
    let out = srcstore_as(
        DEV,
        &[("XDG_RUNTIME_DIR", xdg.to_str().unwrap())],
        &["path", p.to_str().unwrap()],
    );
    let _ = evil.kill();
    let _ = evil.wait();
    let err = one_line_failure(&out);
    assert!(err.contains(&format!("uid {}", uid_of(OTHER))), "{err}");
    assert!(!err.contains("/evil"), "{err}");
}

#[test]
fn a_mount_that_cannot_use_fuse_names_the_cause_and_leaves_nothing_behind() {
    let (sb, p) = world(DEV);
    let xdg = sb.path("xdg");
    fs::create_dir_all(&xdg).unwrap();
    own(&xdg, DEV, 0o700);
    // /dev/fuse as root-only as some machines have it, in a namespace of the test's own.
    let locked = sb.path("locked-fuse");
    fs::write(&locked, "").unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o600)).unwrap();
    let script = format!(
        "mount --bind {} /dev/fuse && exec setpriv --reuid={DEV} --regid={DEV} --init-groups {} mount --allow-other {}",
        locked.display(),
        support::srcstore_bin().display(),
        p.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", format!("/home/{DEV}"))
        .env("SRCSTORE_LOG", "warn")
        .env("XDG_RUNTIME_DIR", &xdg)
        .output()
        .unwrap();
    let err = one_line_failure(&out);
    assert!(
        err.contains("/dev/fuse") && err.contains("permission denied") && err.contains("chmod"),
        "{err}"
    );
    let left: Vec<_> = fs::read_dir(xdg.join("srcstore"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| !n.to_string_lossy().ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "a failed mount left {left:?}");
    let err = one_line_failure(&srcstore_as(
        DEV,
        &[("XDG_RUNTIME_DIR", xdg.to_str().unwrap())],
        &["path", p.to_str().unwrap()],
    ));
    assert!(
        err.contains("no srcstore daemon serves"),
        "not a stale-socket story: {err}"
    );
}

#[test]
fn a_hook_run_by_a_user_prints_the_checked_path_itself_and_stages_nothing() {
    // Single-user Nix run by a user runs the hook as that user, whose sandbox can bind only
    // what the user can read: the checked path needs no root-only clone.
    let (sb, p) = world(DEV);
    // A runtime directory below directories only root and the user can write, as
    // /run/user/<uid> is: the hook believes a user's view only in such a place.
    let above = tempfile::Builder::new()
        .prefix("srcstore-test")
        .tempdir_in("/run")
        .unwrap();
    support::chmod(above.path(), 0o755);
    let xdg = above.path().join("xdg");
    fs::create_dir_all(&xdg).unwrap();
    own(&xdg, DEV, 0o700);
    let env = [("XDG_RUNTIME_DIR", xdg.to_str().unwrap())];
    let mut daemon = Command::new("setpriv")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", format!("/home/{DEV}"))
        .env("SRCSTORE_LOG", "warn")
        .envs(env)
        .args([
            &format!("--reuid={DEV}"),
            &format!("--regid={DEV}"),
            "--init-groups",
        ])
        .arg(support::srcstore_bin())
        .args(["mount", "--allow-other", p.to_str().unwrap()])
        .spawn()
        .unwrap();
    let mut path = String::new();
    support::wait_for("the user's daemon", || {
        let out = srcstore_as(DEV, &env, &["path", p.to_str().unwrap()]);
        path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        out.status.success()
    });
    let expr = sb.path("x.nix");
    fs::write(
        &expr,
        format!("derivation {{ name = \"x\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; src = \"{path}\"; }}"),
    )
    .unwrap();
    let drv = Command::new("nix-instantiate").arg(&expr).output().unwrap();
    assert!(drv.status.success(), "{}", support::stderr(&drv));
    let drv = String::from_utf8(drv.stdout).unwrap().trim().to_owned();
    let chroot = sb.path("chroot");
    fs::create_dir(&chroot).unwrap();
    let out = srcstore_as(DEV, &env, &["nix", "hook", &drv, chroot.to_str().unwrap()]);
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
    assert!(out.status.success(), "{}", support::stderr(&out));
    let block = String::from_utf8(out.stdout).unwrap();
    assert!(
        block.starts_with("extra-sandbox-paths\n") && block.contains(&format!("{path}={path}\n")),
        "{block}"
    );
    assert!(!block.contains(srcstore::hook::STAGE_ROOT), "{block}");
}

#[test]
fn a_full_runtime_directory_fails_path_with_one_line_and_exit_1_not_a_refusal() {
    let (sb, p) = world(DEV);
    // The user's runtime directory on a filesystem of its own, with few inodes.
    let xdg = sb.path("xdg");
    fs::create_dir(&xdg).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o"])
        .arg(format!(
            "size=1m,nr_inodes=64,mode=0700,uid={}",
            uid_of(DEV)
        ))
        .args(["tmpfs"])
        .arg(&xdg)
        .status()
        .unwrap();
    assert!(mounted.success());
    let _unmount = support::Unmount(xdg.clone());
    let env = [("XDG_RUNTIME_DIR", xdg.to_str().unwrap())];
    let mut daemon = Command::new("setpriv")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", format!("/home/{DEV}"))
        .env("XDG_RUNTIME_DIR", &xdg)
        .args([
            &format!("--reuid={DEV}"),
            &format!("--regid={DEV}"),
            "--init-groups",
        ])
        .arg(support::srcstore_bin())
        .args(["mount", p.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    support::wait_for("the daemon", || {
        srcstore_as(DEV, &env, &["path", p.to_str().unwrap()])
            .status
            .success()
    });
    // Every inode taken.
    for i in 0.. {
        if fs::write(xdg.join(format!("filler-{i}")), "").is_err() {
            break;
        }
    }
    write(&p.join("f"), "edited\n");
    let out = srcstore_as(DEV, &env, &["path", p.to_str().unwrap()]);
    let _ = daemon.kill();
    let _ = daemon.wait();
    let err = one_line_failure(&out);
    assert!(
        err.contains("cannot create sync cookie") && err.contains("No space left on device"),
        "{err}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "an error, not a refusal (4): {err}"
    );
}
