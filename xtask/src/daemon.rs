//! A `phalanx run` process inside a lab namespace, for demo, lab and bench.

use std::{
    net::SocketAddr,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use phalanx_lab::{http_get, Netns, Proc};

/// A running daemon; stopped (SIGTERM, programs detached) on `stop` or drop.
pub struct Daemon<'a> {
    ns: &'a Netns,
    api: SocketAddr,
    proc: Proc,
}

/// How to start a daemon.
pub struct Options<'p> {
    /// Interfaces to attach to.
    pub interfaces: Vec<&'p str>,
    /// `tcx` or `xdp`.
    pub mode: &'p str,
    /// Configuration file, if any.
    pub config: Option<&'p Path>,
    /// API address inside the namespace.
    pub listen: &'p str,
    /// PHALANX_LOG filter.
    pub log: &'p str,
}

impl<'a> Daemon<'a> {
    /// Starts `phalanx run` in `ns` and waits until /healthz answers.
    pub fn start(ns: &'a Netns, phalanx: &Path, o: &Options<'_>) -> Result<Self> {
        let mut cmd = ns.command(&phalanx.display().to_string());
        cmd.args(["run", "--mode", o.mode, "--listen", o.listen]);
        for i in &o.interfaces {
            cmd.args(["--iface", i]);
        }
        if let Some(c) = o.config {
            cmd.arg("--config").arg(c);
        }
        let proc = Proc::new(
            cmd.env("PHALANX_LOG", o.log)
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting {}", phalanx.display()))?,
        );
        let api: SocketAddr = o.listen.parse().context("API address")?;
        let daemon = Daemon { ns, api, proc };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if daemon
                .get("/healthz")
                .is_ok_and(|(status, _)| status.contains("200"))
            {
                return Ok(daemon);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("phalanx did not answer /healthz within 30 s")
    }

    /// GET a path of the daemon's API: (status line, body).
    pub fn get(&self, path: &'static str) -> Result<(String, Vec<u8>)> {
        let api = self.api;
        Ok(self.ns.run(move || http_get(api, path))??)
    }

    /// GET a path and return the body as text.
    pub fn text(&self, path: &'static str) -> Result<String> {
        let (_, body) = self.get(path)?;
        Ok(String::from_utf8_lossy(&body).to_string())
    }

    /// SIGTERM and wait for the exit (programs detached).
    pub fn stop(self) {
        drop(self.proc.stop(Duration::from_secs(10)));
    }
}
