//! Live stitching between two daemons: client — router — server namespaces,
//! a `phalanx run` in the client and in the server namespace (each on its
//! `eth0`, each the other's `[stitch]` peer through the router, one shared
//! key), and a router that drops a random 2 % of the client's forwarded data
//! segments with nftables, counted.
//!
//! The client's daemon sees the sender's retransmissions, fires a
//! `retransmission_storm` incident (its ratio lowered to 1 % for a 2 % loss),
//! asks the server's daemon for the flow's packets and stitches them with
//! its own; the incident's `stitch` annotation, delivered to a webhook
//! receiver of the test, must say that N of M lost packets were dropped
//! between hop client and hop server, client -> server, with N = M (nothing
//! attributed to the reverse direction) and N within 0.5 % of the router's
//! drop counter. The counter is the ground truth: every transmission it
//! counts left the client's `eth0` and never reached the server's, which is
//! exactly the stitched `lost` of that link as long as both histories hold
//! the whole flow (`history.peer_packets` = 65536, the flow has ~17,000 packets)
//! and neither daemon lost a record (their ring-buffer and backlog drop
//! counters are checked to be 0). The same numbers must be in the
//! incident's report at `/api/v1/incidents/{id}` and in `POST
//! /api/v1/stitch`. Peer requests with a wrong key, without a signature,
//! with an old timestamp or with a malformed body are rejected (401/400)
//! and counted.
//!
//! Needs root; skips without it, except under CI=true.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::Stdio,
    sync::mpsc,
    time::{Duration, Instant},
};

use phalanx_daemon::stitch::peer::{sign, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use phalanx_lab::{
    http_get, http_request, metric, privileged, upload, Netns, Proc, Routed, WebhookReceiver,
};

/// Bytes sent client -> server: ~11,600 segments, ~230 drops at 2 %.
const BYTES: usize = 16 << 20;
const DROP_PERCENT: u32 = 2;
/// 200 Mbit/s: the transfer takes under a second.
const PACING_BYTES_PER_SEC: u32 = 25_000_000;
const SECRET: &str = "stitch-peers-test-key-0123456789";
/// The `admin` bearer token of both daemons' `http.token_file`: they
/// listen on non-loopback addresses, which needs authentication.
const ADMIN_TOKEN: &str = "stitch-peers-admin-0123456789";
const API_PORT: u16 = 9740;
const HOOK_PORT: u16 = 19771;
/// From the end of the transfer to the stitched notification.
const WITHIN: Duration = Duration::from_secs(20);

/// Request headers: (name, value).
type Headers = Vec<(&'static str, String)>;

/// One HTTP/1.0 request with a JSON body; returns the status code and the body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut all = vec![
        ("Content-Type", "application/json".to_string()),
        ("Authorization", format!("Bearer {ADMIN_TOKEN}")),
    ];
    all.extend(headers.iter().map(|(k, v)| (*k, v.clone())));
    let (status, body) = http_request(addr, method, path, &all, body)?;
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, String::from_utf8_lossy(&body).to_string()))
}

/// `GET path` with the admin token: status line and body.
fn api_get(addr: SocketAddr, path: &str) -> std::io::Result<(String, Vec<u8>)> {
    let auth = [("Authorization", format!("Bearer {ADMIN_TOKEN}"))];
    http_request(addr, "GET", path, &auth, b"")
}

