//! The kernel's inotify limits, met for real. These tests lower machine-wide sysctls for a
//! moment, so they live in a test binary of their own (cargo runs test binaries one after
//! another) and take turns within it.

mod support;

use std::fs;
use std::sync::Mutex;

use support::{write, Daemon, Sandbox};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A sysctl set for as long as this lives, then put back.
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Sysctl {
        let old = fs::read_to_string(path).unwrap();
        fs::write(path, value).unwrap_or_else(|e| panic!("{path}: {e} (the tests run as root)"));
        Sysctl { path, old }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        fs::write(self.path, self.old.trim()).unwrap();
    }
}

#[test]
fn a_watch_limit_reached_is_one_line_naming_the_sysctl_to_raise() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sb = Sandbox::new();
    let p = sb.path("proj");
    for i in 0..300 {
        write(&p.join(format!("d{i}/f")), "x");
    }
    let mountpoint = sb.path("mnt");
    let out = {
        let _limit = Sysctl::set("/proc/sys/fs/inotify/max_user_watches", "100");
        sb.mount_once(&mountpoint, &p)
    };
    let err = support::stderr(&out);
    assert!(!out.status.success(), "mounted past the watch limit: {err}");
    let named: Vec<_> = err
        .lines()
        .filter(|l| l.contains("fs.inotify.max_user_watches"))
        .collect();
    assert_eq!(named.len(), 1, "{err}");
    assert_eq!(err.matches("raise it").count(), 1, "the advice once: {err}");
    assert!(named[0].contains(p.to_str().unwrap()), "{err}");
    let mounted = std::process::Command::new("mountpoint")
        .arg("-q")
        .arg(&mountpoint)
        .status()
        .unwrap();
    assert!(!mounted.success(), "a failed start left its mount behind");
}

#[test]
fn a_queue_overflow_is_recovered_by_a_rescan_that_misses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sb = Sandbox::new();
    let p = sb.path("proj");
    write(&p.join("kept"), "k");
    // The queue length is fixed when the daemon's inotify instance is made.
    let daemon = {
        let _queue = Sysctl::set("/proc/sys/fs/inotify/max_queued_events", "16");
        Daemon::start(&sb, &p, &[])
    };
    let rescans = || daemon.status(&sb)["rescans"].as_u64().unwrap();
    for round in 0..40 {
        for i in 0..400 {
            write(
                &p.join(format!("burst{round}/f{i}")),
                format!("{round}.{i}"),
            );
        }
        fs::remove_file(p.join(format!("burst{round}/f0"))).unwrap();
        if rescans() > 0 {
            break;
        }
    }
    assert!(rescans() > 0, "the 16-event queue never overflowed");
    let served = daemon.path(&sb);
    let name = served.file_name().unwrap().to_str().unwrap();
    assert_eq!(
        name,
        sb.hash(&p),
        "the snapshot after an overflow is not the tree on disk"
    );
}
