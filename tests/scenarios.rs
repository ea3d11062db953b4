//! Fault scenarios end to end: the daemon watches a namespace network with
//! one injected fault, and the matching diagnosis must reach a webhook
//! receiver within 15 s of the traffic starting; the healthy scenario must
//! deliver nothing. Needs root; skips without it, except under CI=true.

use std::{
    net::SocketAddr,
    sync::{mpsc, Mutex},
    time::{Duration, Instant},
};

use phalanx_lab::{http_get, privileged, scenario::Scenario, Proc, WebhookReceiver};

/// Scenarios run one at a time: each loads programs and drives real traffic.
static SERIAL: Mutex<()> = Mutex::new(());
const API: &str = "127.0.0.1:19760";
const HOOK_PORT: u16 = 19761;
const WITHIN: Duration = Duration::from_secs(15);

/// Runs `name` and returns the alert names delivered within [`WITHIN`] of the traffic start.
fn delivered(name: &str) -> Vec<String> {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scenario::new(name).expect("scenario");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("phalanx.toml");
    std::fs::write(
        &cfg,
        format!(
            "[http]\nlisten = \"{API}\"\n[incidents]\nevidence_dir = {:?}\nspool_dir = {:?}\n\
             [[webhooks]]\nurl = \"http://127.0.0.1:{HOOK_PORT}/hook\"\n",
            dir.path().join("evidence"),
            dir.path().join("spool")
        ),
    )
    .expect("config");
    let (tx, rx) = mpsc::channel();
    let receiver = WebhookReceiver::start(s.watch().ns, HOOK_PORT, tx).expect("webhook receiver");
    let watch = s.watch();
    let mut cmd = watch.ns.command(env!("CARGO_BIN_EXE_phalanx"));
    cmd.arg("run").arg("--config").arg(&cfg);
    for i in &watch.interfaces {
        cmd.args(["--iface", i]);
    }
    let daemon = Proc::new(
        cmd.env("PHALANX_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn phalanx"),
    );
    let api: SocketAddr = API.parse().expect("addr");
    let up = Instant::now() + Duration::from_secs(30);
    while !watch
        .ns
        .run(move || http_get(api, "/healthz").is_ok())
        .unwrap_or(false)
    {
        assert!(Instant::now() < up, "{name}: daemon came up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let start = Instant::now();
    let traffic = std::thread::scope(|sc| {
        let t = sc.spawn(|| s.drive(WITHIN));
        let mut names = Vec::new();
        while start.elapsed() < WITHIN {
            if let Ok(body) = rx.recv_timeout(Duration::from_millis(200)) {
                let v: serde_json::Value = serde_json::from_str(&body).expect("webhook JSON");
                for a in v["alerts"].as_array().into_iter().flatten() {
                    if a["status"] == "firing" {
                        names.push(a["labels"]["alertname"].as_str().unwrap_or("?").to_string());
                    }
                }
            }
        }
        (t.join().expect("traffic"), names)
    });
    drop(receiver);
    let out = daemon.stop(Duration::from_secs(10)).expect("daemon output");
    assert!(out.status.success(), "{name}: clean daemon exit");
    let (traffic, names) = traffic;
    eprintln!(
        "{name}: traffic {:?}; delivered {names:?}",
        traffic.expect("traffic driver")
    );
    names
}

fn expect_fault(name: &str, rule: &str) {
    if !privileged(name) {
        return;
    }
    let names = delivered(name);
    assert!(
        names.iter().any(|n| n == rule),
        "{name}: {rule} delivered within 15 s, got {names:?}"
    );
}

#[test]
fn healthy_fires_nothing() {
    if !privileged("healthy_fires_nothing") {
        return;
    }
    assert_eq!(
        delivered("healthy"),
        Vec::<String>::new(),
        "healthy: no incident"
    );
}

#[test]
fn pmtud_blackhole_fires() {
    expect_fault("pmtud-blackhole", "pmtud_blackhole");
}

#[test]
fn syn_blackhole_fires() {
    expect_fault("syn-blackhole", "syn_unanswered");
}

#[test]
fn congestion_fires() {
    expect_fault("congestion", "congestion");
}

#[test]
fn lossy_link_fires() {
    expect_fault("lossy-link", "retransmission_storm");
}

#[test]
fn asymmetric_path_fires() {
    expect_fault("asymmetric", "asymmetric_path");
}
