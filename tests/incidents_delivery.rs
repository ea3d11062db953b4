//! Incident delivery end to end, on loopback only (no root needed, so these
//! always run): a real Alertmanager lists a fired incident then sees it
//! resolved; a signed webhook receives the Alertmanager webhook payload; a
//! receiver that is down gets its deliveries once it comes up (retries),
//! also across a restart of the incident service (spool replay and restored
//! incidents); the evidence pcapng opens in tshark with the right count.
//! One test needs root to mount a tiny tmpfs and fill it: failed evidence,
//! spool and state writes are counted and degrade the daemon until writes
//! succeed again.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use phalanx_common::{ipproto, tcp_flags, PacketMeta, RecordKind};
use phalanx_daemon::{
    alerting::webhook,
    alerting::{
        service::{self, IncidentService, IncidentsView, SharedHistory},
        Observation, Severity,
    },
    api,
    config::{Config, HttpUrl, WebhookConfig},
    flow::FlowKey,
    flow::{FlowConfig, FlowTable, SharedTable},
};
use phalanx_lab::{http_get, Proc};
use prometheus_client::registry::Registry;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    sync::mpsc,
    task::JoinHandle,
};

const SECRET: &str = "s3cret-key";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `limit`.
async fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One request a receiver got.
#[derive(Clone, Debug)]
struct Received {
    signature: Option<String>,
    body: String,
}

/// A minimal HTTP receiver: one request per connection, answered 200 with
/// `Connection: close`, handled inline so that stopping it closes the port
/// and every connection at once (a keep-alive connection surviving the
/// "outage" would defeat the test).
struct Receiver {
    task: JoinHandle<()>,
}

