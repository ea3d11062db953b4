//! Flow KPIs through a real Prometheus. Client — router — server
//! namespaces; the router drops a random 1 % of the client's data
//! segments; the daemon runs on the server
//! with a `[[metrics.groups]]` entry for the transfer's port, and Debian's
//! `prometheus` scrapes it every second inside the server namespace.
//!
//! Ground truth: a tcpdump at the daemon's interface (packets and frame
//! bytes per direction, counted by tshark), the daemon's own per-flow
//! figures in `/api/v1/flows` (retransmissions, RTT samples with their
//! exact minimum, mean and maximum). `promtool check metrics` must
//! find nothing to complain about in `/metrics`.
//! Needs root; skips without it, except under CI=true.

use std::{
    collections::HashMap,
    io::Write as _,
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use phalanx_daemon::metrics::kpi::RTT_BUCKETS;
use phalanx_lab::{http_get, privileged, upload, Proc, Routed};

const BYTES: usize = 4 * 1024 * 1024;
const API: &str = "127.0.0.1:19770";
/// The `read` token Prometheus scrapes with (`http.token_file`).
const SCRAPE_TOKEN: &str = "prometheus-scrape-0123456789";
const PROM: &str = "127.0.0.1:19771";

/// Value of the sample `name{...}` carrying every label of `want`.
fn sample(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix('{')?;
        let (labels, value) = rest.split_once("} ")?;
        want.iter()
            .all(|(k, v)| labels.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.split_whitespace().next()?.parse().ok())?
    })
}

