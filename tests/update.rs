//! Incremental updates agree with a full scan, and keep the identity of what did not change.

mod support;

use std::fs;
use std::path::Path;

use srcstore::tree::Node;
use srcstore::{Changes, Filter, Scanner, Snapshot};
use support::write;

fn full(dir: &Path) -> Snapshot {
    Scanner::new(dir, Filter::Ignore).scan().unwrap()
}

/// Applies `edit`, then updates with the paths an inotify watcher would have named.
fn step(dir: &Path, before: &Snapshot, named: &[&str], edit: impl FnOnce()) -> Snapshot {
    edit();
    let mut changes = Changes::default();
    for n in named {
        changes.add(n.as_bytes().to_vec());
    }
    let (after, _) = Scanner::new(dir, Filter::Ignore)
        .update(before, &changes)
        .unwrap();
    assert_eq!(
        after.basename(),
        full(dir).basename(),
        "update after {named:?} disagrees with a full scan"
    );
    after
}

fn id_of(s: &Snapshot, rel: &str) -> srcstore::tree::NodeId {
    s.tree().find(rel.as_bytes()).unwrap().id()
}

#[test]
fn every_kind_of_edit_ends_in_the_same_snapshot_as_a_full_scan() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for i in 0..20 {
        write(&d.join(format!("a/b{}/f{i}", i % 3)), format!("{i}"));
    }
    write(&d.join("top"), "top");
    write(&d.join("other/keep"), "keep");
    let mut s = full(d);
    let other = id_of(&s, "other");

    s = step(d, &s, &["a/b1/f1"], || write(&d.join("a/b1/f1"), "edited"));
    assert_eq!(
        id_of(&s, "other"),
        other,
        "an untouched directory keeps its identity"
    );
    s = step(d, &s, &["a/new"], || write(&d.join("a/new"), "new"));
    s = step(d, &s, &["a/b0/f0"], || {
        fs::remove_file(d.join("a/b0/f0")).unwrap()
    });
    s = step(d, &s, &["n1"], || write(&d.join("n1/n2/n3/deep"), "deep"));
    s = step(d, &s, &["a/b2"], || {
        fs::remove_dir_all(d.join("a/b2")).unwrap()
    });
    s = step(d, &s, &["top", "renamed"], || {
        fs::rename(d.join("top"), d.join("renamed")).unwrap()
    });
    s = step(d, &s, &["a/b1", "moved"], || {
        fs::rename(d.join("a/b1"), d.join("moved")).unwrap()
    });
    // A directory replaced by another one under the same name: its children were never named.
    s = step(d, &s, &["n1", "moved"], || {
        fs::remove_dir_all(d.join("n1")).unwrap();
        fs::rename(d.join("moved"), d.join("n1")).unwrap();
    });
    s = step(d, &s, &["other/keep"], || {
        support::chmod(&d.join("other/keep"), 0o755)
    });
    s = step(d, &s, &["a"], || {
        fs::remove_dir_all(d.join("a")).unwrap();
        write(&d.join("a"), "now a file");
    });
    s = step(d, &s, &["link"], || {
        std::os::unix::fs::symlink("n1", d.join("link")).unwrap()
    });
    s = step(d, &s, &[".gitignore"], || {
        write(&d.join(".gitignore"), "renamed\n")
    });
    assert!(
        s.tree().find(b"renamed").is_none(),
        "a new ignore rule applies at once"
    );
    s = step(d, &s, &["n1/.gitignore"], || {
        write(&d.join("n1/.gitignore"), "f*\n")
    });
    assert!(matches!(s.tree().find(b"n1"), Some(Node::Dir(dir)) if dir.entries.len() == 1));
    step(d, &s, &[], || {});
}

#[test]
fn an_unchanged_update_is_the_same_snapshot() {
    let t = tempfile::tempdir().unwrap();
    write(&t.path().join("x/y"), "y");
    let s = full(t.path());
    let mut changes = Changes::default();
    changes.add(b"x/y".to_vec());
    let (again, stats) = Scanner::new(t.path(), Filter::Ignore)
        .update(&s, &changes)
        .unwrap();
    assert_eq!(again.tree().id(), s.tree().id());
    assert_eq!(stats.hashed, 1, "a file named by an event is hashed again");
}

#[test]
fn a_directory_moved_away_and_replaced_by_a_link_to_it_is_a_link() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(&d.join("docs/sub/f"), "1");
    let s = full(d);
    // In one burst: an edit inside, the move, and a link where the directory was.
    let after = step(d, &s, &["docs/sub/f", "docs", "documentation"], || {
        write(&d.join("docs/sub/f"), "2");
        fs::rename(d.join("docs"), d.join("documentation")).unwrap();
        std::os::unix::fs::symlink("documentation", d.join("docs")).unwrap();
    });
    assert!(matches!(after.tree().find(b"docs"), Some(Node::Symlink(_))));
}

#[test]
fn a_repository_made_inside_the_project_brings_its_excludes_to_everything_below() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(&d.join("sub/deep/x"), "x");
    write(&d.join("sub/keep"), "k");
    let s = full(d);
    // The watcher sees `.git` appear in `sub`; nothing inside `.git` is watched.
    let after = step(d, &s, &["sub/.git"], || {
        write(&d.join("sub/.git/info/exclude"), "x\n");
    });
    assert!(after.tree().find(b"sub/deep/x").is_none());
    assert!(after.tree().find(b"sub/keep").is_some());
}
