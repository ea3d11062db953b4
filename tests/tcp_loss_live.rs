//! Real Linux TCP through a lossy router, captured on both sides of it.
//!
//! client — router — server, three namespaces. The router drops a random 2%
//! of the client's forwarded data segments with nftables (`numgen random`,
//! counted). tcpdump records at the client's veth (upstream of the loss: the
//! sender's view) and at the server's veth (downstream: the receiver's
//! view). The truth comes from the router's counter and the two captures:
//! at the sender's side `retransmissions` must match the drops, at the
//! receiver's side the holes the drops left (one per dropped segment that
//! the receiver saw something above), both within 1%, and nothing may be
//! called reordering. Needs root; skips without it, except under CI=true.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use phalanx_daemon::{
    analyze::analyze_files,
    capture::file,
    flow::{FlowConfig, FlowSummary},
};
use phalanx_lab::{privileged, sh, unique, upload, Netns};

const PORT: u16 = 5201;
/// Bytes sent client -> server: ~11,600 segments, ~230 drops at 2%.
const BYTES: usize = 16 << 20;
const DROP_PERCENT: u32 = 2;
/// 200 Mbit/s: 16 MB in under a second.
const PACING_BYTES_PER_SEC: u32 = 25_000_000;

/// client (10.77.1.1) — (10.77.1.2) router (10.77.2.2) — server (10.77.2.1).
/// Dropping the namespaces removes the veths, the nft table and the routes.
struct Routed {
    client: Netns,
    router: Netns,
    server: Netns,
}

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);

impl Routed {
    fn new() -> Self {
        let client = Netns::new(&unique("pxc")).expect("client netns");
        let router = Netns::new(&unique("pxr")).expect("router netns");
        let server = Netns::new(&unique("pxs")).expect("server netns");
        let lab = Routed {
            client,
            router,
            server,
        };
        lab.link(&lab.client, "eth0", "10.77.1.1/24", "c0", "10.77.1.2/24");
        lab.link(&lab.server, "eth0", "10.77.2.1/24", "s0", "10.77.2.2/24");
        lab.router
            .exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
            .expect("forwarding on");
        lab.client
            .ip(&["route", "add", "10.77.2.0/24", "via", "10.77.1.2"])
            .expect("client route");
        lab.server
            .ip(&["route", "add", "10.77.1.0/24", "via", "10.77.2.2"])
            .expect("server route");
        lab
    }

    /// A veth pair from `host` (`h_if`) to the router (`r_if`), offloads
    /// off on both ends so captures see the segments the wire carries.
    fn link(&self, host: &Netns, h_if: &str, h_addr: &str, r_if: &str, r_addr: &str) {
        let (ta, tb) = (unique("pxh"), unique("pxr"));
        sh(&[
            "ip", "link", "add", &ta, "type", "veth", "peer", "name", &tb,
        ])
        .expect("veth");
        sh(&["ip", "link", "set", &ta, "netns", host.name(), "name", h_if]).expect("move");
        sh(&[
            "ip",
            "link",
            "set",
            &tb,
            "netns",
            self.router.name(),
            "name",
            r_if,
        ])
        .expect("move");
        for (ns, ifn, addr) in [(host, h_if, h_addr), (&self.router, r_if, r_addr)] {
            ns.ip(&["addr", "add", addr, "dev", ifn]).expect("addr");
            ns.exec(&[
                "ethtool", "-K", ifn, "tso", "off", "gso", "off", "gro", "off",
            ])
            .expect("offloads off");
            // veth hands each packet to the backlog of the CPU that sent it:
            // a sender moving between CPUs would reorder its own stream.
            // Steering every receive to CPU 0 keeps the path in order, like
            // a single-queue link, so every retransmission answers a drop.
            ns.exec(&[
                "sh",
                "-c",
                &format!("echo 1 > /sys/class/net/{ifn}/queues/rx-0/rps_cpus"),
            ])
            .expect("steer receive to one CPU");
            ns.ip(&["link", "set", ifn, "up"]).expect("up");
        }
    }

    /// Drops `percent`% of the client's forwarded data segments, counted.
    fn add_drops(&self, percent: u32) {
        self.router
            .drop_forwarded(&format!(
                "ip saddr {CLIENT} tcp dport {PORT} meta length > 100 numgen random mod 100 < {percent}"
            ))
            .expect("nft drop rule");
    }

    /// Packets the drop rule's counter has seen.
    fn drops(&self) -> u64 {
        self.router.dropped().expect("nft counter")
    }
}

