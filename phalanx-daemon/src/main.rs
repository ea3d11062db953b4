//! The `phalanx` binary: parses the command line and hands over to the library.

use anyhow::Result;
use clap::Parser as _;
use phalanx_daemon::{
    cli::{Cli, Command},
    config::Config,
};
use tracing_subscriber::EnvFilter;

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(phalanx_daemon::daemon::run(args)),
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
