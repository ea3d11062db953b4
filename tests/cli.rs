//! The `phalanx` binary's error messages: every bad input says what is wrong
//! and where, before anything touches the kernel.

use std::process::{Command, Output};

fn phalanx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .args(args)
        .env("PHALANX_LOG", "error")
        .output()
        .expect("run phalanx")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn unknown_config_key_names_key_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("p.toml");
    std::fs::write(
        &cfg,
        "[capture]\ninterfaces = [\"lo\"]\nring_buffer = 4096\n",
    )
    .expect("write");
    let o = phalanx(&["run", "--config", cfg.to_str().expect("utf8")]);
    assert!(!o.status.success(), "bad config must fail");
    let e = stderr(&o);
    assert!(
        e.contains("ring_buffer") && e.contains("line 3"),
        "names key and line: {e}"
    );
}

#[test]
fn missing_config_file_is_reported() {
    let o = phalanx(&[
        "run",
        "--config",
        "/nonexistent/phalanx.toml",
        "--iface",
        "lo",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/nonexistent/phalanx.toml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn missing_interface_is_reported() {
    let o = phalanx(&["run", "--iface", "nosuchif0"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("nosuchif0") && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn no_interface_is_reported() {
    let o = phalanx(&["run"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--iface"), "{}", stderr(&o));
}

#[test]
fn not_root_is_reported() {
    // As root, drop to nobody to see the message an unprivileged user gets.
    // SAFETY: geteuid has no preconditions.
    let o = if unsafe { libc::geteuid() } == 0 {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                env!("CARGO_BIN_EXE_phalanx"),
                "run",
                "--iface",
                "lo",
            ])
            .env("PHALANX_LOG", "error")
            .output()
            .expect("setpriv")
    } else {
        phalanx(&["run", "--iface", "lo"])
    };
    assert!(!o.status.success());
    assert!(stderr(&o).contains("needs root"), "{}", stderr(&o));
}

#[test]
fn analyze_reports_unreadable_files() {
    let o = phalanx(&["analyze", "/nonexistent/capture.pcap"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/nonexistent/capture.pcap"),
        "{}",
        stderr(&o)
    );
}
