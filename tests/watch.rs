//! `srcstore watch`: one run per burst, exactly one more for saves during a run, --restart,
//! and a clean stop on Ctrl-C.

mod support;

use std::fs;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use support::{wait_for, write, NixBuild, Sandbox};

fn watch(sb: &Sandbox, project: &std::path::Path, extra: &[&str], command: &[&str]) -> Child {
    let mut c = sb.cmd();
    c.arg("watch")
        .args(extra)
        .arg(project)
        .arg("--")
        .args(command);
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn lines(path: &std::path::Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn interrupt(child: Child) -> (std::process::ExitStatus, String) {
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status, support::stderr(&out))
}

#[test]
fn a_burst_runs_once_and_saves_during_a_run_queue_exactly_one_more() {
    let sb = Sandbox::new();
    let p = sb.path("proj");
    write(&p.join("f"), "0\n");
    let nix = NixBuild::new(&sb, "w", "cat $src/f > $out; sleep 1");
    let log = sb.path("runs");
    let starts = sb.path("starts");
    let script = format!(
        "echo {{}} >> {}; nix-build --no-out-link --option pre-build-hook {} {} --argstr src {{}} | xargs cat >> {}",
        starts.display(),
        nix.hook.display(),
        nix.expr.display(),
        log.display()
    );
    let child = watch(&sb, &p, &[], &["sh", "-c", &script]);
    wait_for("the first run", || lines(&log) == ["0"]);

    for v in ["1\n", "2\n", "3\n"] {
        write(&p.join("f"), v);
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_for("the burst's run", || lines(&log).len() == 2);
    assert_eq!(
        lines(&log),
        ["0", "3"],
        "a burst of three saves is one run of the last"
    );

    // Two saves during one run: exactly one more run, of the newest content.
    write(&p.join("f"), "4\n");
    wait_for("the run of the first save to start", || {
        lines(&starts).len() == 3
    });
    write(&p.join("f"), "5\n");
    // The run of 4 may fail: 5 overwrote the bytes its snapshot names, and reading them is
    // an error, never 5's bytes. What counts is the runs started.
    wait_for("the queued run", || {
        lines(&log).last().map(String::as_str) == Some("5")
    });
    std::thread::sleep(Duration::from_millis(2500));
    let runs = lines(&starts);
    assert_eq!(
        runs.len(),
        4,
        "exactly one run queued behind the running one: {runs:?}"
    );
    assert_eq!(lines(&log).last().map(String::as_str), Some("5"));

    let (status, stderr) = interrupt(child);
    assert!(status.success(), "{stderr}");
    let summaries: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("srcstore watch: run "))
        .collect();
    assert_eq!(summaries.len(), runs.len(), "{stderr}");
    assert!(
        summaries.iter().all(|l| l.contains(" s, exit 0")),
        "{stderr}"
    );
}

#[test]
fn restart_kills_the_running_command_and_starts_over() {
    let sb = Sandbox::new();
    let p = sb.path("proj");
    write(&p.join("f"), "a");
    let log = sb.path("runs");
    let pids = sb.path("pids");
    // Each run says which snapshot it finished; a run left alive finishes within 2 s.
    let script = format!(
        "echo $$ >> {pids}; cat {{}}/f >> {log}; echo >> {log}; sleep 2; echo finished-$(cat {{}}/f) >> {log}",
        pids = pids.display(),
        log = log.display()
    );
    let child = watch(&sb, &p, &["--restart"], &["sh", "-c", &script]);
    wait_for("the first run", || lines(&log) == ["a"]);
    write(&p.join("f"), "b");
    wait_for("the restarted run", || {
        lines(&log).starts_with(&["a".into(), "b".into()])
    });
    let first = lines(&pids)[0].clone();
    std::thread::sleep(Duration::from_secs(3));
    let (status, stderr) = interrupt(child);
    assert!(status.success());
    assert!(stderr.contains("restarted"), "{stderr}");
    assert!(
        !lines(&log).contains(&"finished-a".to_string()),
        "a killed run went on: {:?}",
        lines(&log)
    );
    assert!(
        !Path::new(&format!("/proc/{first}")).exists(),
        "the first run (pid {first}) is still alive"
    );
}

#[test]
fn ctrl_c_stops_the_run_and_the_loop_and_the_daemon_it_started() {
    let sb = Sandbox::new();
    let p = sb.path("proj");
    write(&p.join("f"), "x");
    let marker = sb.path("started");
    let script = format!("touch {}; sleep 30", marker.display());
    let child = watch(&sb, &p, &[], &["sh", "-c", &script]);
    wait_for("the run", || marker.exists());
    let (status, stderr) = interrupt(child);
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("killed by signal") || stderr.contains("exit"),
        "{stderr}"
    );
    let err = sb.fails(&["path", p.to_str().unwrap()]);
    assert!(
        err.contains("srcstore mount"),
        "the in-process daemon outlived the watch: {err}"
    );
    let pgrep = std::process::Command::new("pgrep")
        .args(["-f", &script])
        .output()
        .unwrap();
    assert!(pgrep.stdout.is_empty(), "the command outlived the watch");
}

#[test]
fn watch_uses_a_daemon_that_is_already_running() {
    let sb = Sandbox::new();
    let p = sb.path("proj");
    write(&p.join("f"), "x");
    let d = support::Daemon::start(&sb, &p, &[]);
    let log = sb.path("runs");
    let child = watch(
        &sb,
        &p,
        &[],
        &["sh", "-c", &format!("echo {{}} >> {}", log.display())],
    );
    wait_for("the run", || !lines(&log).is_empty());
    assert_eq!(lines(&log), [d.path(&sb).to_str().unwrap()]);
    let (status, _) = interrupt(child);
    assert!(status.success());
    assert!(
        d.path(&sb).exists(),
        "stopping the watch stopped a daemon it did not start"
    );
}