/// The transmissions of data segments client -> server in a capture, keyed
/// by (IP id, sequence): the same key at both points is the same packet.
fn data_transmissions(pcap: &Path) -> Vec<(u32, u32)> {
    let reader = file::open(pcap).expect("open capture");
    let mut v = Vec::new();
    for rec in reader {
        let rec = rec.expect("capture intact");
        if rec.dport == PORT && rec.payload_len > 0 {
            v.push((rec.ip_id, rec.seq));
        }
    }
    v
}

/// The dropped segments the receiver can know were re-sent: a segment
/// dropped more than once leaves one hole; one dropped at the head of the
/// flight (nothing above it arrived before its re-send) leaves none, its
/// re-send is the first copy the receiver sees and reads as new data.
fn visible_holes(dropped: &[(u32, u32)], arrivals: &[(u32, u32)]) -> u64 {
    let lost: HashSet<u32> = dropped.iter().map(|t| t.1).collect();
    let mut seen: HashSet<u32> = HashSet::new();
    let mut highest: Option<u32> = None;
    let mut holes = 0;
    for &(_, seq) in arrivals {
        if lost.contains(&seq) && seen.insert(seq) {
            if highest.is_some_and(|h| (h.wrapping_sub(seq) as i32) > 0) {
                holes += 1;
            }
        } else {
            seen.insert(seq);
        }
        if highest.is_none_or(|h| (seq.wrapping_sub(h) as i32) > 0) {
            highest = Some(seq);
        }
    }
    holes
}

/// Re-sent transmissions (the sequence number was sent before) of the
/// sender's capture, and those of them that reached the receiver's capture
/// where it can know them (it had seen that sequence, or data above it,
/// before: a re-send of a segment dropped at the end of a flight reads as
/// new data): what each side's retransmission count should be, packet by
/// packet (matched by IP ID and sequence).
fn resends(sent: &[(u32, u32)], arrivals: &[(u32, u32)]) -> (u64, u64) {
    let mut first: HashSet<u32> = HashSet::new();
    let again: HashSet<(u32, u32)> = sent
        .iter()
        .copied()
        .filter(|t| !first.insert(t.1))
        .collect();
    let (mut seen, mut highest, mut known) = (HashSet::new(), None::<u32>, 0);
    for &(id, seq) in arrivals {
        let above = highest.is_some_and(|h| (h.wrapping_sub(seq) as i32) > 0);
        if again.contains(&(id, seq)) && (above || seen.contains(&seq)) {
            known += 1;
        }
        seen.insert(seq);
        if highest.is_none_or(|h| (seq.wrapping_sub(h) as i32) > 0) {
            highest = Some(seq);
        }
    }
    (again.len() as u64, known)
}

