//! `cargo xtask setup | build-ebpf | test | layers | demo | lab | bench | corpus`.
//!
//! xtask depends on nothing that needs the kernel toolchain, so `setup` runs
//! on a machine that has only stable Rust.

mod bench;
mod corpus;
mod daemon;
mod demo;
mod lab;
mod layers;
mod setup;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Developer tasks for Phalanx.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent): Debian packages,
    /// the pinned nightly with rust-src, bpf-linker for LLVM 22.
    Setup,
    /// Build the kernel programs and the daemon (release).
    BuildEbpf,
    /// Set up what is missing, then run every test. As root the privileged
    /// tests (namespaces, veth, real programs) run for real; under CI=true
    /// they fail rather than skip without root.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Check that the daemon's modules import only downwards (the layer
    /// order in xtask/src/layers.rs) and without loops; `test` runs it first.
    Layers {
        /// Print the graph of imports between top-level modules.
        #[arg(long)]
        graph: bool,
    },
    /// Measure Phalanx beside the tools users would pick instead; writes
    /// bench/RESULTS.md. Needs root.
    Bench {
        /// Short runs for CI smoke tests (under 3 minutes).
        #[arg(long)]
        quick: bool,
        /// Run only these sections (live, profile, kernel, ring, offline, engine, stitch, accuracy);
        /// the table is printed but bench/RESULTS.md is left alone.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Analyse every capture in DIRs (default: the vendored test captures)
    /// with phalanx and tshark and write the side-by-side table to
    /// bench/CORPUS.md. Needs tshark.
    Corpus {
        /// Folders of pcap/pcapng files (searched recursively).
        #[arg(value_name = "DIR")]
        dirs: Vec<std::path::PathBuf>,
    },
    /// Run a fault scenario (client - router - server namespaces) with the
    /// daemon watching, and print what it saw. Needs root. `--list` names them.
    Lab {
        /// Scenario name (see --list).
        #[arg(required_unless_present = "list")]
        name: Option<String>,
        /// Seconds of traffic.
        #[arg(long, default_value_t = 15)]
        seconds: u64,
        /// List the scenarios.
        #[arg(long)]
        list: bool,
    },
    /// Build, start a two-namespace lab, run the daemon on it, drive HTTP
    /// traffic, print what the daemon saw, tear down. Needs root.
    Demo {
        /// HTTP requests to send.
        #[arg(long, default_value_t = 20)]
        requests: u32,
        /// Response body size in bytes.
        #[arg(long, default_value_t = 256 * 1024)]
        body_bytes: usize,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::run_setup(),
        Cmd::BuildEbpf => setup::build_release(),
        Cmd::Test { args } => {
            layers::run(&demo::workspace_root(), false)?;
            setup::test(&args)
        }
        Cmd::Layers { graph } => layers::run(&demo::workspace_root(), graph),
        Cmd::Demo {
            requests,
            body_bytes,
        } => demo::run(requests, body_bytes),
        Cmd::Lab { list: true, .. } => {
            lab::list();
            Ok(())
        }
        Cmd::Lab { name, seconds, .. } => lab::run(name.as_deref().unwrap_or_default(), seconds),
        Cmd::Bench { quick, only } => bench::run(quick, &only, &demo::workspace_root()),
        Cmd::Corpus { dirs } => corpus::run(&dirs),
    }
}