/// Starts `phalanx run` in `ns` on `eth0`, API on `me:9740`, `peer` as its
/// stitch peer; waits for /healthz.
fn start_daemon(
    ns: &Netns,
    dir: &Path,
    hop: &str,
    me: Ipv4Addr,
    peer: Ipv4Addr,
    webhook: bool,
) -> Proc {
    let state = dir.join(hop);
    let hook = if webhook {
        format!("[[webhooks]]\nurl = \"http://127.0.0.1:{HOOK_PORT}/hook\"\n")
    } else {
        String::new()
    };
    let tokens = dir.join(format!("{hop}.tokens"));
    std::fs::write(&tokens, format!("ops:admin:{ADMIN_TOKEN}\n")).expect("token file");
    let cfg = format!(
        "[http]\nlisten = \"{me}:{API_PORT}\"\ntoken_file = {tokens:?}\n\
         [incidents]\nhost = \"{hop}\"\nevidence_dir = {:?}\nspool_dir = {:?}\n\
         [rules.retransmission_storm]\nratio = 0.01\n\
         [stitch]\npeers = [\"http://{peer}:{API_PORT}\"]\nsecret = \"{SECRET}\"\nhop = \"{hop}\"\n\
         timeout_ms = 3000\nrefresh_secs = 1\n\
         [history]\npeer_packets = 65536\npeer_flows = 64\n{hook}",
        state.join("evidence"),
        state.join("spool"),
    );
    let path = dir.join(format!("{hop}.toml"));
    std::fs::write(&path, cfg).expect("daemon config");
    let proc = Proc::new(
        ns.command(env!("CARGO_BIN_EXE_phalanx"))
            .args(["run", "--iface", Routed::IF, "--config"])
            .arg(&path)
            .env("PHALANX_LOG", "warn,phalanx_daemon::alerting=info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn phalanx"),
    );
    let api = SocketAddr::from((me, API_PORT));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ns
        .run(move || http_get(api, "/healthz").is_ok_and(|(s, _)| s.contains("200")))
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "{hop} daemon answers /healthz");
        std::thread::sleep(Duration::from_millis(100));
    }
    proc
}

/// `N` and `M` of "N of M lost packets dropped between hop A and hop B ...".
fn n_of_m(sentence: &str) -> Option<(u64, u64)> {
    let mut w = sentence.split_whitespace();
    let n = w.next()?.parse().ok()?;
    (w.next()? == "of").then_some(())?;
    let m = w.next()?.parse().ok()?;
    Some((n, m))
}

/// `lost` of the link `from` -> `to` in a stitch report.
fn link_lost(report: &serde_json::Value, from: &str, to: &str) -> Option<u64> {
    report["links"]
        .as_array()?
        .iter()
        .find(|l| l["from"] == from && l["to"] == to)?["lost"]
        .as_u64()
}

