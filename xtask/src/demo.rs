//! `cargo xtask demo`: the daemon on a real (namespaced) network, end to end.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use phalanx_lab::{http_get, TwoHosts};

use crate::daemon::{Daemon, Options};

const API: &str = "127.0.0.1:9740";
const HTTP_PORT: u16 = 8080;
/// Flows printed at most.
const SHOWN: usize = 20;

/// The repository root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The release `phalanx` binary, honouring `CARGO_TARGET_DIR` like the
/// `cargo build` that made it.
pub fn release_binary() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
        .join("release/phalanx")
}

/// Serves `count` GET requests with a body of `body_bytes`, then returns.
fn serve(listener: TcpListener, count: u32, body_bytes: usize) {
    let body = vec![b'x'; body_bytes];
    for _ in 0..count {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        // Read the whole request head before answering, then close our side
        // and drain, so connections end with FINs rather than resets.
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let _ = write!(s, "HTTP/1.0 200 OK\r\nContent-Length: {body_bytes}\r\n\r\n");
        let _ = s.write_all(&body);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let _ = s.read_to_end(&mut req);
    }
}

pub fn run(requests: u32, body_bytes: usize) -> Result<()> {
    if !is_root() {
        bail!("the demo creates network namespaces and loads eBPF programs: run it as root");
    }
    if !crate::setup::ready() {
        crate::setup::run_setup()?;
    }
    crate::setup::build_release()?;
    let phalanx = release_binary();

    eprintln!("demo: creating lab: client namespace -- veth -- server namespace");
    let lab = TwoHosts::new("demo").context("creating the lab")?;
    let server_addr = SocketAddr::new(lab.v4(2).into(), HTTP_PORT);
    let listener = lab
        .b
        .run(move || TcpListener::bind(server_addr))
        .context("entering server namespace")?
        .context("binding the HTTP server")?;
    let server = std::thread::spawn(move || serve(listener, requests, body_bytes));

    eprintln!(
        "demo: starting `phalanx run --iface {}` in the client namespace",
        lab.a_if
    );
    let daemon = Daemon::start(
        &lab.a,
        &phalanx,
        &Options {
            interfaces: vec![&lab.a_if],
            mode: "tcx",
            config: None,
            listen: API,
            log: "info",
        },
    )?;

    eprintln!(
        "demo: {requests} HTTP GETs of {body_bytes} bytes from {} to {server_addr}",
        lab.v4(1)
    );
    let fetched = lab.a.run(move || {
        let mut total = 0usize;
        for _ in 0..requests {
            match http_get(server_addr, "/") {
                Ok((status, body)) if status.contains("200") => total += body.len(),
                Ok((status, _)) => eprintln!("demo: unexpected status {status}"),
                Err(e) => eprintln!("demo: request failed: {e}"),
            }
        }
        total
    })?;
    let _ = server.join();
    std::thread::sleep(Duration::from_millis(300));

    let (_, flows) = daemon.get("/api/v1/flows")?;
    let (_, metrics) = daemon.get("/metrics")?;
    print_flows(&flows)?;
    println!("\nCapture metrics (/metrics):");
    for line in String::from_utf8_lossy(&metrics).lines() {
        if line.starts_with("phalanx_") {
            println!("  {line}");
        }
    }
    println!("\nThe client received {fetched} body bytes in {requests} responses.");
    daemon.stop();
    eprintln!("demo: daemon stopped (programs detached); removing the lab");
    drop(lab);
    Ok(())
}

/// Prints the flow table of an /api/v1/flows body.
pub fn print_flows(body: &[u8]) -> Result<()> {
    let v: serde_json::Value = serde_json::from_slice(body).context("parsing /api/v1/flows")?;
    let mut flows = v["flows"].as_array().cloned().unwrap_or_default();
    let total = flows.len();
    // Worst first: retransmissions, then packets.
    let key = |f: &serde_json::Value| {
        (
            f["retransmissions"].as_u64().unwrap_or(0),
            f["packets"].as_u64().unwrap_or(0),
        )
    };
    flows.sort_by_key(|f| std::cmp::Reverse(key(f)));
    flows.truncate(SHOWN);
    println!(
        "\nFlows seen by the daemon (/api/v1/flows): {total}; {} shown, most retransmissions first",
        flows.len()
    );
    println!(
        "  {:<22} {:<22} {:>7} {:>9} {:>8} {:>8} {:>7}",
        "client", "server", "packets", "bytes", "rtt ms", "retrans", "state"
    );
    for f in flows {
        let ep = |a: &str, p: &str| format!("{}:{}", f[a].as_str().unwrap_or("?"), f[p]);
        println!(
            "  {:<22} {:<22} {:>7} {:>9} {:>8} {:>8} {:>7}",
            ep("src", "sport"),
            ep("dst", "dport"),
            f["packets"],
            f["bytes"],
            f["rtt"]["avg_ms"]
                .as_f64()
                .map_or("-".into(), |x| format!("{x:.3}")),
            f["retransmissions"],
            f["state"].as_str().unwrap_or("-"),
        );
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
