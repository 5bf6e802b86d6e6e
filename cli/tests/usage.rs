//! replctl as a process: exit codes and the messages an operator sees before any node answers.

use std::process::Command;

fn replctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_replctl"))
        .args(args)
        .env("REPLCTL_CONFIG", "/nonexistent/replctl.toml")
        .output()
        .expect("run replctl")
}

#[test]
fn usage_errors_exit_2_and_name_the_bad_argument() {
    let out = replctl(&["ls", "no/../good"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = replctl(&["ls", "-bad-pfs-name"]);
    assert_eq!(out.status.code(), Some(2));
    let out = replctl(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_exits_0_and_lists_the_commands() {
    let out = replctl(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["pfs", "import", "export", "snapshot", "ls"] {
        assert!(help.contains(cmd), "--help lists {cmd}");
    }
}

#[test]
fn a_missing_node_exits_1_and_says_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("admin.sock");
    let out = replctl(&["--socket", socket.to_str().expect("utf-8"), "pfs", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin.sock") && err.contains("repld"), "{err}");
}
