//! The seven reference trees, with the values real Nix 2.8 printed for them.

mod support;

use std::process::Command;

use srcstore::{nar, nixhash, Filter, Scanner};
use support::shared;

#[test]
fn every_reference_tree_matches_what_nix_printed() {
    let trees = tempfile::tempdir().unwrap();
    let made = Command::new("sh")
        .arg(shared().join("nix-vectors/make-trees.sh"))
        .arg(trees.path())
        .output()
        .unwrap();
    assert!(made.status.success());
    let expected = std::fs::read_to_string(shared().join("nix-vectors/expected.tsv")).unwrap();
    let mut lines = expected.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let mut checked = 0;
    for line in lines {
        let row: Vec<&str> = line.split('\t').collect();
        let case = row[col("case")];
        // Each case's tree is `<case>/source`; scan the case dir, then take `source` itself,
        // which may be a file or a symlink as well as a directory.
        let parent = Scanner::new(trees.path().join(case), Filter::All)
            .scan()
            .unwrap();
        let snap = parent.subtree(b"source", None).unwrap().unwrap();
        let info = nar::nar_info(&snap).unwrap();
        assert_eq!(
            nixhash::base32(&info.sha256),
            row[col("nar_sha256_base32")],
            "{case}"
        );
        assert_eq!(
            nixhash::hex(&info.sha256),
            row[col("nar_sha256_base16")],
            "{case}"
        );
        assert_eq!(info.size.to_string(), row[col("nar_size")], "{case}");
        assert_eq!(
            nixhash::source_store_path("/nix/store", &info.sha256, snap.name()),
            row[col("store_path")],
            "{case}"
        );
        checked += 1;
    }
    assert_eq!(checked, 7);
}

#[test]
fn the_cli_prints_the_reference_values_for_a_directory() {
    let sb = support::Sandbox::new();
    Command::new("sh")
        .arg(shared().join("nix-vectors/make-trees.sh"))
        .arg(sb.path("t"))
        .output()
        .unwrap();
    let dir = sb.path("t/nested/source");
    let out = sb.ok(&["hash", "--nix", "--no-ignore", dir.to_str().unwrap()]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[0].ends_with("-source") && lines[0].len() == 32 + 7,
        "{out}"
    );
    assert_eq!(
        lines[1],
        "nar_hash sha256:13qad89kmcd684q1nnjl9cgg1r6w2krkswa7wl3vj6blcjq540ws"
    );
    assert_eq!(lines[2], "nar_size 2328");
    assert_eq!(
        lines[3],
        "store_path /nix/store/ri77m65q0jkgd4jw7l2pbw8c3bd1fyc5-source"
    );
    let j = sb.json(&["--nix", "--no-ignore", dir.to_str().unwrap()]);
    assert_eq!(j["basename"], lines[0]);
    assert_eq!(
        j["store_path"],
        "/nix/store/ri77m65q0jkgd4jw7l2pbw8c3bd1fyc5-source"
    );
    assert_eq!(j["nar_size"], 2328);
    assert_eq!(j["files"], 6);
}