/// Packets and frame bytes per source address in a capture, by tshark.
fn tshark_counts(file: &std::path::Path) -> HashMap<String, (u64, u64)> {
    let out = Command::new("tshark")
        .args(["-r"])
        .arg(file)
        .args(["-T", "fields", "-e", "ip.src", "-e", "frame.len"])
        .output()
        .expect("tshark");
    assert!(out.status.success(), "tshark: {:?}", out);
    let mut m: HashMap<String, (u64, u64)> = HashMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let mut it = l.split('\t');
        let (Some(src), Some(len)) = (it.next(), it.next()) else {
            continue;
        };
        let e = m.entry(src.to_string()).or_default();
        e.0 += 1;
        e.1 += len.trim().parse::<u64>().expect("frame.len");
    }
    m
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One instant-vector value from Prometheus' query API (None: no result yet).
fn prom_query(lab: &Routed, q: &str) -> Option<f64> {
    let addr: SocketAddr = PROM.parse().expect("addr");
    let path = format!("/api/v1/query?query={}", urlencode(q));
    let (status, body) = lab.server.run(move || http_get(addr, &path)).ok()?.ok()?;
    if !status.contains("200") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

fn get(lab: &Routed, path: &str) -> (String, Vec<u8>) {
    let addr: SocketAddr = API.parse().expect("addr");
    let p = path.to_string();
    lab.server
        .run(move || {
            let auth = [("Authorization", format!("Bearer {SCRAPE_TOKEN}"))];
            phalanx_lab::http_request(addr, "GET", &p, &auth, b"")
        })
        .expect("namespace")
        .expect("daemon API")
}

#[test]
fn prometheus_scrapes_flow_kpis_that_match_the_capture() {
    if !privileged("prometheus_scrapes_flow_kpis_that_match_the_capture") {
        return;
    }
    let lab = Routed::new("prm").expect("client-router-server lab");
    lab.offloads_off().expect("offloads off");
    let port = 21_000 + (std::process::id() % 20_000) as u16;
    let (client, server) = (lab.client_v4(), lab.server_v4());
    lab.router
        .drop_forwarded(&format!(
            "ip saddr {client} tcp dport {port} meta length > 100 numgen random mod 100 < 1"
        ))
        .expect("nft drop rule");

    let dir = tempfile::tempdir().expect("tempdir");
    let remote_net = format!(
        "{}.0/24",
        client.to_string().rsplit_once('.').expect("dotted").0
    );
    let (tokens, credentials) = (dir.path().join("tokens"), dir.path().join("credentials"));
    std::fs::write(&tokens, format!("prometheus:read:{SCRAPE_TOKEN}\n")).expect("token file");
    std::fs::write(&credentials, SCRAPE_TOKEN).expect("credentials file");
    let cfg = dir.path().join("phalanx.toml");
    std::fs::write(
        &cfg,
        format!(
            "[http]\nlisten = \"{API}\"\ntoken_file = {tokens:?}\n[incidents]\nevidence_dir = {:?}\nspool_dir = {:?}\n\
             [[metrics.groups]]\nname = \"bulk\"\nports = [{port}]\nremote = [\"10.0.0.0/8\"]\n\
             remote_prefix_v4 = 24\n",
            dir.path().join("evidence"),
            dir.path().join("spool")
        ),
    )
    .expect("config");
    let daemon = Proc::new(
        lab.server
            .command(env!("CARGO_BIN_EXE_phalanx"))
            .args(["run", "--config"])
            .arg(&cfg)
            .args(["--iface", Routed::IF])
            .env("PHALANX_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn phalanx"),
    );
    let prom_cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n\
             scrape_configs:\n  - job_name: phalanx\n    authorization:\n      type: Bearer\n      \
             credentials_file: {credentials:?}\n    static_configs:\n      - targets: [\"{API}\"]\n"
        ),
    )
    .expect("prometheus config");
    let prometheus = Proc::new(
        lab.server
            .command("prometheus")
            .arg(format!("--config.file={}", prom_cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={PROM}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn prometheus (Debian package `prometheus`)"),
    );
    let up = Instant::now() + Duration::from_secs(30);
    while !get_ok(&lab) {
        assert!(Instant::now() < up, "daemon came up");
        std::thread::sleep(Duration::from_millis(100));
    }

    let pcap = dir.path().join("server.pcap");
    let port_s = port.to_string();
    let dump = lab
        .server
        .tcpdump(Routed::IF, &["tcp", "port", port_s.as_str()], &pcap)
        .expect("tcpdump");
    let received = upload(
        &lab.client,
        &lab.server,
        SocketAddr::from((server, port)),
        BYTES,
        None,
    )
    .expect("upload")
    .received;
    assert_eq!(received, BYTES, "the transfer completes");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(dump.stop().expect("tcpdump report"), 0, "capture complete");
    let dropped = lab.router.dropped().expect("nft counter");
    assert!(dropped > 5, "the router dropped segments: {dropped}");

    // The daemon's own view, straight from /metrics.
    let (status, body) = get(&lab, "/metrics");
    assert!(status.contains("200"), "{status}");
    let text = String::from_utf8(body).expect("utf-8");
    let lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().expect("stdin").write_all(text.as_bytes())?;
            c.wait_with_output()
        })
        .expect("promtool (Debian package `prometheus`)");
    assert!(
        lint.status.success() && lint.stdout.is_empty() && lint.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    let service = format!("{port}/tcp");
    let series = [
        ("group", "bulk"),
        ("service", service.as_str()),
        ("remote", remote_net.as_str()),
    ];
    let with = |d: &'static str| {
        let mut l = series.to_vec();
        l.push(("direction", d));
        l
    };
    let truth = tshark_counts(&pcap);
    let from_client = truth.get(&client.to_string()).copied().unwrap_or_default();
    let from_server = truth.get(&server.to_string()).copied().unwrap_or_default();
    let m = |name: &str, l: &[(&str, &str)]| {
        sample(&text, name, l).unwrap_or_else(|| panic!("{name} {l:?} in:\n{text}"))
    };
    assert_eq!(
        m("phalanx_flow_packets_total", &with("rx")) as u64,
        from_client.0,
        "received packets = tcpdump's packets from the client"
    );
    assert_eq!(
        m("phalanx_flow_packets_total", &with("tx")) as u64,
        from_server.0,
        "sent packets = tcpdump's packets from the server"
    );
    assert_eq!(
        m("phalanx_flow_bytes_total", &with("rx")) as u64,
        from_client.1
    );
    assert_eq!(
        m("phalanx_flow_bytes_total", &with("tx")) as u64,
        from_server.1
    );

    // Per-flow figures of the same engine, from the top-K API.
    let (status, body) = get(&lab, "/api/v1/flows?sort=retransmissions&limit=1");
    assert!(status.contains("200"), "{status}");
    let top: serde_json::Value = serde_json::from_slice(&body).expect("flows JSON");
    let flow = &top["flows"][0];
    assert_eq!(flow["dport"], port, "the worst flow is the lossy transfer");
    let retrans = flow["retransmissions"].as_u64().expect("retransmissions");
    assert!(retrans > 0, "the drops show as retransmissions");
    assert_eq!(
        m("phalanx_tcp_retransmissions_total", &series) as u64,
        retrans
    );
    let (status, _) = get(&lab, "/api/v1/flows?sort=nonsense");
    assert!(status.contains("400"), "unknown sort key: {status}");

    let samples = |side: &str| flow[side]["rtt"]["samples"].as_u64().unwrap_or(0);
    let rtt_count = m("phalanx_flow_rtt_seconds_count", &with("rx"))
        + m("phalanx_flow_rtt_seconds_count", &with("tx"));
    assert_eq!(
        rtt_count as u64,
        samples("src_to_dst") + samples("dst_to_src"),
        "one histogram observation per RTT sample"
    );
    // tx samples time the server's packets (the flow's dst side: the
    // client sent the SYN) to the client and back. The histogram must hold
    // them where the engine's exact figures put them.
    let tx_count = m("phalanx_flow_rtt_seconds_count", &with("tx"));
    let rtt = &flow["dst_to_src"]["rtt"];
    assert_eq!(tx_count as u64, rtt["samples"].as_u64().unwrap_or(0));
    // The server only acknowledges: its ACKs are timed by the client's next
    // data, which an RTO wait after a drop delays (no sample), so these
    // are fewer than the client's (10-17 in 4 runs of this upload).
    assert!(
        tx_count >= 5.0,
        "RTT samples of the server's packets: {tx_count}"
    );
    let ms = |k: &str| rtt[k].as_f64().unwrap_or_else(|| panic!("rtt {k}")) / 1e3;
    let (min, max, avg) = (ms("min_ms"), ms("max_ms"), ms("avg_ms"));
    let sum = m("phalanx_flow_rtt_seconds_sum", &with("tx"));
    assert!(
        (sum / tx_count - avg).abs() <= 1e-6 + avg * 1e-3,
        "histogram mean {} vs flow mean {avg}",
        sum / tx_count
    );
    for b in RTT_BUCKETS {
        // As the exposition writes it: 1.0, 0.0001, ...
        let le = format!("{b:?}");
        let mut l = with("tx");
        l.push(("le", le.as_str()));
        let v = m("phalanx_flow_rtt_seconds_bucket", &l);
        if b < min {
            assert_eq!(v, 0.0, "bucket le={le} below the minimum {min}");
        }
        if b >= max {
            assert_eq!(v, tx_count, "bucket le={le} above the maximum {max}");
        }
    }

    // The same numbers through Prometheus' query API.
    let want = [
        (
            format!("sum(phalanx_flow_packets_total{{group=\"bulk\",service=\"{service}\"}})"),
            (from_client.0 + from_server.0) as f64,
        ),
        (
            "sum(phalanx_tcp_retransmissions_total{group=\"bulk\"})".to_string(),
            retrans as f64,
        ),
        (
            "sum(phalanx_flow_rtt_seconds_count{group=\"bulk\",direction=\"tx\"})".to_string(),
            tx_count,
        ),
        ("up{job=\"phalanx\"}".to_string(), 1.0),
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    for (q, v) in &want {
        loop {
            let got = prom_query(&lab, q);
            if got == Some(*v) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus {q}: expected {v}, got {got:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    // A quantile through PromQL lies within the samples' range (bucket
    // interpolation keeps it inside the buckets that hold min and max).
    let p50 = prom_query(
        &lab,
        "histogram_quantile(0.5, sum by (le) (phalanx_flow_rtt_seconds_bucket{group=\"bulk\",direction=\"tx\"}))",
    )
    .expect("RTT median");
    let lower = RTT_BUCKETS
        .iter()
        .rev()
        .find(|&&b| b < min)
        .copied()
        .unwrap_or(0.0);
    let upper = RTT_BUCKETS
        .iter()
        .find(|&&b| b >= max)
        .copied()
        .unwrap_or(f64::INFINITY);
    assert!(
        (lower..=upper).contains(&p50),
        "PromQL median {p50} within [{lower}, {upper}] (flow min {min}, max {max})"
    );
    eprintln!(
        "packets rx {} tx {}, retransmissions {retrans} (router dropped {dropped}), \
         tx RTT samples {tx_count}, PromQL p50 {p50:.4} s",
        from_client.0, from_server.0
    );

    drop(prometheus);
    let out = daemon.stop(Duration::from_secs(10)).expect("daemon output");
    assert!(out.status.success(), "clean daemon exit");
}

fn get_ok(lab: &Routed) -> bool {
    let addr: SocketAddr = API.parse().expect("addr");
    lab.server
        .run(move || http_get(addr, "/healthz").is_ok())
        .unwrap_or(false)
}
