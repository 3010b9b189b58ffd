//! Store mode beside Nix's garbage collector. A binary of its own: `nix-store --gc` deletes
//! every path no root holds, which other tests' unrooted fixtures are.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use support::{publish, stderr, valid, verify_path, write, Daemon, Sandbox};

#[test]
fn publishing_while_nix_collects_garbage_in_a_loop_leaves_every_published_path_valid_and_whole() {
    let sb = Sandbox::new();
    let p = sb.path("proj");
    write(&p.join("unique"), sb.dir.path().to_str().unwrap());
    for i in 0..300 {
        write(&p.join(format!("d{}/f{i}", i % 10)), format!("{i}\n"));
    }
    let _d = Daemon::start(&sb, &p, &["--store"]);
    let stop = Arc::new(AtomicBool::new(false));
    let collector = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut runs = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let out = Command::new("nix-store").arg("--gc").output().unwrap();
                runs.push((out.status.success(), stderr(&out)));
            }
            runs
        })
    };
    let mut published = Vec::new();
    for round in 0..12 {
        write(&p.join("d0/edited"), format!("round {round}\n"));
        let path = publish(&sb, &p, &[]);
        verify_path(&path);
        published.push(path);
    }
    stop.store(true, Ordering::Relaxed);
    let runs = collector.join().unwrap();
    assert!(runs.len() >= 2, "the collector ran {} times", runs.len());
    for (ok, err) in &runs {
        assert!(ok, "nix-store --gc failed beside a publication: {err}");
    }
    // A daemon keeps its latest publications rooted: the collector left them valid and whole.
    for path in published.iter().rev().take(8) {
        assert!(valid(path), "{path} was collected while rooted");
        verify_path(path);
    }
}

#[test]
fn store_gc_deletes_the_published_paths_no_daemon_roots_any_more() {
    let sb = Sandbox::new();
    let p = sb.path("proj");
    write(&p.join("unique"), sb.dir.path().to_str().unwrap());
    write(&p.join("a"), "one");
    let mut d = Daemon::start(&sb, &p, &["--store"]);
    let first = publish(&sb, &p, &[]);
    write(&p.join("a"), "two");
    let second = publish(&sb, &p, &[]);
    let status: serde_json::Value =
        serde_json::from_str(&sb.ok(&["store", "status", "--json"])).unwrap();
    assert!(status["published"].as_u64().unwrap() >= 2, "{status}");
    assert!(status["roots"].as_u64().unwrap() >= 2, "{status}");
    // Rooted while its daemon runs: gc keeps them.
    sb.ok(&["store", "gc"]);
    assert!(valid(&first) && valid(&second));
    // A daemon that stops releases its roots; then nothing uses them.
    d.stop_with("-TERM");
    let said: serde_json::Value = serde_json::from_str(&sb.ok(&["store", "gc", "--json"])).unwrap();
    assert!(!valid(&first) && !valid(&second), "{said}");
}

#[test]
fn store_gc_keeps_a_published_path_that_a_valid_derivation_still_uses() {
    let sb = Sandbox::new();
    let p = sb.path("proj");
    write(&p.join("unique"), sb.dir.path().to_str().unwrap());
    write(&p.join("a"), "used by a derivation");
    let mut d = Daemon::start(&sb, &p, &["--store"]);
    let path = publish(&sb, &p, &[]);
    // A rooted derivation naming the path as an input keeps it alive.
    let expr = sb.path("uses.nix");
    std::fs::write(
        &expr,
        format!(
            "derivation {{ name = \"uses\"; system = builtins.currentSystem; builder = \"/bin/sh\"; src = builtins.storePath \"{path}\"; }}"
        ),
    )
    .unwrap();
    let out = Command::new("nix-instantiate")
        .arg("--add-root")
        .arg(sb.path("drv-root"))
        .arg("--indirect")
        .arg(&expr)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    d.stop_with("-TERM");
    let said: serde_json::Value = serde_json::from_str(&sb.ok(&["store", "gc", "--json"])).unwrap();
    assert!(said["kept_alive"].as_u64().unwrap() >= 1, "{said}");
    assert!(valid(&path), "{said}");
    verify_path(&path);
}

#[test]
fn the_roots_of_a_daemon_killed_hard_are_released_by_store_repair() {
    let sb = Sandbox::new();
    let p = sb.path("proj");
    write(&p.join("unique"), sb.dir.path().to_str().unwrap());
    let mut d = Daemon::start(&sb, &p, &["--store"]);
    let path = publish(&sb, &p, &[]);
    let roots = || {
        let out = Command::new("nix-store")
            .args(["--gc", "--print-roots"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&path)
    };
    assert!(roots(), "{path} is not rooted while published");
    d.stop_with("-KILL");
    support::detach(&d.mountpoint);
    assert!(roots(), "a killed daemon cannot release its roots itself");
    let said = sb.ok(&["store", "repair"]);
    assert!(
        said.contains(&format!(
            "released the roots of a daemon that is gone ({})",
            p.display()
        )),
        "{said}"
    );
    assert!(!roots(), "{path} is still rooted");
}
