//! A `phalanx run` process inside a lab namespace, for demo, lab and bench.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use phalanx_lab::{http_get, Netns, Proc};

/// A running daemon; stopped (SIGTERM, programs detached) on `stop` or drop.
pub struct Daemon<'a> {
    ns: &'a Netns,
    api: SocketAddr,
    proc: Proc,
    /// Config, evidence and spool of this run; removed with the daemon.
    state: StateDir,
}

/// A temporary state directory, removed on drop.
struct StateDir(PathBuf);

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
        // Evidence and spool go to a directory of this run, not /var/lib.
        static RUN: AtomicU32 = AtomicU32::new(0);
        let state = StateDir(std::env::temp_dir().join(format!(
            "phalanx-xtask-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        )));
        std::fs::create_dir_all(&state.0).context("state directory")?;
        let mut text = match o.config {
            Some(c) => {
                std::fs::read_to_string(c).with_context(|| format!("reading {}", c.display()))?
            }
            None => String::new(),
        };
        text.push_str(&format!(
            "\n[incidents]\nevidence_dir = {:?}\nspool_dir = {:?}\n",
            state.0.join("evidence"),
            state.0.join("spool")
        ));
        let config = state.0.join("phalanx.toml");
        std::fs::write(&config, text).context("writing the run's config")?;
        let mut cmd = ns.command(&phalanx.display().to_string());
        cmd.args(["run", "--mode", o.mode, "--listen", o.listen, "--config"]);
        cmd.arg(&config);
        for i in &o.interfaces {
            cmd.args(["--iface", i]);
        }
        let proc = Proc::new(
            cmd.env("PHALANX_LOG", o.log)
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting {}", phalanx.display()))?,
        );
        let api: SocketAddr = o.listen.parse().context("API address")?;
        let daemon = Daemon {
            ns,
            api,
            proc,
            state,
        };
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

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.proc.id()
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
        drop(self.state);
    }
}
