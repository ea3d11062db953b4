//! `cargo xtask demo`: the daemon on a real (namespaced) network, end to end.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use phalanx_lab::{http_get, Proc, TwoHosts};

const API: &str = "127.0.0.1:9740";
const HTTP_PORT: u16 = 8080;

/// The repository root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
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
    let phalanx = workspace_root().join("target/release/phalanx");

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
    let daemon = Proc::new(
        lab.a
            .command(&phalanx.display().to_string())
            .args(["run", "--iface", &lab.a_if, "--listen", API])
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", phalanx.display()))?,
    );
    let api: SocketAddr = API.parse()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = lab
            .a
            .run(move || http_get(api, "/healthz").is_ok_and(|(s, _)| s.contains("200")))?;
        if up {
            break;
        }
        if Instant::now() > deadline {
            bail!("the daemon did not answer /healthz within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

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

    let (_, flows) = lab.a.run(move || http_get(api, "/api/v1/flows"))??;
    let (_, metrics) = lab.a.run(move || http_get(api, "/metrics"))??;
    print_flows(&flows)?;
    println!("\nCapture metrics (/metrics):");
    for line in String::from_utf8_lossy(&metrics).lines() {
        if line.starts_with("phalanx_") {
            println!("  {line}");
        }
    }
    println!("\nThe client received {fetched} body bytes in {requests} responses.");
    drop(daemon.stop(Duration::from_secs(10)));
    eprintln!("demo: daemon stopped (programs detached); removing the lab");
    drop(lab);
    Ok(())
}

fn print_flows(body: &[u8]) -> Result<()> {
    let v: serde_json::Value = serde_json::from_slice(body).context("parsing /api/v1/flows")?;
    let flows = v["flows"].as_array().cloned().unwrap_or_default();
    println!(
        "\nFlows seen by the daemon (/api/v1/flows): {}",
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
