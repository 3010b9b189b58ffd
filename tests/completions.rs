//! `srcstore completions` and `srcstore man`: made from the command-line definition, so they
//! know every command and option.

mod support;

use support::{stderr, Sandbox};

#[test]
fn completion_scripts_know_the_commands_and_their_options() {
    let sb = Sandbox::new();
    let bash = sb.ok(&["completions", "bash"]);
    assert!(bash.contains("complete -F _srcstore"), "{bash}");
    for word in ["mount", "service", "--allow-other", "--mount-arg"] {
        assert!(bash.contains(word), "bash script lacks {word}");
    }
    let zsh = sb.ok(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef srcstore"), "{zsh}");
    assert!(zsh.contains("mount"), "{zsh}");
    let fish = sb.ok(&["completions", "fish"]);
    assert!(fish.contains("complete -c srcstore"), "{fish}");
    assert!(fish.contains("mount"), "{fish}");
}

#[test]
fn an_unknown_shell_is_an_error() {
    let sb = Sandbox::new();
    let out = sb.run(&["completions", "tcsh"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert!(err.contains("tcsh") && err.contains("bash"), "{err}");
}

#[test]
fn man_prints_roff_pages_for_srcstore_and_each_command() {
    let sb = Sandbox::new();
    let page = sb.ok(&["man"]);
    assert!(page.starts_with('.'), "{page}");
    assert!(
        page.lines().any(|l| l.starts_with(".TH srcstore 1 ")),
        "{page}"
    );
    assert!(page.contains(".SH NAME"), "{page}");
    // Roff escapes `-`: the top page names every command's own page.
    for sub in ["hash", "mount", "path", "status", "watch", "nix", "service"] {
        assert!(
            page.contains(&format!("srcstore\\-{sub}(1)")),
            "{sub}: {page}"
        );
    }

    let mount = sb.ok(&["man", "mount"]);
    assert!(
        mount
            .lines()
            .any(|l| l.starts_with(".TH srcstore-mount 1 ")),
        "{mount}"
    );
    assert!(mount.contains("\\-\\-allow\\-other"), "{mount}");
    let nested = sb.ok(&["man", "service", "install"]);
    assert!(nested.contains("\\-\\-mount\\-arg"), "{nested}");

    let err = sb.fails(&["man", "service", "nope"]);
    assert!(
        err.contains("srcstore service has no command `nope`"),
        "{err}"
    );
}