impl Receiver {
    async fn start(port: u16, got: Arc<Mutex<Vec<Received>>>) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the receiver port");
        let sink = got;
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                if let Some(r) = read_request(&mut s).await {
                    sink.lock().expect("sink").push(r);
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                }
                let _ = s.shutdown().await;
            }
        });
        Self { task }
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn read_request(s: &mut tokio::net::TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let len: usize = header("content-length")?.parse().ok()?;
    while buf.len() < head_end + len {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(Received {
        signature: header(webhook::SIGNATURE_HEADER),
        body: String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string(),
    })
}

/// A real Alertmanager on loopback, killed on drop.
struct Alertmanager {
    addr: SocketAddr,
    _proc: Proc,
}

impl Alertmanager {
    fn start(dir: &Path) -> Self {
        let bin = "/usr/bin/prometheus-alertmanager";
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: `cargo xtask setup` installs Debian's prometheus-alertmanager"
        );
        let cfg = dir.join("alertmanager.yml");
        std::fs::write(
            &cfg,
            "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n",
        )
        .expect("write alertmanager config");
        let storage = dir.join("am-data");
        std::fs::create_dir_all(&storage).expect("storage dir");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.path={}", storage.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn alertmanager");
        let proc = Proc::new(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((status, _)) = http_get(addr, "/-/ready") {
                if status.contains(" 200") {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "alertmanager not ready within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { addr, _proc: proc }
    }

    /// `GET /api/v2/alerts` as JSON.
    fn alerts(&self) -> serde_json::Value {
        let (status, body) = http_get(self.addr, "/api/v2/alerts").expect("GET /api/v2/alerts");
        assert!(status.contains(" 200"), "alertmanager answered {status}");
        serde_json::from_slice(&body).expect("alerts JSON")
    }
}

fn config(dir: &Path) -> Config {
    let mut cfg = Config::default();
    let ic = &mut cfg.incidents;
    ic.host = "test-host".into();
    ic.external_url = "http://127.0.0.1:9740".into();
    ic.evidence_dir = dir.join("evidence");
    ic.spool_dir = dir.join("spool");
    ic.retry_initial_ms = 100;
    ic.retry_max_ms = 400;
    ic.request_timeout_ms = 2000;
    cfg.validate().expect("test config is valid");
    cfg
}

fn webhook_cfg(port: u16) -> WebhookConfig {
    WebhookConfig {
        url: format!("http://127.0.0.1:{port}/hook")
            .parse::<HttpUrl>()
            .expect("url"),
        name: Some("hook".into()),
        secret: Some(SECRET.into()),
    }
}

/// `n` data segments of one TCP flow, 10.9.0.1:40000 -> 10.9.0.2:443.
fn segments(n: usize) -> Vec<PacketMeta> {
    (0..n)
        .map(|i| {
            let mut r = PacketMeta {
                ts_ns: 1_700_000_000_000_000_000 + i as u64 * 2_000_000,
                kind: RecordKind::Tcp as u8,
                ip_version: 4,
                l4_proto: ipproto::TCP,
                ttl: 64,
                sport: 40000,
                dport: 443,
                seq: 1 + i as u32 * 1448,
                ack: 1,
                window: 502,
                payload_len: 1448,
                ip_len: 1500,
                wire_len: 1514,
                tcp_flags: tcp_flags::ACK | tcp_flags::PSH,
                ..PacketMeta::zeroed()
            };
            r.src_addr[..4].copy_from_slice(&[10, 9, 0, 1]);
            r.dst_addr[..4].copy_from_slice(&[10, 9, 0, 2]);
            r
        })
        .collect()
}

/// The flow loop's evidence history after `n` segments of one flow (the
/// last `history.evidence_packets` kept), and that flow.
fn recorded(cfg: &Config, n: usize) -> (SharedHistory, FlowKey) {
    let history = service::history(cfg.history.evidence());
    let segs = segments(n);
    let (flow, _, _) = FlowKey::of(&segs[0]).expect("flow key");
    {
        let mut h = history.lock().expect("history");
        for s in &segs {
            h.record(s);
        }
    }
    (history, flow)
}

fn observation(
    rule: &str,
    group: &str,
    flow: Option<phalanx_daemon::flow::FlowKey>,
) -> Observation {
    Observation {
        activity_ns: None,
        client: None,
        rule: rule.into(),
        severity: Severity::Critical,
        group: group.into(),
        flow,
        summary: format!("{rule} on {group}."),
        evidence: serde_json::json!({ "retransmissions": 7 }),
    }
}

/// A running incident service with its channel and registry.
struct Running {
    tx: mpsc::Sender<Vec<Observation>>,
    task: JoinHandle<()>,
    registry: Arc<Registry>,
    view: IncidentsView,
    health: phalanx_daemon::health::Health,
}

async fn start(cfg: &Config, history: SharedHistory) -> Running {
    let mut registry = Registry::default();
    let health = phalanx_daemon::health::Health::register(&mut registry);
    let (svc, view) = IncidentService::start(&cfg.alerting(), history, &mut registry, &health)
        .await
        .expect("incident service starts");
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(svc.run(rx));
    Running {
        tx,
        task,
        registry: Arc::new(registry),
        view,
        health,
    }
}

impl Running {
    async fn stop(self) {
        drop(self.tx);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("incident task stops within 10 s")
            .expect("incident task did not panic");
    }

    fn metrics(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).expect("encode");
        s
    }
}

/// Value of the sample whose line starts with `prefix` (0 when absent).
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

fn deliveries(text: &str, receiver: &str, outcome: &str) -> f64 {
    sample(
        text,
        &format!(
            "phalanx_webhook_deliveries_total{{receiver=\"{receiver}\",outcome=\"{outcome}\"}}"
        ),
    )
}

/// Parsed, signature-checked webhook payloads.
fn payloads(got: &Mutex<Vec<Received>>) -> Vec<serde_json::Value> {
    got.lock()
        .expect("sink")
        .iter()
        .map(|r| {
            let sig = r
                .signature
                .as_deref()
                .expect("signed webhook carries X-Phalanx-Signature");
            assert!(
                webhook::verify(SECRET.as_bytes(), r.body.as_bytes(), sig),
                "signature {sig} does not match the body"
            );
            serde_json::from_str(&r.body).expect("payload is JSON")
        })
        .collect()
}

fn tshark_count(file: &Path) -> usize {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .expect("run tshark (installed by `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "tshark -r {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_and_signed_webhook_get_fired_then_resolved_with_evidence() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let am = Alertmanager::start(tmp.path());
    let hook_port = free_port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let hook = Receiver::start(hook_port, got.clone()).await;

    let mut cfg = config(tmp.path());
    cfg.incidents.resolve_after_secs = 2;
    cfg.alertmanager.resend_secs = 1;
    cfg.alertmanager.urls = vec![format!("http://{}", am.addr).parse().expect("url")];
    cfg.webhooks = vec![webhook_cfg(hook_port)];
    let am_name = cfg.alerting().receivers()[0].name.clone();

    // The flow loop's history: 100 segments seen, the last 64 kept.
    let (history, flow) = recorded(&cfg, 100);
    let run = start(&cfg, history).await;

    // The HTTP API over the same view.
    let api_listener = api::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind api");
    let api_addr = api_listener.local_addr().expect("api addr");
    let state = api::ApiState {
        registry: run.registry.clone(),
        flows: Arc::new(SharedTable::new(FlowTable::new(FlowConfig::default()))),
        incidents: run.view.clone(),
        stitch: None,
        auth: Arc::new(api::auth::Auth::open()),
        health: phalanx_daemon::health::Health::default(),
    };
    let server = tokio::spawn(async move { axum::serve(api_listener, api::router(state)).await });

    // Keep observing until Alertmanager lists the alert (the incident must
    // not resolve while we look).
    let group = "svc-443/10.9.0.0/16";
    let deadline = Instant::now() + Duration::from_secs(20);
    let alert = loop {
        run.tx
            .send(vec![observation("pmtud_blackhole", group, Some(flow))])
            .await
            .expect("send observation");
        let alerts = tokio::task::block_in_place(|| am.alerts());
        if let Some(a) = alerts.as_array().and_then(|v| {
            v.iter()
                .find(|a| a["labels"]["alertname"] == "pmtud_blackhole")
        }) {
            break a.clone();
        }
        assert!(
            Instant::now() < deadline,
            "Alertmanager did not list the alert within 20 s: {alerts}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(alert["status"]["state"], "active", "{alert}");
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(alert["labels"]["host"], "test-host");
    assert_eq!(alert["labels"]["group"], group);
    assert_eq!(
        alert["annotations"]["summary"],
        format!("pmtud_blackhole on {group}.")
    );
    let pcapng_name = alert["annotations"]["pcapng"]
        .as_str()
        .expect("the alert names its evidence file")
        .to_string();
    assert!(pcapng_name.ends_with(".pcapng.zst"), "{pcapng_name}");

    // API: the incident, its evidence (served decompressed) in tshark.
    let (status, body) = tokio::task::block_in_place(|| http_get(api_addr, "/api/v1/incidents"))
        .expect("GET incidents");
    assert!(status.contains(" 200"), "{status}");
    let list: serde_json::Value = serde_json::from_slice(&body).expect("incidents JSON");
    let incidents = list["incidents"].as_array().expect("incidents array");
    assert_eq!(
        incidents.len(),
        1,
        "one incident for repeated observations: {list}"
    );
    let id = incidents[0]["id"].as_str().expect("id").to_string();
    assert_eq!(incidents[0]["status"], "firing");
    assert!(incidents[0]["count"].as_u64().expect("count") >= 1);
    assert_eq!(incidents[0]["annotations"]["pcapng"], pcapng_name.as_str());
    let (status, pcapng) = tokio::task::block_in_place(|| {
        http_get(api_addr, &format!("/api/v1/incidents/{id}/pcapng"))
    })
    .expect("GET pcapng");
    assert!(status.contains(" 200"), "{status}");
    let served = tmp.path().join("served.pcapng");
    std::fs::write(&served, &pcapng).expect("write served copy");
    assert_eq!(
        tshark_count(&served),
        64,
        "served pcapng: the 64 records kept for the flow"
    );
    let stored: PathBuf = cfg.incidents.evidence_dir.join(&pcapng_name);
    assert_eq!(
        tshark_count(&stored),
        64,
        "tshark reads the stored .pcapng.zst directly"
    );
    let (status, _) = tokio::task::block_in_place(|| http_get(api_addr, "/api/v1/incidents/nope"))
        .expect("GET unknown");
    assert!(status.contains(" 404"), "{status}");

    // Stop observing: resolved within resolve_after (2 s) + a tick.
    let resolved = wait_for("the resolved webhook", Duration::from_secs(15), || {
        payloads(&got)
            .into_iter()
            .find(|p| p["status"] == "resolved")
    })
    .await;
    assert_eq!(
        resolved["alerts"][0]["labels"]["alertname"],
        "pmtud_blackhole"
    );
    let fired: Vec<serde_json::Value> = payloads(&got)
        .into_iter()
        .filter(|p| p["status"] == "firing")
        .collect();
    assert_eq!(
        fired.len(),
        1,
        "exactly one firing webhook for one incident"
    );
    assert_eq!(fired[0]["version"], "4");
    assert_eq!(fired[0]["receiver"], "hook");
    assert_eq!(
        fired[0]["alerts"][0]["fingerprint"],
        resolved["alerts"][0]["fingerprint"]
    );
    assert_ne!(resolved["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");

    // Alertmanager no longer lists it as active.
    wait_for(
        "Alertmanager to drop the resolved alert",
        Duration::from_secs(15),
        || {
            let alerts = tokio::task::block_in_place(|| am.alerts());
            let active = alerts.as_array().is_some_and(|v| {
                v.iter().any(|a| {
                    a["labels"]["alertname"] == "pmtud_blackhole"
                        && a["status"]["state"] == "active"
                })
            });
            (!active).then_some(())
        },
    )
    .await;

    let m = run.metrics();
    assert!(
        m.contains("# HELP phalanx_incidents Incidents fired, by rule and severity.\n"),
        "HELP text: {m}"
    );
    assert_eq!(
        sample(
            &m,
            "phalanx_incidents_total{rule=\"pmtud_blackhole\",severity=\"critical\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "phalanx_incidents_firing{rule=\"pmtud_blackhole\"}"),
        0.0,
        "{m}"
    );
    assert_eq!(
        deliveries(&m, "hook", "delivered"),
        2.0,
        "firing + resolved: {m}"
    );
    assert_eq!(deliveries(&m, "hook", "spooled"), 2.0, "{m}");
    assert_eq!(deliveries(&m, "hook", "failed"), 0.0, "{m}");
    assert!(deliveries(&m, &am_name, "delivered") >= 2.0, "{m}");
    assert_eq!(deliveries(&m, &am_name, "failed"), 0.0, "{m}");

    server.abort();
    run.stop().await;
    hook.stop().await;
    let spool_left = std::fs::read_dir(&cfg.incidents.spool_dir)
        .expect("spool dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".json"))
        })
        .count();
    assert_eq!(spool_left, 0, "every settled delivery leaves the spool");
}

/// (incident id, status) of every payload received, in order.
fn received(got: &Mutex<Vec<Received>>) -> Vec<(String, String)> {
    payloads(got)
        .into_iter()
        .map(|p| {
            let url = p["alerts"][0]["generatorURL"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let id = url.rsplit('/').next().unwrap_or_default().to_string();
            (id, p["status"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_outage_and_restart_lose_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = free_port(); // closed until the receiver starts
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut cfg = config(tmp.path());
    cfg.incidents.resolve_after_secs = 3;
    cfg.webhooks = vec![webhook_cfg(port)];

    // 1. Receiver down: incident A is spooled and retried.
    let run1 = start(&cfg, service::history(cfg.history.evidence())).await;
    run1.tx
        .send(vec![observation("rst_storm", "a", None)])
        .await
        .expect("send");
    wait_for("two failed attempts", Duration::from_secs(10), || {
        (deliveries(&run1.metrics(), "hook", "retried") >= 2.0).then_some(())
    })
    .await;
    let m = run1.metrics();
    assert_eq!(deliveries(&m, "hook", "spooled"), 1.0, "{m}");
    assert_eq!(deliveries(&m, "hook", "delivered"), 0.0, "{m}");
    assert_eq!(
        spool_files(&cfg.incidents.spool_dir),
        1,
        "A waits in the spool"
    );

    // 2. Receiver up: the retry delivers A.
    let rx1 = Receiver::start(port, got.clone()).await;
    wait_for(
        "A delivered after the outage",
        Duration::from_secs(10),
        || (!received(&got).is_empty()).then_some(()),
    )
    .await;
    let a_id = received(&got)[0].0.clone();
    wait_for("A's spool file removed", Duration::from_secs(5), || {
        (spool_files(&cfg.incidents.spool_dir) == 0).then_some(())
    })
    .await;

    // 3. Receiver down again; incident B fires; the service restarts with B pending.
    rx1.stop().await;
    let retried = deliveries(&run1.metrics(), "hook", "retried");
    run1.tx
        .send(vec![observation("rst_storm", "b", None)])
        .await
        .expect("send");
    wait_for("B retried", Duration::from_secs(10), || {
        (deliveries(&run1.metrics(), "hook", "retried") > retried).then_some(())
    })
    .await;
    let m1 = run1.metrics();
    run1.stop().await;
    assert!(
        spool_files(&cfg.incidents.spool_dir) >= 1,
        "B (and possibly A's resolution) survive the stop in the spool"
    );

    // 4. A new service on the same directories replays the spool, takes
    //    over A and B, and resolves them when they stay quiet.
    let run2 = start(&cfg, service::history(cfg.history.evidence())).await;
    let restored = run2.view.manager.lock().expect("manager").firing().len();
    assert!(
        restored >= 1,
        "firing incidents restored from the previous run"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rx2 = Receiver::start(port, got.clone()).await;
    let all = wait_for(
        "A and B fired and resolved",
        Duration::from_secs(20),
        || {
            let r = received(&got);
            (r.len() >= 4).then_some(r)
        },
    )
    .await;
    // Let any stray duplicate arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all_now = received(&got);
    assert_eq!(all_now, all, "no duplicates arrive later");
    let b_id = all
        .iter()
        .find(|(id, s)| id != &a_id && s == "firing")
        .map(|(id, _)| id.clone())
        .expect("B fired");
    let mut want = vec![
        (a_id.clone(), "firing".to_string()),
        (a_id.clone(), "resolved".to_string()),
        (b_id.clone(), "firing".to_string()),
        (b_id.clone(), "resolved".to_string()),
    ];
    want.sort();
    let mut got_sorted = all.clone();
    got_sorted.sort();
    assert_eq!(
        got_sorted, want,
        "each notification exactly once, same ids across the restart"
    );
    for id in [&a_id, &b_id] {
        let pos = |s: &str| all.iter().position(|x| &x.0 == id && x.1 == s);
        assert!(
            pos("firing") < pos("resolved"),
            "{id}: firing before resolved in {all:?}"
        );
    }

    let m2 = run2.metrics();
    let total = |o: &str| deliveries(&m1, "hook", o) + deliveries(&m2, "hook", o);
    assert_eq!(total("delivered"), 4.0, "delivered: run 1 {m1}\nrun 2 {m2}");
    assert_eq!(
        total("spooled"),
        4.0,
        "each transition spooled once (replays are not re-spooled)"
    );
    assert_eq!(total("failed"), 0.0);
    assert!(
        deliveries(&m2, "hook", "retried") >= 1.0,
        "run 2 retried while the receiver was down"
    );
    run2.stop().await;
    rx2.stop().await;
    assert_eq!(spool_files(&cfg.incidents.spool_dir), 0, "spool drained");
}

/// Deliveries waiting in the spool directory `dir`.
fn spool_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".json"))
            })
            .count()
        })
        .unwrap_or(0)
}

/// A tmpfs of `size` mounted on `dir`, unmounted on drop (also when the
/// test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).expect("mount point");
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mount a tmpfs on {}", dir.display());
        Self(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_counted_and_degrades_until_writes_succeed() {
    if !phalanx_lab::privileged("a_full_disk_is_counted_and_degrades_until_writes_succeed") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let disk = tmp.path().join("disk");
    let _fs = Tmpfs::mount(&disk, "16m");
    let mut cfg = config(&disk);
    // Nobody listens there: every delivery waits in the spool.
    cfg.webhooks = vec![webhook_cfg(free_port())];
    let (history, flow) = recorded(&cfg, 100);
    let run = start(&cfg, history).await;
    assert_eq!(run.health.status(), "ok");
    // Fill the disk to the last block, the spool's reserve spent too.
    let reserve = cfg
        .incidents
        .spool_dir
        .join(phalanx_daemon::alerting::spool::RESERVE_FILE);
    std::fs::remove_file(&reserve).expect("the reserve");
    let filler = disk.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 32 << 20]);
    run.tx
        .send(vec![observation("pmtud_blackhole", "svc-a", Some(flow))])
        .await
        .expect("send");
    let failures = |m: &str, what: &str| {
        sample(
            m,
            &format!("phalanx_write_failures_total{{what=\"{what}\"}}"),
        )
    };
    wait_for(
        "evidence, spool and state failures counted",
        Duration::from_secs(10),
        || {
            let m = run.metrics();
            ["evidence_write", "spool_write", "state_write"]
                .iter()
                .all(|w| failures(&m, w) >= 1.0)
                .then_some(())
        },
    )
    .await;
    let m = run.metrics();
    for reason in ["evidence_write", "spool_write", "state_write"] {
        assert_eq!(
            sample(&m, &format!("phalanx_degraded{{reason=\"{reason}\"}}")),
            1.0,
            "{reason} in\n{m}"
        );
    }
    let status = run.health.status();
    assert!(
        status.starts_with("degraded: evidence_write (") && status.contains("spool_write ("),
        "{status}"
    );
    // Space again: the next incident's writes succeed, and the daemon is
    // no longer degraded.
    std::fs::remove_file(&filler).expect("free the disk");
    run.tx
        .send(vec![observation("pmtud_blackhole", "svc-b", Some(flow))])
        .await
        .expect("send");
    wait_for("healthy again", Duration::from_secs(10), || {
        (run.health.status() == "ok").then_some(())
    })
    .await;
    let m = run.metrics();
    assert_eq!(
        sample(&m, "phalanx_degraded{reason=\"spool_write\"}"),
        0.0,
        "{m}"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_keeps_deliveries_and_state_across_a_restart() {
    if !phalanx_lab::privileged("a_full_disk_keeps_deliveries_and_state_across_a_restart") {
        return;
    }
    const INCIDENTS: usize = 20;
    let tmp = tempfile::tempdir().expect("tempdir");
    let disk = tmp.path().join("disk");
    let _fs = Tmpfs::mount(&disk, "16m");
    let mut cfg = config(&disk);
    // Nobody listens there yet: every delivery waits in the spool.
    let port = free_port();
    cfg.webhooks = vec![webhook_cfg(port)];
    let (history, flow) = recorded(&cfg, 100);
    let run = start(&cfg, history).await;
    let reserve = cfg
        .incidents
        .spool_dir
        .join(phalanx_daemon::alerting::spool::RESERVE_FILE);
    assert!(reserve.exists(), "the spool reserves its space");
    // Fill the disk to the last block.
    let filler = disk.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 32 << 20]);
    for i in 0..INCIDENTS {
        run.tx
            .send(vec![observation(
                "pmtud_blackhole",
                &format!("svc-{i}"),
                Some(flow),
            )])
            .await
            .expect("send");
    }
    let spool = cfg.incidents.spool_dir.clone();
    wait_for("every delivery spooled", Duration::from_secs(20), || {
        (spool_files(&spool) == INCIDENTS).then_some(())
    })
    .await;
    let m = run.metrics();
    let failures = |what: &str| {
        sample(
            &m,
            &format!("phalanx_write_failures_total{{what=\"{what}\"}}"),
        )
    };
    assert_eq!(failures("spool_write"), 0.0, "{m}");
    assert_eq!(failures("state_write"), 0.0, "{m}");
    assert!(
        failures("evidence_write") >= 1.0,
        "evidence gives way first:\n{m}"
    );
    assert!(!reserve.exists(), "the reserve was given up");
    run.stop().await;

    // A restart after the disk was freed: nothing was lost.
    std::fs::remove_file(&filler).expect("free the disk");
    let (history, _) = recorded(&cfg, 100);
    let got = Arc::new(Mutex::new(Vec::new()));
    let rx = Receiver::start(port, got.clone()).await;
    let run = start(&cfg, history).await;
    let firing = run.view.manager.lock().expect("manager").firing().len();
    assert_eq!(firing, INCIDENTS, "every incident's state survived");
    wait_for(
        "every spooled delivery sent",
        Duration::from_secs(20),
        || (received(&got).len() >= INCIDENTS).then_some(()),
    )
    .await;
    assert!(reserve.exists(), "the reserve is back once there is room");
    run.stop().await;
    rx.stop().await;
}
