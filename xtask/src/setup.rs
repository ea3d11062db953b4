//! Idempotent installation of the build and test toolchain.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// Nightly used for the kernel crate; its LLVM (22) must match bpf-linker's.
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages: LLVM 22 for bpf-linker, and the tools tests and the lab use.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "iproute2",
    "nftables",
    "ethtool",
    "tcpdump",
    "tshark",
    "bpftool",
    "iperf3",
    "tcptrace",
    "linux-perf",
    "time",
    "prometheus",
    "prometheus-alertmanager",
    // systemd-analyze checks the example unit (systemd need not be PID 1).
    "systemd",
    // Test certificates for the API's TLS.
    "openssl",
];

fn exec(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("spawning {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn missing_packages() -> Vec<&'static str> {
    APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output();
            !out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect()
}

fn nightly_ready() -> bool {
    let out = Command::new("rustup")
        .args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ])
        .output();
    out.is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("rust-src"))
}

fn bpf_linker_ready() -> bool {
    succeeds(Command::new("bpf-linker").arg("--version"))
}

/// Whether everything `setup` installs is present.
pub fn ready() -> bool {
    missing_packages().is_empty() && nightly_ready() && bpf_linker_ready()
}

/// Installs what is missing; a no-op when everything is there.
pub fn run_setup() -> Result<()> {
    let missing = missing_packages();
    if !missing.is_empty() {
        eprintln!("setup: installing Debian packages: {}", missing.join(" "));
        exec(Command::new("apt-get").arg("update").arg("-q"))?;
        exec(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing),
        )?;
    }
    if !nightly_ready() {
        eprintln!("setup: installing {EBPF_TOOLCHAIN} with rust-src");
        exec(Command::new("rustup").args([
            "toolchain",
            "install",
            EBPF_TOOLCHAIN,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    if !bpf_linker_ready() {
        eprintln!(
            "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)"
        );
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        exec(
            Command::new("cargo")
                .env("PATH", path)
                .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22")
                .args([
                    "install",
                    "bpf-linker",
                    "--locked",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ]),
        )?;
    }
    eprintln!("setup: toolchain ready");
    Ok(())
}

/// Builds the daemon in release mode (build.rs compiles the kernel programs).
pub fn build_release() -> Result<()> {
    if !(nightly_ready() && bpf_linker_ready()) {
        run_setup()?;
    }
    exec(Command::new(env!("CARGO")).args(["build", "--release", "-p", "phalanx-daemon"]))
}

/// `cargo xtask test`: setup when needed, then the whole test suite.
pub fn test(extra: &[String]) -> Result<()> {
    if !ready() {
        run_setup()?;
    }
    exec(
        Command::new(env!("CARGO"))
            .arg("test")
            .arg("--workspace")
            .arg("--exclude")
            .arg("phalanx-ebpf")
            // Test support (synthetic captures) is a feature, so the
            // release binary does not carry it.
            .args(["--features", "phalanx-daemon/synth"])
            .args(extra),
    )
}
