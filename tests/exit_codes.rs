//! Exit codes a script can tell apart: 1 an error, 2 usage, 3 no daemon, 4 refused.

mod support;

use support::{write, Daemon, Sandbox};

fn code(out: &std::process::Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

#[test]
fn each_kind_of_failure_has_its_own_exit_code() {
    let sb = Sandbox::new();
    let p = sb.path("proj");
    write(&p.join("f"), "x");

    let missing = sb.path("missing");
    assert_eq!(
        code(&sb.run(&["hash", missing.to_str().unwrap()])),
        1,
        "an I/O error"
    );
    assert_eq!(code(&sb.run(&["hash", "--no-such-flag"])), 2, "usage");
    assert_eq!(
        code(&sb.run(&["path", p.to_str().unwrap()])),
        3,
        "no daemon"
    );

    let _d = Daemon::start(&sb, &p, &[]);
    let out = sb.run(&["path", "--sub", "no/such/dir", p.to_str().unwrap()]);
    assert_eq!(
        code(&out),
        4,
        "refused by the daemon: {}",
        support::stderr(&out)
    );
    let out = sb.mount_once(&sb.path("mnt2"), &p);
    assert_eq!(code(&out), 4, "already served: {}", support::stderr(&out));
}
