//! Live capture on veth pairs between network namespaces, with real TCP
//! traffic of known size: the records must match the packets on the wire.
//! Needs root; skips without it, except under CI=true.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::Mutex,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use phalanx_common::{Counter, PacketMeta, RecordKind};
use phalanx_daemon::{
    capture::ebpf::Capture,
    config::{AttachMode, CaptureConfig, FilterRule, FlowSpec},
};
use phalanx_lab::{
    http_get, http_get_within, metric, privileged, sh, upload, Netns, Proc, Routed, TwoHosts,
};

/// Attach/detach and the interface counters must not interleave across tests.
static SERIAL: Mutex<()> = Mutex::new(());

const UP: usize = 50_000;
const DOWN: usize = 120_000;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Loads and attaches inside `ns`, so the interface name resolves there.
fn attach(
    ns: &Netns,
    iface: &str,
    mode: AttachMode,
    filters: Vec<FilterRule>,
) -> (Capture, RingBuf<MapData>) {
    let cfg = CaptureConfig {
        filters,
        ..CaptureConfig::default()
    };
    let iface = iface.to_string();
    ns.run(move || {
        let (mut c, ring) = Capture::load(&cfg).expect("load kernel programs");
        c.attach(&iface, mode).expect("attach");
        (c, ring)
    })
    .expect("enter namespace")
}

fn drain(ring: &mut RingBuf<MapData>) -> Vec<PacketMeta> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(PacketMeta::from_bytes(&item).expect("record size"));
    }
    out
}

/// Server in `b` echoing `DOWN` bytes after reading `UP`; client in `a` from `cport`.
fn transfer(hosts: &TwoHosts, server: IpAddr, client: IpAddr, sport: u16, cport: u16) {
    let listen = SocketAddr::new(server, sport);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let srv = {
        let b_name = hosts.b.name().to_string();
        std::thread::spawn(move || {
            let f = std::fs::File::open(format!("/var/run/netns/{b_name}")).expect("netns b");
            // SAFETY: joins this thread only to the namespace.
            assert_eq!(
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) },
                0
            );
            let l = TcpListener::bind(listen).expect("bind server");
            ready_tx.send(()).expect("ready");
            let (mut s, _) = l.accept().expect("accept");
            let mut buf = vec![0u8; UP];
            s.read_exact(&mut buf).expect("read upload");
            s.write_all(&vec![7u8; DOWN]).expect("write download");
        })
    };
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server ready");
    hosts
        .a
        .run(move || {
            let sock = socket2_bind(client, cport);
            let mut s = sock.connect(listen);
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s.write_all(&vec![1u8; UP]).expect("upload");
            let mut got = Vec::new();
            s.read_to_end(&mut got).expect("download");
            assert_eq!(got.len(), DOWN, "download size");
        })
        .expect("client namespace");
    srv.join().expect("server thread");
}

/// A client socket bound to a fixed port (std has no bind-before-connect).
struct Bound(i32);

fn socket2_bind(ip: IpAddr, port: u16) -> Bound {
    let fam = if ip.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket syscalls on a fresh fd with correctly sized sockaddrs.
    unsafe {
        let fd = libc::socket(fam, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket");
        let one: i32 = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const i32).cast(),
            4,
        );
        let (sa, len) = sockaddr(SocketAddr::new(ip, port));
        assert_eq!(
            libc::bind(fd, sa.as_ptr().cast(), len),
            0,
            "bind client port {port}"
        );
        Bound(fd)
    }
}

fn sockaddr(a: SocketAddr) -> (Vec<u8>, u32) {
    match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            let p = (&sin as *const libc::sockaddr_in).cast::<u8>();
            // SAFETY: reading the bytes of a plain C struct.
            (
                unsafe { std::slice::from_raw_parts(p, std::mem::size_of_val(&sin)) }.to_vec(),
                std::mem::size_of_val(&sin) as u32,
            )
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            let p = (&sin6 as *const libc::sockaddr_in6).cast::<u8>();
            // SAFETY: as above.
            (
                unsafe { std::slice::from_raw_parts(p, std::mem::size_of_val(&sin6)) }.to_vec(),
                std::mem::size_of_val(&sin6) as u32,
            )
        }
    }
}

impl Bound {
    fn connect(self, to: SocketAddr) -> TcpStream {
        let (sa, len) = sockaddr(to);
        // SAFETY: connect on our fd; ownership then moves into TcpStream.
        unsafe {
            assert_eq!(
                libc::connect(self.0, sa.as_ptr().cast(), len),
                0,
                "connect to {to}"
            );
            let s = <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(self.0);
            std::mem::forget(self);
            s
        }
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        // SAFETY: closing our own fd.
        unsafe { libc::close(self.0) };
    }
}

fn flow_records(recs: &[PacketMeta], port: u16) -> Vec<PacketMeta> {
    recs.iter()
        .copied()
        .filter(|r| r.kind == RecordKind::Tcp as u8 && (r.sport == port || r.dport == port))
        .collect()
}

/// The fields a record takes from the packet's headers (not the capture
/// point's own: time, interface, direction, GSO shape), for comparing the
/// kernel parser with the file parser on the same packets.
#[allow(clippy::type_complexity)]
fn header_fields(
    r: &PacketMeta,
) -> (
    (u8, u8, u8, [u8; 16], [u8; 16], u32, u16, u8, u8, u8),
    (u16, u16, u32, u32, u8, u16, u32),
    (
        u8,
        u16,
        u8,
        u32,
        u32,
        u8,
        [u32; 2 * phalanx_common::MAX_SACK_BLOCKS],
    ),
    (u8, u16, u16),
) {
    (
        (
            r.kind,
            r.ip_version,
            r.l4_proto,
            r.src_addr,
            r.dst_addr,
            r.ip_id,
            r.ip_len,
            r.ttl,
            r.tos,
            r.ip_flags,
        ),
        (
            r.sport,
            r.dport,
            r.seq,
            r.ack,
            r.tcp_flags,
            r.window,
            r.payload_len,
        ),
        (
            r.tcp_opts,
            r.mss,
            r.wscale,
            r.tsval,
            r.tsecr,
            r.sack_count,
            r.sack,
        ),
        (r.vlan_count, r.outer_vlan, r.inner_vlan),
    )
}

