//! The `phalanx` binary: parses the command line and hands over to the library.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser as _;
use phalanx_daemon::{
    cli::{Cli, Command},
    config::Config,
};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Colours only for a person at a terminal: journald and files get
    // plain text.
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The causes on one line, never a backtrace (RUST_BACKTRACE
            // is for developers, not for an operator's terminal).
            eprintln!("error: {}", one_line(&e));
            match e.downcast_ref::<phalanx_daemon::analyze::InputsDamaged>() {
                Some(_) => ExitCode::from(phalanx_daemon::analyze::InputsDamaged::EXIT_CODE),
                None => ExitCode::FAILURE,
            }
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Run(args) => {
            // Two malloc arenas, not eight per core: threads that build API
            // pages would each keep their own arena's freed memory.
            // SAFETY: mallopt only sets an allocator parameter.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                // Blocking work (API pages, rule scans, evidence and state
                // writes) eight at a time: the rest queue, so the pages in
                // flight, and the allocator arenas of their threads, are bounded.
                .max_blocking_threads(8)
                .enable_all()
                .build()?
                .block_on(phalanx_daemon::daemon::run(args))
        }
        Command::Analyze(args) => {
            let cfg = match &args.config {
                Some(p) => Config::load(p)?,
                None => Config::default(),
            };
            phalanx_daemon::analyze::run(&args, &cfg)
        }
        Command::Stitch(args) => phalanx_daemon::stitch::run(&args),
    }
}

/// The error and its causes, `: `-separated, leaving out a cause whose
/// text the message already carries (many errors print their source).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