#[test]
fn peers_localize_router_drops_in_the_incident() {
    if !privileged("peers_localize_router_drops_in_the_incident") {
        return;
    }
    let started = Instant::now();
    let lab = Routed::new("stp").expect("client-router-server lab");
    lab.offloads_off().expect("offloads off");
    let (client, server) = (lab.client_v4(), lab.server_v4());
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    lab.router
        .drop_forwarded(&format!(
            "ip saddr {client} tcp dport {port} meta length > 100 numgen random mod 100 < {DROP_PERCENT}"
        ))
        .expect("nft drop rule");
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, rx) = mpsc::channel();
    let receiver = WebhookReceiver::start(&lab.client, HOOK_PORT, tx).expect("webhook receiver");
    let cd = start_daemon(&lab.client, dir.path(), "client", client, server, true);
    let sd = start_daemon(&lab.server, dir.path(), "server", server, client, false);
    let (c_api, s_api) = (
        SocketAddr::from((client, API_PORT)),
        SocketAddr::from((server, API_PORT)),
    );

    // Rejected peer requests, sent from the client namespace to the server's daemon.
    let flow_body = format!(
        r#"{{"flow":"{client}:1 -> {server}:{port}","nonce":"0123456789abcdef0123456789abcdef"}}"#
    )
    .into_bytes();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let signed = |key: &str, ts: u64, body: &[u8]| {
        vec![
            (TIMESTAMP_HEADER, ts.to_string()),
            (SIGNATURE_HEADER, sign(key.as_bytes(), ts, body)),
        ]
    };
    let malformed = br#"{"flow":"not a flow"}"#.to_vec();
    let cases: Vec<(&str, Headers, Vec<u8>, u16)> = vec![
        (
            "wrong key",
            signed("another-key-of-enough-length", now, &flow_body),
            flow_body.clone(),
            401,
        ),
        ("unsigned", Vec::new(), flow_body.clone(), 401),
        (
            "stale timestamp",
            signed(SECRET, now - 3600, &flow_body),
            flow_body.clone(),
            401,
        ),
        (
            "malformed body",
            signed(SECRET, now, &malformed),
            malformed.clone(),
            400,
        ),
        (
            "valid",
            signed(SECRET, now, &flow_body),
            flow_body.clone(),
            200,
        ),
        (
            "replayed",
            signed(SECRET, now, &flow_body),
            flow_body.clone(),
            401,
        ),
    ];
    for (what, headers, body, want) in cases {
        let (code, text) = lab
            .client
            .run(move || http(s_api, "POST", "/api/v1/peer/observations", &headers, &body))
            .expect("client namespace")
            .expect("peer request");
        assert_eq!(code, want, "{what}: HTTP {code} {text}");
        if what == "malformed body" {
            assert!(
                text.contains("malformed request") && text.contains("not a flow"),
                "the 400 says why: {text}"
            );
        }
    }
    let served = lab
        .client
        .run(move || api_get(s_api, "/metrics"))
        .expect("client namespace")
        .expect("server metrics");
    let served = String::from_utf8_lossy(&served.1).to_string();
    for (outcome, want) in [
        ("unauthenticated", 2),
        ("stale", 1),
        ("malformed", 1),
        ("replayed", 1),
    ] {
        let name = format!("phalanx_stitch_peer_requests_total{{outcome=\"{outcome}\"}}");
        assert_eq!(metric(&served, &name), want, "{name} in:\n{served}");
    }
    assert!(
        served.contains("# HELP phalanx_stitch_peer_requests_total "),
        "the counter is documented"
    );

    let t0 = Instant::now();
    let up = upload(
        &lab.client,
        &lab.server,
        SocketAddr::from((lab.server_v4(), port)),
        BYTES,
        Some(PACING_BYTES_PER_SEC),
    )
    .expect("upload");
    let (cport, got) = (up.client_port, up.received);
    let took = t0.elapsed();
    assert_eq!(got, BYTES, "the transfer completes despite the drops");
    let dropped = lab.router.dropped().expect("nft counter");
    assert!(
        dropped > 100,
        "the 2 % rule dropped enough to measure ({dropped})"
    );
    let tolerance = (dropped as f64 * 0.005).floor() as u64;
    let flow_text = format!("{client}:{cport} <-> {server}:{port} tcp");

    // The stitched notification: the first one whose sentence matches the
    // counter; the last one seen is shown when none does.
    let deadline = Instant::now() + WITHIN;
    let mut last = None;
    let mut id = None;
    while Instant::now() < deadline && id.is_none() {
        let Ok(body) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&body).expect("webhook JSON");
        for a in v["alerts"].as_array().into_iter().flatten() {
            let ann = &a["annotations"];
            if a["labels"]["alertname"] != "retransmission_storm" || ann["flow"] != flow_text {
                continue;
            }
            let Some(sentence) = ann["stitch"].as_str() else {
                continue;
            };
            last = Some(sentence.to_string());
            let Some((n, m)) = n_of_m(sentence) else {
                continue;
            };
            if n == m
                && n.abs_diff(dropped) <= tolerance
                && sentence
                    .contains("between hop client and hop server (direction client -> server:")
            {
                id = a["generatorURL"]
                    .as_str()
                    .and_then(|u| u.rsplit('/').next())
                    .map(str::to_string);
            }
        }
    }
    let notified = t0.elapsed();
    drop(receiver);
    let on_demand = |a: Ipv4Addr, ap: u16, b: Ipv4Addr, bp: u16| {
        let req = format!(r#"{{"flow":"{a}:{ap} -> {b}:{bp}"}}"#).into_bytes();
        lab.client
            .run(move || http(c_api, "POST", "/api/v1/stitch", &[], &req))
            .expect("client namespace")
            .expect("stitch request")
    };
    let Some(id) = id else {
        let (code, text) = on_demand(client, cport, server, port);
        panic!(
            "within {WITHIN:?}: a retransmission_storm notification for {flow_text} whose \
             stitch annotation puts {dropped} (±{tolerance}) of as many lost packets on \
             client -> server; last stitch annotation seen: {last:?}; stitched now: HTTP {code} {text}"
        )
    };
    let sentence = last.unwrap_or_default();

    // The structured report on the incident.
    let path = format!("/api/v1/incidents/{id}");
    let (status, body) = lab
        .client
        .run(move || api_get(c_api, &path))
        .expect("client namespace")
        .expect("incident");
    assert!(status.contains("200"), "incident {id}: {status}");
    let inc: serde_json::Value = serde_json::from_slice(&body).expect("incident JSON");
    let rep = &inc["stitch"];
    assert_eq!(rep["peers"][0]["hop"], "server", "the peer answered: {rep}");
    assert!(rep["peers"][0]["error"].is_null(), "no peer error: {rep}");
    let hops: Vec<&str> = rep["hops"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["name"].as_str())
        .collect();
    assert_eq!(
        hops,
        ["client", "server"],
        "path order from the TTL decrement"
    );
    let cs = link_lost(rep, "client", "server").expect("client -> server link");
    let sc = link_lost(rep, "server", "client").expect("server -> client link");
    assert!(
        cs.abs_diff(dropped) <= tolerance,
        "incident report: client -> server lost {cs} vs router counter {dropped}"
    );
    assert_eq!(sc, 0, "incident report: nothing lost server -> client");
    for l in rep["links"].as_array().into_iter().flatten() {
        assert_eq!(
            (l["unmatched"].as_u64(), l["duplicates"].as_u64()),
            (Some(0), Some(0)),
            "every packet seen downstream was seen upstream, once (GSO records split right): {l}"
        );
    }

    // On demand, naming the flow the other way round.
    let (code, text) = on_demand(server, port, client, cport);
    assert_eq!(code, 200, "POST /api/v1/stitch: {text}");
    let on_demand: serde_json::Value = serde_json::from_str(&text).expect("stitch JSON");
    assert_eq!(
        (
            link_lost(&on_demand, "client", "server"),
            link_lost(&on_demand, "server", "client")
        ),
        (Some(cs), Some(0)),
        "on demand, after the transfer, the same counts: {on_demand}"
    );
    let (code, text) = lab
        .client
        .run(move || http(c_api, "POST", "/api/v1/stitch", &[], b"{\"flow\":1}"))
        .expect("client namespace")
        .expect("stitch request");
    assert_eq!(code, 400, "a malformed stitch request: {text}");
    let (status, _) = lab
        .client
        .run(move || http_request(c_api, "POST", "/api/v1/stitch", &[], b"{}"))
        .expect("client namespace")
        .expect("stitch request");
    assert!(
        status.contains("401"),
        "a stitch request without a token: {status}"
    );

    // Ground-truth conditions: no record lost by either daemon; the server
    // served the client's queries.
    for (who, api) in [("client", c_api), ("server", s_api)] {
        let (_, m) = lab
            .client
            .run(move || api_get(api, "/metrics"))
            .expect("client namespace")
            .expect("metrics");
        let m = String::from_utf8_lossy(&m).to_string();
        for name in [
            "phalanx_kernel_ring_full_drops_total",
            "phalanx_capture_backlog_dropped_total",
        ] {
            assert_eq!(metric(&m, name), 0, "{who}: {name}");
        }
        if who == "server" {
            let ok = metric(&m, "phalanx_stitch_peer_requests_total{outcome=\"ok\"}");
            assert!(ok >= 2, "server answered the client's queries: {ok}");
        }
    }

    for (who, d) in [("client", cd), ("server", sd)] {
        let out = d.stop(Duration::from_secs(10)).expect("daemon exit");
        assert!(
            out.status.success(),
            "{who} daemon exits cleanly: {:?}",
            out.status
        );
    }
    println!(
        "router dropped {dropped}; incident annotation: {sentence:?}; report client->server lost {cs}, \
         server->client {sc}; transfer {took:.2?}, stitched notification {notified:.2?} after its start; \
         test {:.2?}",
        started.elapsed()
    );
}