/// Payload bytes per direction (client->server, server->client) counted from records.
fn payload_by_direction(recs: &[PacketMeta], server_port: u16) -> (u64, u64) {
    let mut up = 0;
    let mut down = 0;
    for r in recs {
        if r.dport == server_port {
            up += u64::from(r.payload_len);
        } else {
            down += u64::from(r.payload_len);
        }
    }
    (up, down)
}

fn tcpdump_count(pcap: &std::path::Path, filter: &str) -> usize {
    let out =
        sh(&["tcpdump", "-nn", "-r", &pcap.display().to_string(), filter]).expect("tcpdump -r");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn records_match_the_wire(mode: AttachMode) {
    let _g = serial();
    let hosts = TwoHosts::new("lc").expect("lab");
    let dir = tempfile::tempdir().expect("tempdir");
    let pcap = dir.path().join("wire.pcap");
    let dump = hosts
        .a
        .tcpdump(&hosts.a_if, &["tcp"], &pcap)
        .expect("tcpdump");
    let (cap, mut ring) = attach(&hosts.a, &hosts.a_if, mode, Vec::new());
    let rx0 = hosts.a.if_stat(&hosts.a_if, "rx_packets").expect("rx");
    let tx0 = hosts.a.if_stat(&hosts.a_if, "tx_packets").expect("tx");
    let seen0 = cap.counters().expect("counters")[Counter::Seen as usize];

    transfer(&hosts, hosts.v4(2).into(), hosts.v4(1).into(), 9000, 40001);
    std::thread::sleep(Duration::from_millis(300));

    // Background packets (IPv6 neighbour discovery) can land between two
    // reads: compare once both counters stand still.
    let read = || {
        let seen = cap.counters().expect("counters")[Counter::Seen as usize] - seen0;
        let wire = hosts.a.if_stat(&hosts.a_if, "rx_packets").expect("rx") - rx0
            + hosts.a.if_stat(&hosts.a_if, "tx_packets").expect("tx")
            - tx0;
        (seen, wire)
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let (seen, wire) = loop {
        let first = read();
        std::thread::sleep(Duration::from_millis(50));
        let second = read();
        if (first == second && first.0 == first.1) || Instant::now() > deadline {
            break second;
        }
    };
    let recs = flow_records(&drain(&mut ring), 9000);
    let counters = cap.counters().expect("counters");
    drop(cap);
    let tcpdump_drops = dump.stop().expect("tcpdump exit report");
    assert_eq!(tcpdump_drops, 0, "tcpdump lost nothing");
    let dumped = tcpdump_count(&pcap, "tcp port 9000");
    let size = std::fs::metadata(&pcap).map(|m| m.len()).unwrap_or(0);
    eprintln!("pcap {} bytes", size);
    let (up, down) = payload_by_direction(&recs, 9000);
    eprintln!(
        "{mode}: records {} tcpdump {dumped} | kernel seen {seen} wire {wire} | payload up {up} down {down} | counters {counters:?}",
        recs.len()
    );
    assert_eq!(
        seen, wire,
        "{mode}: programs ran on every packet the interface counted"
    );
    assert_eq!(
        recs.len(),
        dumped,
        "{mode}: one record per packet tcpdump saw on the same interface"
    );
    assert_eq!(
        (up, down),
        (UP as u64, DOWN as u64),
        "{mode}: payload bytes per direction"
    );
    // Field by field, the kernel's records are the file parser's records of
    // tcpdump's copy of the same packets.
    let mut kernel: Vec<_> = recs.iter().map(header_fields).collect();
    let mut file: Vec<_> = phalanx_daemon::capture::file::open(&pcap)
        .expect("open tcpdump's capture")
        .map(|r| r.expect("tcpdump's capture reads cleanly"))
        .filter(|r| r.kind == RecordKind::Tcp as u8 && (r.sport == 9000 || r.dport == 9000))
        .map(|r| header_fields(&r))
        .collect();
    kernel.sort();
    file.sort();
    for (k, f) in kernel.iter().zip(&file) {
        assert_eq!(
            k, f,
            "{mode}: kernel record vs file parser on tcpdump's packet"
        );
    }
    assert_eq!(kernel.len(), file.len());
    // GSO super-packets carry the kernel's segment size: every segment but
    // the last is that long.
    let gso: Vec<&PacketMeta> = recs.iter().filter(|r| r.segs > 1).collect();
    for r in &gso {
        let (g, n) = (u32::from(r.gso_size), u32::from(r.segs));
        assert!(
            g > 0 && r.payload_len > (n - 1) * g && r.payload_len <= n * g,
            "{mode}: GSO record of {} bytes in {n} segments has segment size {g}",
            r.payload_len
        );
    }
    assert!(
        !gso.is_empty(),
        "{mode}: the sender's egress builds GSO super-packets"
    );
    // One definition whatever the source: the ring's records and
    // tcpdump's file of the same packets (its super-frames carry no
    // segment count) give the same counts. (RTT samples are timed where
    // each was taken, tcx or AF_PACKET, a few microseconds apart, and may
    // differ by one.)
    let figures = |r: &phalanx_daemon::analyze::Report| {
        let f = r
            .flows
            .iter()
            .find(|f| f.dport == 9000 || f.sport == 9000)
            .expect("the flow");
        (
            f.packets,
            f.goodput_bytes,
            f.retransmissions,
            f.dup_acks,
            f.out_of_order,
            f.window_full,
        )
    };
    let cfg = phalanx_daemon::flow::FlowConfig::default();
    let live = phalanx_daemon::analyze::analyze_records(recs.clone(), &cfg);
    let offline =
        phalanx_daemon::analyze::analyze_files(std::slice::from_ref(&pcap), &cfg).expect("analyze");
    assert_eq!(
        figures(&live),
        figures(&offline),
        "{mode}: live vs offline figures"
    );
    assert!(
        recs.iter().all(|r| r.segs > 1 || r.gso_size == 0),
        "{mode}: single segments carry no GSO size"
    );
    assert_eq!(
        counters[Counter::RingFull as usize],
        0,
        "no ring-full drops"
    );
    assert_eq!(
        counters[Counter::ParseError as usize],
        0,
        "no parse errors on clean traffic"
    );
    let syn = recs
        .iter()
        .find(|r| r.tcp_flags == phalanx_common::tcp_flags::SYN)
        .expect("SYN record");
    assert_eq!(syn.sport, 40001);
    assert_eq!(syn.src_ip(), IpAddr::from(hosts.v4(1)));
    assert!(
        syn.mss > 0 && syn.tcp_opts & phalanx_common::tcp_opts::MSS != 0,
        "SYN carries MSS"
    );
    assert!(
        syn.tcp_opts & phalanx_common::tcp_opts::TIMESTAMPS != 0,
        "Linux SYN carries timestamps"
    );
}

/// The figures one definition must give whatever the source.
fn flow_figures(r: &phalanx_daemon::analyze::Report, port: u16) -> [u64; 9] {
    let f = r
        .flows
        .iter()
        .find(|f| f.dport == port || f.sport == port)
        .expect("the flow");
    [
        f.packets,
        f.goodput_bytes,
        f.retransmissions.into(),
        f.retrans_fast.into(),
        f.retrans_timeout.into(),
        f.retrans_spurious.into(),
        f.dup_acks.into(),
        f.out_of_order.into(),
        f.window_full.into(),
    ]
}

/// A lossy upload over a 20 ms path, seen at the sender with segmentation
/// offload on: the ring's GSO records and tcpdump's file of the same
/// packets (super-frames with no segment count) give the same counts,
/// and the re-sent segments cover the router's drops.
#[test]
fn lossy_gso_upload_counts_the_same_live_and_offline() {
    if !privileged("lossy_gso_upload_counts_the_same_live_and_offline") {
        return;
    }
    let _g = serial();
    let lab = Routed::new("lg").expect("client-router-server lab");
    let port = 9311u16;
    let (client, server) = (lab.client_v4(), lab.server_v4());
    // 2 % of the data segments at random, counted: as they come back
    // from the delay line, one wire segment each (on the way in they are
    // the sender's GSO super-packets).
    lab.router
        .drop_forwarded(&format!(
            "iifname \"{}\" ip saddr {client} ip daddr {server} tcp dport {port} \
             meta length > 200 numgen random mod 100 < 2",
            phalanx_lab::delay::TUN
        ))
        .expect("drop rule");
    let delay = lab
        .delay(Duration::from_millis(10), Duration::ZERO)
        .expect("delay line");
    let dir = tempfile::tempdir().expect("tempdir");
    let pcap = dir.path().join("sender.pcap");
    let dump = lab
        .client
        .tcpdump(Routed::IF, &["tcp", "port", &port.to_string()], &pcap)
        .expect("tcpdump");
    let (cap, mut ring) = attach(&lab.client, Routed::IF, AttachMode::Tcx, Vec::new());
    let addr = SocketAddr::new(server.into(), port);
    let sent = upload(&lab.client, &lab.server, addr, 6 << 20, None).expect("upload");
    std::thread::sleep(Duration::from_millis(300));
    let recs = flow_records(&drain(&mut ring), port);
    let counters = cap.counters().expect("counters");
    drop(cap);
    assert_eq!(
        dump.stop().expect("tcpdump exit report"),
        0,
        "tcpdump lost nothing"
    );
    let delayed = delay.stop();
    let drops = lab.router.dropped().expect("drop counter") + delayed.queue_drops;
    let cfg = phalanx_daemon::flow::FlowConfig::default();
    let live = flow_figures(
        &phalanx_daemon::analyze::analyze_records(recs.clone(), &cfg),
        port,
    );
    let offline = flow_figures(
        &phalanx_daemon::analyze::analyze_files(std::slice::from_ref(&pcap), &cfg)
            .expect("analyze"),
        port,
    );
    let gso = recs.iter().filter(|r| r.segs > 1).count();
    eprintln!(
        "upload {sent:?}; drops {drops}; delay line {delayed:?}; records {} ({gso} GSO) \
         | live [packets, goodput, retrans, fast, timeout, spurious, dup_acks, ooo, window_full] \
         {live:?} | offline {offline:?}",
        recs.len()
    );
    assert_eq!(
        counters[Counter::RingFull as usize],
        0,
        "no ring-full drops"
    );
    assert!(gso > 0, "the sender's egress builds GSO super-packets");
    assert!(drops >= 20, "the router dropped segments: {drops}");
    assert_eq!(live, offline, "live vs offline figures of one lossy run");
    // The sender re-sends every dropped segment, and a timeout's resend
    // of a whole window may re-send more.
    assert!(
        live[2] >= drops,
        "retransmissions {} cover the {drops} drops",
        live[2]
    );
}

#[test]
fn tcx_records_match_the_wire() {
    if privileged("tcx_records_match_the_wire") {
        records_match_the_wire(AttachMode::Tcx);
    }
}

#[test]
fn xdp_records_match_the_wire() {
    if privileged("xdp_records_match_the_wire") {
        records_match_the_wire(AttachMode::Xdp);
    }
}

/// A router watching both of its interfaces records each forwarded packet
/// once, on arrival (tcpdump at its client-side interface sees every packet
/// of the flow exactly once), counts the departures it skipped, and still
/// records packets it sends itself on departure.
fn router_records_forwarded_packets_once(mode: AttachMode) {
    let _g = serial();
    let lab = Routed::new("lf").expect("client-router-server lab");
    lab.offloads_off().expect("offloads off");
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, server, router_s) = (
        IpAddr::from(lab.client_v4()),
        IpAddr::from(lab.server_v4()),
        // The router's address on the server-side link.
        IpAddr::from(std::net::Ipv4Addr::new(10, lab.subnet, 2, 1)),
    );
    let (fwd_port, local_port) = (9301u16, 9302u16);
    let pcap = dir.path().join("router-eth0.pcap");
    let pcap_s = dir.path().join("router-eth1.pcap");
    let dump = lab
        .router
        .tcpdump(Routed::IF, &["tcp"], &pcap)
        .expect("tcpdump eth0");
    let dump_s = lab
        .router
        .tcpdump(Routed::ROUTER_SERVER_IF, &["tcp"], &pcap_s)
        .expect("tcpdump eth1");
    let cfg = CaptureConfig::default();
    let (cap, mut ring) = lab
        .router
        .run(move || {
            let (mut c, ring) = Capture::load(&cfg).expect("load kernel programs");
            c.attach(Routed::IF, mode).expect("attach eth0");
            c.attach(Routed::ROUTER_SERVER_IF, mode)
                .expect("attach eth1");
            (c, ring)
        })
        .expect("enter namespace");
    let fwd0 = cap.counters().expect("counters")[Counter::Forwarded as usize];

    // Forwarded: client -> server; local: router -> server.
    for (from, src, port) in [
        (&lab.client, client, fwd_port),
        (&lab.router, router_s, local_port),
    ] {
        std::thread::scope(|sc| {
            let (tx, rx) = std::sync::mpsc::channel();
            let srv = sc.spawn(|| {
                lab.server
                    .run(move || {
                        let l = TcpListener::bind(SocketAddr::new(server, port)).expect("bind");
                        tx.send(()).expect("ready");
                        let (mut c, _) = l.accept().expect("accept");
                        let mut buf = vec![0u8; UP];
                        c.read_exact(&mut buf).expect("read");
                        c.write_all(&vec![7u8; DOWN]).expect("write");
                    })
                    .expect("server namespace")
            });
            rx.recv_timeout(Duration::from_secs(5)).expect("listening");
            from.run(move || {
                let mut c = TcpStream::connect_timeout(
                    &SocketAddr::new(server, port),
                    Duration::from_secs(5),
                )
                .expect("connect");
                assert_eq!(c.local_addr().expect("addr").ip(), src);
                c.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                c.write_all(&vec![1u8; UP]).expect("write");
                let mut got = Vec::new();
                c.read_to_end(&mut got).expect("read");
                assert_eq!(got.len(), DOWN);
            })
            .expect("client namespace");
            srv.join().expect("server thread");
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        dump.stop().expect("tcpdump report"),
        0,
        "eth0 capture complete"
    );
    assert_eq!(
        dump_s.stop().expect("tcpdump report"),
        0,
        "eth1 capture complete"
    );
    let recs = drain(&mut ring);
    let forwarded = cap.counters().expect("counters")[Counter::Forwarded as usize] - fwd0;
    drop(cap);

    let fwd = flow_records(&recs, fwd_port);
    let on_wire = tcpdump_count(&pcap, &format!("tcp port {fwd_port}"));
    assert!(
        on_wire > 20,
        "the forwarded transfer crossed eth0: {on_wire}"
    );
    assert_eq!(
        fwd.len(),
        on_wire,
        "{mode}: each forwarded packet recorded once"
    );
    assert!(
        fwd.iter()
            .all(|r| r.direction == phalanx_common::Direction::Ingress as u8),
        "{mode}: forwarded packets are recorded on arrival"
    );
    assert_eq!(
        forwarded as usize,
        tcpdump_count(&pcap_s, &format!("tcp port {fwd_port}")),
        "{mode}: every forwarded departure counted as skipped"
    );
    // Packet for packet, the records are tcpdump's copy of eth0: a packet
    // recorded twice (on arrival and again on departure) would show as a
    // second record with the same IP ID. The server's packets reach eth0
    // after forwarding, so the TTL is left out. The wire is the reference
    // for resends too: on a loaded machine the client's sender may resend
    // what a full veth queue dropped before eth0.
    let id = |r: &PacketMeta| {
        (
            r.src_addr,
            r.dst_addr,
            r.sport,
            r.dport,
            r.ip_id,
            r.seq,
            r.ack,
            r.tcp_flags,
            r.payload_len,
        )
    };
    let mut kernel: Vec<_> = fwd.iter().map(id).collect();
    let wire_recs: Vec<PacketMeta> = phalanx_daemon::capture::file::open(&pcap)
        .expect("open tcpdump's capture")
        .map(|r| r.expect("tcpdump's capture reads cleanly"))
        .filter(|r| r.kind == RecordKind::Tcp as u8 && (r.sport == fwd_port || r.dport == fwd_port))
        .collect();
    let mut wire: Vec<_> = wire_recs.iter().map(id).collect();
    kernel.sort();
    wire.sort();
    assert_eq!(kernel, wire, "{mode}: each forwarded packet recorded once");
    let mut table = phalanx_daemon::flow::FlowTable::new(Default::default());
    for r in &fwd {
        table.ingest(r);
    }
    let flows = table.snapshot();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].packets as usize, on_wire);
    eprintln!(
        "{mode}: {} retransmissions in the forwarded flow",
        flows[0].retransmissions
    );

    let local = flow_records(&recs, local_port);
    let local_wire = tcpdump_count(&pcap_s, &format!("tcp port {local_port}"));
    // The router's own segments leave as GSO super-packets: tc sees them
    // before segmentation, tcpdump after.
    let local_segs: usize = local.iter().map(|r| usize::from(r.segs.max(1))).sum();
    assert_eq!(
        local_segs, local_wire,
        "{mode}: the router's own packets recorded"
    );
    assert!(local
        .iter()
        .any(|r| r.direction == phalanx_common::Direction::Egress as u8));
    eprintln!("{mode}: forwarded flow {on_wire} packets recorded once, {forwarded} departures skipped; local flow {local_wire}");
}

#[test]
fn router_records_forwarded_packets_once_tcx() {
    if privileged("router_records_forwarded_packets_once_tcx") {
        router_records_forwarded_packets_once(AttachMode::Tcx);
    }
}

#[test]
fn router_records_forwarded_packets_once_xdp() {
    if privileged("router_records_forwarded_packets_once_xdp") {
        router_records_forwarded_packets_once(AttachMode::Xdp);
    }
}

#[test]
fn filter_scopes_one_flow() {
    if !privileged("filter_scopes_one_flow") {
        return;
    }
    let _g = serial();
    let hosts = TwoHosts::new("lf").expect("lab");
    let spec: FlowSpec = format!("{}:40011 -> {}:9001", hosts.v4(1), hosts.v4(2))
        .parse()
        .expect("flow spec");
    let rule = FilterRule {
        flow: Some(spec),
        ..FilterRule::default()
    };
    let (cap, mut ring) = attach(&hosts.a, &hosts.a_if, AttachMode::Tcx, vec![rule]);
    transfer(&hosts, hosts.v4(2).into(), hosts.v4(1).into(), 9001, 40011);
    transfer(&hosts, hosts.v4(2).into(), hosts.v4(1).into(), 9002, 40012);
    std::thread::sleep(Duration::from_millis(200));
    let recs = drain(&mut ring);
    let matched = cap.counters().expect("counters")[Counter::Matched as usize];
    drop(cap);
    assert!(!recs.is_empty(), "the scoped flow produced records");
    for r in &recs {
        let ports = (r.sport.min(r.dport), r.sport.max(r.dport));
        assert_eq!(
            ports,
            (9001, 40011),
            "record outside the scoped flow: {r:?}"
        );
    }
    assert_eq!(
        matched as usize,
        recs.len(),
        "matched counter equals records"
    );
    let (up, down) = payload_by_direction(&recs, 9001);
    assert_eq!(
        (up, down),
        (UP as u64, DOWN as u64),
        "both directions of the scoped flow"
    );
}

/// Sends hand-built frames from `b` onto the link with an AF_PACKET socket.
fn inject(hosts: &TwoHosts, frames: Vec<Vec<u8>>) {
    let ifname = hosts.b_if.clone();
    hosts
        .b
        .run(move || {
            let c = std::ffi::CString::new(ifname).expect("ifname");
            // SAFETY: packet socket syscalls with a correctly sized sockaddr_ll.
            unsafe {
                let ifindex = libc::if_nametoindex(c.as_ptr());
                assert!(ifindex > 0, "ifindex");
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
                assert!(fd >= 0, "AF_PACKET socket (root)");
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_ifindex = ifindex as i32;
                sll.sll_halen = 6;
                for f in &frames {
                    let n = libc::sendto(
                        fd,
                        f.as_ptr().cast(),
                        f.len(),
                        0,
                        (&sll as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    );
                    assert_eq!(n, f.len() as isize, "sendto");
                }
                libc::close(fd);
            }
        })
        .expect("namespace b");
}

fn mac(ns: &Netns, iface: &str) -> [u8; 6] {
    let out = ns
        .exec(&["cat", &format!("/sys/class/net/{iface}/address")])
        .expect("mac");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut m = [0u8; 6];
    for (slot, part) in m.iter_mut().zip(text.split(':')) {
        *slot = u8::from_str_radix(part, 16).expect("hex");
    }
    m
}

/// A TCP SYN with MSS/SACK-permitted/timestamps/window-scale options, under `tags` VLAN tags.
fn tagged_syn(src_mac: [u8; 6], dst_mac: [u8; 6], tags: &[u16], sport: u16) -> Vec<u8> {
    use etherparse::{PacketBuilder, TcpOptionElement as O};
    let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
    let opts = [
        O::MaximumSegmentSize(1460),
        O::SelectiveAcknowledgementPermitted,
        O::Timestamp(1000, 0),
        O::Noop,
        O::WindowScale(7),
    ];
    let ip = |b: etherparse::PacketBuilderStep<etherparse::VlanHeader>| {
        b.ipv4([10, 250, 0, 2], [10, 250, 0, 1], 64)
    };
    let mut out = Vec::new();
    let payload: [u8; 0] = [];
    match tags {
        [outer] => {
            let b = ip(eth.single_vlan((*outer).try_into().expect("vid")))
                .tcp(sport, 9005, 1_000_000, 64240)
                .syn()
                .options(&opts)
                .expect("options");
            b.write(&mut out, &payload).expect("frame");
        }
        [outer, inner] => {
            let b = ip(eth.double_vlan(
                (*outer).try_into().expect("vid"),
                (*inner).try_into().expect("vid"),
            ))
            .tcp(sport, 9005, 1_000_000, 64240)
            .syn()
            .options(&opts)
            .expect("options");
            b.write(&mut out, &payload).expect("frame");
        }
        _ => unreachable!("one or two tags"),
    }
    out
}

fn vlan_frames_parse(mode: AttachMode) {
    let _g = serial();
    let hosts = TwoHosts::new("lv").expect("lab");
    let (cap, mut ring) = attach(&hosts.a, &hosts.a_if, mode, Vec::new());
    let (a_mac, b_mac) = (mac(&hosts.a, &hosts.a_if), mac(&hosts.b, &hosts.b_if));
    let mut frames = Vec::new();
    for i in 0..5 {
        frames.push(tagged_syn(b_mac, a_mac, &[100], 41000 + i));
        frames.push(tagged_syn(b_mac, a_mac, &[10, 20], 42000 + i));
    }
    inject(&hosts, frames);
    std::thread::sleep(Duration::from_millis(200));
    let recs: Vec<PacketMeta> = drain(&mut ring)
        .into_iter()
        .filter(|r| r.dport == 9005)
        .collect();
    drop(cap);
    let single: Vec<_> = recs
        .iter()
        .filter(|r| (41000..41005).contains(&r.sport))
        .collect();
    let double: Vec<_> = recs
        .iter()
        .filter(|r| (42000..42005).contains(&r.sport))
        .collect();
    assert_eq!(
        (single.len(), double.len()),
        (5, 5),
        "{mode}: one record per injected frame"
    );
    for r in single {
        assert_eq!(
            (r.vlan_count, r.outer_vlan, r.inner_vlan),
            (1, 100, 0),
            "{mode}: 802.1Q tag: {r:?}"
        );
    }
    for r in &double {
        assert_eq!(
            (r.vlan_count, r.outer_vlan, r.inner_vlan),
            (2, 10, 20),
            "{mode}: QinQ tags: {r:?}"
        );
    }
    let r = double[0];
    assert_eq!(
        (r.mss, r.wscale, r.tsval),
        (1460, 7, 1000),
        "{mode}: options behind two tags"
    );
    assert_eq!(r.src_ip(), IpAddr::from([10, 250, 0, 2]));
}

#[test]
fn vlan_frames_parse_tcx() {
    if privileged("vlan_frames_parse_tcx") {
        vlan_frames_parse(AttachMode::Tcx);
    }
}

#[test]
fn vlan_frames_parse_xdp() {
    if privileged("vlan_frames_parse_xdp") {
        vlan_frames_parse(AttachMode::Xdp);
    }
}

#[test]
fn ipv6_traffic_parses() {
    if !privileged("ipv6_traffic_parses") {
        return;
    }
    let _g = serial();
    let hosts = TwoHosts::new("l6").expect("lab");
    let (cap, mut ring) = attach(&hosts.a, &hosts.a_if, AttachMode::Tcx, Vec::new());
    transfer(&hosts, hosts.v6(2).into(), hosts.v6(1).into(), 9004, 40022);
    std::thread::sleep(Duration::from_millis(200));
    let recs = drain(&mut ring);
    drop(cap);
    let v6 = flow_records(&recs, 9004);
    assert!(!v6.is_empty(), "IPv6 flow produced records");
    let (c, s): (IpAddr, IpAddr) = (hosts.v6(1).into(), hosts.v6(2).into());
    for r in &v6 {
        assert_eq!(r.ip_version, 6, "IPv6 record: {r:?}");
        let pair = (r.src_ip(), r.dst_ip());
        assert!(pair == (c, s) || pair == (s, c), "IPv6 addresses: {pair:?}");
    }
    assert_eq!(
        payload_by_direction(&v6, 9004),
        (UP as u64, DOWN as u64),
        "IPv6 payload"
    );
}

/// BPF links (tcx and others) whose program is one of ours.
fn links_of_ours() -> usize {
    let json = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = sh(args).expect("bpftool");
        serde_json::from_slice(&out.stdout).expect("bpftool JSON")
    };
    let ours: Vec<u64> = json(&["bpftool", "-j", "prog", "show"])
        .iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("phalanx_"))
        })
        .filter_map(|p| p["id"].as_u64())
        .collect();
    json(&["bpftool", "-j", "link", "show"])
        .iter()
        .filter(|l| l["prog_id"].as_u64().is_some_and(|id| ours.contains(&id)))
        .count()
}