/// tshark's retransmissions (all kinds) and out-of-order segments.
fn tshark_counts(pcap: &Path) -> (usize, usize) {
    let count = |filter: &str| {
        let out = sh(&[
            "tshark",
            "-n",
            "-r",
            &pcap.display().to_string(),
            "-Y",
            filter,
            "-T",
            "fields",
            "-e",
            "frame.number",
        ])
        .expect("tshark");
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    (
        count("tcp.analysis.retransmission || tcp.analysis.fast_retransmission"),
        count("tcp.analysis.out_of_order"),
    )
}

fn the_flow(pcap: &Path) -> FlowSummary {
    let r = analyze_files(&[pcap.to_path_buf()], &FlowConfig::default()).expect("analyze");
    assert_eq!(r.inputs[0].error, None, "capture read to the end");
    let mut flows: Vec<_> = r.flows.into_iter().filter(|f| f.dport == PORT).collect();
    assert_eq!(flows.len(), 1, "one connection in {}", pcap.display());
    flows.remove(0)
}

fn within_one_percent(got: u64, want: u64) -> bool {
    got.abs_diff(want) as f64 <= want as f64 * 0.01
}

#[test]
fn retransmissions_match_router_drops_at_sender_and_receiver() {
    if !privileged("retransmissions_match_router_drops_at_sender_and_receiver") {
        return;
    }
    lossy_upload(Some(PACING_BYTES_PER_SEC));
}

#[test]
fn unpaced_retransmissions_match_router_drops_at_sender_and_receiver() {
    // Unpaced, the sender's bursts overrun the drop rule's path and the
    // receiver sees originals arrive after segments above them.
    if !privileged("unpaced_retransmissions_match_router_drops_at_sender_and_receiver") {
        return;
    }
    lossy_upload(None);
}

/// One lossy upload, captured on both sides of the router, checked
/// against the per-packet truth of the two captures.
fn lossy_upload(pacing: Option<u32>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let lab = Routed::new();
    lab.add_drops(DROP_PERCENT);
    let at_client: PathBuf = dir.path().join("client.pcap");
    let at_server: PathBuf = dir.path().join("server.pcap");
    let port = PORT.to_string();
    let filter = ["tcp", "port", port.as_str()];
    let dump_c = lab
        .client
        .tcpdump("eth0", &filter, &at_client)
        .expect("client tcpdump");
    let dump_s = lab
        .server
        .tcpdump("eth0", &filter, &at_server)
        .expect("server tcpdump");

    let t0 = Instant::now();
    let got = upload(
        &lab.client,
        &lab.server,
        SocketAddr::from((SERVER, PORT)),
        BYTES,
        pacing,
    )
    .expect("upload")
    .received;
    let took = t0.elapsed();
    assert_eq!(got, BYTES, "server received everything");
    // Let the last ACKs and FINs reach the capture files.
    std::thread::sleep(Duration::from_millis(300));
    let lost_c = dump_c.stop().expect("client tcpdump report");
    let lost_s = dump_s.stop().expect("server tcpdump report");
    assert_eq!((lost_c, lost_s), (0, 0), "captures complete");
    let drops = lab.drops();

    // Ground truth from the two captures: every transmission the sender's
    // side saw and the receiver's did not was dropped by the router.
    let sent = data_transmissions(&at_client);
    let arrivals = data_transmissions(&at_server);
    let arrived: HashSet<(u32, u32)> = arrivals.iter().copied().collect();
    let dropped: Vec<(u32, u32)> = sent
        .iter()
        .copied()
        .filter(|t| !arrived.contains(t))
        .collect();
    assert_eq!(
        dropped.len() as u64,
        drops,
        "transmissions missing downstream = router's drop counter"
    );
    assert!(
        drops > 100,
        "the 2% rule dropped enough to measure 1% ({drops})"
    );
    let holes = visible_holes(&dropped, &arrivals);
    let (resent, resent_arrived) = resends(&sent, &arrivals);
    let distinct = dropped.iter().map(|t| t.1).collect::<HashSet<_>>().len();

    let snd = the_flow(&at_client);
    let rcv = the_flow(&at_server);
    let (ts_snd, ts_snd_ooo) = tshark_counts(&at_client);
    let (ts_rcv, ts_rcv_ooo) = tshark_counts(&at_server);
    println!(
        "transfer {} MB in {took:.2?} (pacing {pacing:?}); router dropped {drops} segments ({distinct} distinct, {holes} seen as holes downstream); {resent} re-sends, {resent_arrived} arrived",
        BYTES >> 20
    );
    println!("                    retrans (fast/timeout/spurious/late)  out_of_order | tshark retrans  out_of_order");
    for (name, f, tr, to) in [
        ("sender (client)", &snd, ts_snd, ts_snd_ooo),
        ("receiver (server)", &rcv, ts_rcv, ts_rcv_ooo),
    ] {
        println!(
            "{name:<19} {:>6} ({}/{}/{}/{}) {:>24} | {tr:>14} {to:>13}",
            f.retransmissions,
            f.retrans_fast,
            f.retrans_timeout,
            f.retrans_spurious,
            f.late_fills,
            f.out_of_order
        );
    }

    // Sender side: every re-send passed the client's veth. Paced, each
    // answers a drop; unpaced, the sender also re-sends spuriously (its
    // own bursts reorder on the way, and it recovers early).
    let r = u64::from(snd.retransmissions);
    assert!(
        within_one_percent(r, resent),
        "sender side: {r} retransmissions vs {resent} re-sends ({drops} router drops)"
    );
    if pacing.is_some() {
        assert!(
            within_one_percent(resent, drops),
            "paced: {resent} re-sends answer {drops} drops"
        );
    }
    // Receiver side: the re-sends that arrived, packet by packet (matched
    // by IP ID and sequence); each hole is filled late by one of them.
    let r = u64::from(rcv.retransmissions);
    assert!(
        within_one_percent(r, resent_arrived),
        "receiver side: {r} retransmissions vs {resent_arrived} re-sends arrived ({holes} holes, {drops} drops)"
    );
    assert!(
        within_one_percent(u64::from(rcv.late_fills), holes),
        "receiver side: late fills {} vs {holes} holes",
        rcv.late_fills
    );
    for (name, f) in [("sender", &snd), ("receiver", &rcv)] {
        assert!(
            (f.out_of_order as f64) < drops as f64 * 0.01,
            "{name} side: {} out-of-order segments, loss is not reordering",
            f.out_of_order
        );
    }
    assert!(took < Duration::from_secs(15), "bounded transfer: {took:?}");
}