#[test]
fn daemon_detaches_everything_on_sigterm() {
    if !privileged("daemon_detaches_everything_on_sigterm") {
        return;
    }
    let _g = serial();
    let hosts = TwoHosts::new("ld").expect("lab");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("phalanx.toml");
    std::fs::write(&cfg, state_dirs(dir.path())).expect("config");
    for mode in ["tcx", "xdp"] {
        let before = links_of_ours();
        let daemon = spawn_daemon(&hosts.a, &hosts.a_if, mode, "127.0.0.1:19741", &cfg);
        let deadline = Instant::now() + Duration::from_secs(30);
        let healthy = loop {
            let ok = hosts
                .a
                .run(|| {
                    TcpStream::connect("127.0.0.1:19741")
                        .and_then(|mut s| {
                            s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")?;
                            let mut r = String::new();
                            s.read_to_string(&mut r)?;
                            Ok(r.contains("200 OK"))
                        })
                        .unwrap_or(false)
                })
                .unwrap_or(false);
            if ok || Instant::now() > deadline {
                break ok;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(healthy, "{mode}: daemon answered /healthz");
        let link = String::from_utf8_lossy(
            &hosts
                .a
                .ip(&["link", "show", &hosts.a_if])
                .expect("ip link")
                .stdout,
        )
        .to_string();
        assert_eq!(
            link.contains("xdp"),
            mode == "xdp",
            "{mode}: xdp attached only in xdp mode: {link}"
        );
        let during = links_of_ours();
        // tcx: ingress + egress links; xdp: the XDP link + the tcx egress link.
        assert_eq!(during - before, 2, "{mode}: our BPF links while running");
        let out = daemon.stop(Duration::from_secs(10)).expect("daemon output");
        assert!(
            out.status.success(),
            "{mode}: clean exit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let link = String::from_utf8_lossy(
            &hosts
                .a
                .ip(&["link", "show", &hosts.a_if])
                .expect("ip link")
                .stdout,
        )
        .to_string();
        assert!(!link.contains("xdp"), "{mode}: no XDP program left: {link}");
        assert_eq!(
            links_of_ours(),
            before,
            "{mode}: no tcx link of ours left (bpftool link show)"
        );
    }
}

/// `phalanx run` on `iface` in `ns` in `mode`, its API on `listen`.
fn spawn_daemon(ns: &Netns, iface: &str, mode: &str, listen: &str, cfg: &std::path::Path) -> Proc {
    Proc::new(
        ns.command(env!("CARGO_BIN_EXE_phalanx"))
            .args([
                "run", "--iface", iface, "--mode", mode, "--listen", listen, "--config",
            ])
            .arg(cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn phalanx"),
    )
}

/// Config lines keeping the daemon's evidence and spool under `dir`, so a
/// test leaves nothing in /var/lib.
fn state_dirs(dir: &std::path::Path) -> String {
    format!(
        "[incidents]\nevidence_dir = {:?}\nspool_dir = {:?}\n",
        dir.join("evidence"),
        dir.join("spool")
    )
}

/// GET a path of the daemon's API from inside `ns`; the body as text.
fn api_get(ns: &Netns, addr: &'static str, path: &'static str) -> String {
    let addr: SocketAddr = addr.parse().expect("API address");
    let (_, body) = ns
        .run(move || http_get(addr, path))
        .expect("namespace")
        .expect("API request");
    String::from_utf8_lossy(&body).to_string()
}

#[test]
fn sighup_reloads_filters_without_reload() {
    if !privileged("sighup_reloads_filters_without_reload") {
        return;
    }
    let _g = serial();
    let hosts = TwoHosts::new("lh").expect("lab");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("phalanx.toml");
    let write_cfg = |port: u16| {
        std::fs::write(
            &cfg,
            format!(
                "[[capture.filters]]\nport = {port}\n[http]\nlisten = \"127.0.0.1:19742\"\n{}",
                state_dirs(dir.path())
            ),
        )
        .expect("write config")
    };
    write_cfg(9006);
    let daemon = Proc::new(
        hosts
            .a
            .command(env!("CARGO_BIN_EXE_phalanx"))
            .args(["run", "--iface", &hosts.a_if, "--config"])
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn phalanx"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !hosts
        .a
        .run(|| TcpStream::connect("127.0.0.1:19742").is_ok())
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "daemon came up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let matched = || {
        metric(
            &api_get(&hosts.a, "127.0.0.1:19742", "/metrics"),
            "phalanx_kernel_packets_matched_total",
        )
    };
    let m0 = matched();
    transfer(&hosts, hosts.v4(2).into(), hosts.v4(1).into(), 9007, 40031);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(matched(), m0, "port 9007 is out of scope before SIGHUP");
    transfer(&hosts, hosts.v4(2).into(), hosts.v4(1).into(), 9006, 40032);
    std::thread::sleep(Duration::from_millis(200));
    let m1 = matched();
    assert!(m1 > m0, "port 9006 is in scope");

    write_cfg(9007);
    daemon.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    transfer(&hosts, hosts.v4(2).into(), hosts.v4(1).into(), 9006, 40033);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(matched(), m1, "port 9006 is out of scope after SIGHUP");
    transfer(&hosts, hosts.v4(2).into(), hosts.v4(1).into(), 9007, 40034);
    std::thread::sleep(Duration::from_millis(200));
    assert!(matched() > m1, "port 9007 is in scope after SIGHUP");
    let out = daemon.stop(Duration::from_secs(10)).expect("daemon output");
    assert!(out.status.success(), "clean exit after reload");
}

#[test]
fn daemon_captures_as_a_user_with_only_the_three_capabilities() {
    if !privileged("daemon_captures_as_a_user_with_only_the_three_capabilities") {
        return;
    }
    let _g = serial();
    let ns = Netns::new(&phalanx_lab::unique("lcap")).expect("namespace");
    let dir = tempfile::tempdir().expect("tempdir");
    // The daemon, as nobody, creates its state directories here.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let cfg = dir.path().join("phalanx.toml");
    std::fs::write(&cfg, state_dirs(dir.path())).expect("config");
    let caps = "-all,+bpf,+net_admin,+perfmon";
    let daemon = Proc::new(
        ns.command("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                &format!("--inh-caps={caps}"),
                &format!("--ambient-caps={caps}"),
                &format!("--bounding-set={caps}"),
                env!("CARGO_BIN_EXE_phalanx"),
                "run",
                "--iface",
                "lo",
                "--listen",
                "127.0.0.1:19743",
                "--config",
            ])
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn phalanx under setpriv"),
    );
    let addr: SocketAddr = "127.0.0.1:19743".parse().expect("addr");
    wait_healthy(&ns, addr, Duration::from_secs(30));
    // Traffic on the namespace's loopback: the daemon's own API.
    for _ in 0..5 {
        api_get(&ns, "127.0.0.1:19743", "/healthz");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let decoded = loop {
        let m = api_get(&ns, "127.0.0.1:19743", "/metrics");
        let n = metric(&m, "phalanx_capture_records_decoded_total");
        if n >= 20 || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", daemon.id())).unwrap_or_default();
    let out = daemon.stop(Duration::from_secs(10)).expect("daemon output");
    assert!(
        out.status.success(),
        "clean exit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        decoded >= 20,
        "records decoded as nobody: {decoded}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `daemon` is `ip netns exec`'s child chain; its uid shows in the
    // evidence directory it created.
    use std::os::unix::fs::MetadataExt as _;
    let owner = std::fs::metadata(dir.path().join("spool"))
        .map(|m| m.uid())
        .expect("spool directory");
    assert_eq!(owner, 65534, "the daemon ran as nobody ({status})");
}

#[test]
fn a_second_capture_on_one_interface_is_refused() {
    if !privileged("a_second_capture_on_one_interface_is_refused") {
        return;
    }
    let _g = serial();
    let hosts = TwoHosts::new("l2").expect("lab");
    let (first, _ring) = attach(&hosts.a, &hosts.a_if, AttachMode::Tcx, Vec::new());
    for mode in [AttachMode::Tcx, AttachMode::Xdp] {
        let iface = hosts.a_if.clone();
        let second = hosts
            .a
            .run(move || {
                let (mut c, _ring) =
                    Capture::load(&CaptureConfig::default()).expect("load kernel programs");
                c.attach(&iface, mode).map(|_| ())
            })
            .expect("enter namespace");
        let e = second.expect_err("a second capture on the interface");
        assert!(
            e.to_string()
                .contains("is already captured by another Phalanx"),
            "{mode}: {e}"
        );
    }
    // Once the first is gone, the interface is free again.
    drop(first);
    let (again, _ring) = attach(&hosts.a, &hosts.a_if, AttachMode::Tcx, Vec::new());
    drop(again);
}

/// Waits until the daemon at `addr` in `ns` answers `/healthz`.
fn wait_healthy(ns: &Netns, addr: SocketAddr, within: Duration) {
    let deadline = Instant::now() + within;
    while !ns
        .run(move || http_get(addr, "/healthz").is_ok())
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "the daemon came up at {addr}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SYNs per second of the sweep, and for how long: a new connection
/// attempt from each of `SWEEP_SOURCES` addresses on each of
/// `SWEEP_PORTS` ports (a table of 250,000 flows), then their re-sends.
const SWEEP_RATE: f64 = 40_000.0;
const SWEEP_SECS: u64 = 7;
const SWEEP_PORTS: u16 = 50_000;
const SWEEP_SOURCES: u8 = 5;

#[test]
fn a_syn_sweep_under_an_api_flood_loses_no_record() {
    if !privileged("a_syn_sweep_under_an_api_flood_loses_no_record") {
        return;
    }
    let _g = serial();
    let hosts = TwoHosts::new("lf").expect("lab");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("phalanx.toml");
    std::fs::write(
        &cfg,
        format!("{}\n[flows]\nmax_flows = 262144\n", state_dirs(dir.path())),
    )
    .expect("config");
    let listen = "127.0.0.1:19744";
    let daemon = spawn_daemon(&hosts.a, &hosts.a_if, "tcx", listen, &cfg);
    let addr: SocketAddr = listen.parse().expect("addr");
    wait_healthy(&hosts.a, addr, Duration::from_secs(30));

    let load = phalanx_lab::flood::Load {
        iface: hosts.b_if.clone(),
        src: hosts.v4(2).octets(),
        dst: hosts.v4(1).octets(),
        flows: SWEEP_PORTS,
        sources: SWEEP_SOURCES,
        first_port: 10_000,
        rate: SWEEP_RATE,
        max_frames: (SWEEP_RATE as u64) * SWEEP_SECS,
        max_time: Duration::from_secs(SWEEP_SECS + 2),
        flags: phalanx_lab::flood::SYN,
    };
    let done = std::sync::atomic::AtomicBool::new(false);
    let (sent, requests) = std::thread::scope(|s| {
        // Readers of every kind, as fast as the daemon answers: the whole
        // table sorted, its largest pages, the metrics.
        let readers: Vec<_> = [
            "/api/v1/flows?sort=rtt&limit=1",
            "/api/v1/flows?sort=packets&limit=10000",
            "/api/v1/flows?limit=10000",
            "/metrics",
        ]
        .into_iter()
        .map(|path| {
            let (ns, done) = (&hosts.a, &done);
            s.spawn(move || {
                let mut n = 0u64;
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    let t = Instant::now();
                    // Capture goes first: a scan of the whole table may wait.
                    let got = ns
                        .run(move || http_get_within(addr, path, Duration::from_secs(120)))
                        .expect("namespace");
                    match got {
                        Ok((status, _)) => assert!(status.contains("200"), "{path}: {status}"),
                        Err(e) => panic!("{path}: {e} after {:?}", t.elapsed()),
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
        let sent = hosts
            .b
            .run(move || phalanx_lab::flood::send(&load))
            .expect("namespace")
            .expect("sweep");
        // The rules' next evaluation sees the whole sweep under the flood.
        std::thread::sleep(pipeline_period());
        done.store(true, std::sync::atomic::Ordering::Release);
        let requests: Vec<u64> = readers
            .into_iter()
            .map(|r| r.join().expect("reader"))
            .collect();
        (sent, requests)
    });
    let m = api_get(&hosts.a, listen, "/metrics");
    let page = api_get(&hosts.a, listen, "/api/v1/flows?limit=1");
    let out = daemon.stop(Duration::from_secs(10)).expect("daemon output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "sweep: {} SYNs in {:.1} s; requests per reader: {requests:?}",
        sent.frames,
        sent.elapsed.as_secs_f64()
    );
    let submitted = metric(&m, "phalanx_kernel_records_submitted_total");
    let decoded = metric(&m, "phalanx_capture_records_decoded_total");
    assert!(
        submitted >= sent.frames,
        "every SYN reached the programs: {submitted} of {}",
        sent.frames
    );
    assert_eq!(
        metric(&m, "phalanx_kernel_ring_full_drops_total"),
        0,
        "{stderr}"
    );
    assert_eq!(decoded, submitted, "every record decoded");
    assert_eq!(
        metric(&m, "phalanx_capture_backlog_dropped_total"),
        0,
        "no record lost to a reader: {stderr}"
    );
    assert!(
        requests.iter().all(|&n| n >= 3),
        "each reader ran: {requests:?}"
    );
    let total: u64 = serde_json::from_str::<serde_json::Value>(&page)
        .ok()
        .and_then(|v| v["total"].as_u64())
        .unwrap_or(0);
    assert!(
        total >= u64::from(SWEEP_PORTS) * u64::from(SWEEP_SOURCES),
        "the sweep's flows are in the table: {total}"
    );
}

/// Longer than the rules' period, so an evaluation runs.
fn pipeline_period() -> Duration {
    phalanx_daemon::pipeline::RULES_INTERVAL + Duration::from_millis(500)
}

/// Polls `path` of the daemon in `ns` until `done` holds for its body,
/// at most `within`; the last body.
fn api_until(
    ns: &Netns,
    addr: &'static str,
    path: &'static str,
    within: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let body = api_get(ns, addr, path);
        if done(&body) || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_removed_interface_degrades_and_is_captured_again_when_back() {
    if !privileged("a_removed_interface_degrades_and_is_captured_again_when_back") {
        return;
    }
    let _g = serial();
    let hosts = TwoHosts::new("lr").expect("lab");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("phalanx.toml");
    std::fs::write(&cfg, state_dirs(dir.path())).expect("config");
    let listen = "127.0.0.1:19745";
    // Five refused connections from b to a: a SYN in and a RST out each.
    let target: SocketAddr = (hosts.v4(1), 9).into();
    let ping = || {
        hosts
            .b
            .run(move || {
                for _ in 0..5 {
                    let refused = TcpStream::connect_timeout(&target, Duration::from_secs(1));
                    assert!(refused.is_err(), "nothing listens on port 9");
                }
            })
            .expect("namespace");
    };
    let decoded = || {
        metric(
            &api_get(&hosts.a, listen, "/metrics"),
            "phalanx_capture_records_decoded_total",
        )
    };
    let changed = |change: &str| {
        let m = api_get(&hosts.a, listen, "/metrics");
        metric(
            &m,
            &format!(
                "phalanx_capture_interface_changes_total{{iface=\"eth0\",change=\"{change}\"}}"
            ),
        )
    };
    for mode in ["tcx", "xdp"] {
        let daemon = spawn_daemon(&hosts.a, &hosts.a_if, mode, listen, &cfg);
        wait_healthy(
            &hosts.a,
            listen.parse().expect("addr"),
            Duration::from_secs(30),
        );
        ping();
        let deadline = Instant::now() + Duration::from_secs(5);
        while decoded() < 5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(decoded() >= 5, "{mode}: captured before");

        hosts
            .a
            .ip(&["link", "del", &hosts.a_if])
            .expect("delete the veth pair");
        let health = api_until(&hosts.a, listen, "/healthz", Duration::from_secs(10), |b| {
            b.starts_with("degraded")
        });
        assert_eq!(
            health.trim(),
            "degraded: interface_gone (not capturing on eth0)",
            "{mode}"
        );
        assert_eq!(changed("removed"), 1, "{mode}");

        hosts.link().expect("the pair again");
        let health = api_until(&hosts.a, listen, "/healthz", Duration::from_secs(10), |b| {
            b.trim() == "ok"
        });
        assert_eq!(health.trim(), "ok", "{mode}: recovered");
        assert_eq!(changed("reattached"), 1, "{mode}");
        let before = decoded();
        ping();
        let deadline = Instant::now() + Duration::from_secs(5);
        while decoded() < before + 5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(decoded() >= before + 5, "{mode}: captured again");
        let out = daemon.stop(Duration::from_secs(10)).expect("daemon output");
        assert!(
            out.status.success(),
            "{mode}: clean exit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
