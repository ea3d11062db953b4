//! Stitching real captures: client — router — server namespaces, the router
//! drops a random share of the client's data segments with nftables and
//! counts them; tcpdump captures at the client's and the server's
//! interfaces; `stitch` must put exactly the router's count on the
//! client -> server link and nothing anywhere else.
//! Needs root; skips without it, except under CI=true.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use phalanx_daemon::stitch::{
    cli::stitch_files, cli::write_unified, ClockMethod, HopSpec, OrderSource,
};
use phalanx_lab::{privileged, Routed};

const BYTES: usize = 5 * 1024 * 1024;
const DROP_PERCENT: u32 = 2;

#[test]
fn router_drops_are_attributed_to_the_client_server_link() {
    if !privileged("stitch_live") {
        return;
    }
    let lab = Routed::new("stl").expect("client-router-server lab");
    lab.offloads_off().expect("offloads off");
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let (client, server) = (lab.client_v4(), lab.server_v4());
    // The table lives in the router namespace and goes with it.
    lab.router
        .drop_forwarded(&format!(
            "ip saddr {client} tcp dport {port} meta length > 100 numgen random mod 100 < {DROP_PERCENT}"
        ))
        .expect("nft drop rule");

    let dir = tempfile::tempdir().expect("tempdir");
    let (cfile, sfile) = (
        dir.path().join("client.pcap"),
        dir.path().join("server.pcap"),
    );
    let port_s = port.to_string();
    let filter = ["tcp", "port", port_s.as_str()];
    let cdump = lab
        .client
        .tcpdump(Routed::IF, &filter, &cfile)
        .expect("client tcpdump");
    let sdump = lab
        .server
        .tcpdump(Routed::IF, &filter, &sfile)
        .expect("server tcpdump");

    let received = std::thread::scope(|s| {
        let (ready_tx, ready_rx) = mpsc::channel();
        let srv = s.spawn(|| {
            lab.server
                .run(move || {
                    let l = TcpListener::bind(SocketAddr::from((server, port))).expect("bind");
                    ready_tx.send(()).expect("ready");
                    let (mut c, _) = l.accept().expect("accept");
                    let mut n = 0usize;
                    let mut buf = vec![0u8; 65536];
                    loop {
                        match c.read(&mut buf).expect("read") {
                            0 => break n,
                            k => n += k,
                        }
                    }
                })
                .expect("server namespace")
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server listening");
        lab.client
            .run(move || {
                let mut c = TcpStream::connect_timeout(
                    &SocketAddr::from((server, port)),
                    Duration::from_secs(5),
                )
                .expect("connect");
                c.set_write_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let chunk: Vec<u8> = (0..65536u32).map(|i| (i * 7 + i / 251) as u8).collect();
                let mut left = BYTES;
                while left > 0 {
                    let k = left.min(chunk.len());
                    c.write_all(&chunk[..k]).expect("send");
                    left -= k;
                }
                c.shutdown(std::net::Shutdown::Write).expect("shutdown");
                // Wait for the server's FIN so the close is captured too.
                let _ = c.read(&mut [0u8; 1]);
            })
            .expect("client namespace");
        srv.join().expect("server thread")
    });
    assert_eq!(received, BYTES, "the transfer completes despite the drops");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        cdump.stop().expect("client tcpdump report"),
        0,
        "client capture complete"
    );
    assert_eq!(
        sdump.stop().expect("server tcpdump report"),
        0,
        "server capture complete"
    );
    let dropped = lab.router.dropped().expect("nft counter");
    assert!(
        dropped > 20,
        "the router dropped a meaningful number of segments: {dropped}"
    );

    let hops = vec![
        HopSpec {
            name: "server".into(),
            file: sfile,
        },
        HopSpec {
            name: "client".into(),
            file: cfile,
        },
    ];
    let rep = stitch_files(&hops, OrderSource::Inferred).expect("stitch");
    let unified = dir.path().join("unified.pcapng");
    let written = write_unified(&hops, &rep, &unified).expect("unified capture");
    let total: u64 = rep.hops.iter().map(|h| h.packets).sum();
    assert_eq!(written, total, "every packet of both captures");
    let info = Command::new("capinfos")
        .arg(&unified)
        .output()
        .expect("capinfos");
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        text.contains("Number of interfaces in file: 2"),
        "capinfos: {text}"
    );
    println!("{}", serde_json::to_string_pretty(&rep).expect("json"));
    assert_eq!(rep.order, OrderSource::Inferred);
    let names: Vec<&str> = rep.hops.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["client", "server"], "order from the TTL decrement");
    let cs = rep.link("client", "server").expect("client -> server");
    let sc = rep.link("server", "client").expect("server -> client");
    let tolerance = (dropped as f64 * 0.005).floor() as u64;
    assert!(
        cs.lost.abs_diff(dropped) <= tolerance,
        "client -> server loss {} vs router drop counter {dropped}",
        cs.lost
    );
    assert_eq!(sc.lost, 0, "nothing lost server -> client");
    assert_eq!(
        (cs.unmatched, sc.unmatched),
        (0, 0),
        "every packet at one end was seen at the other"
    );
    assert_eq!((cs.duplicates, sc.duplicates), (0, 0));
    assert_eq!(cs.clock_method, ClockMethod::TwoWay);
    assert!(
        cs.clock_offset_ms.abs() < 1.0,
        "one host clock: offset {} ms",
        cs.clock_offset_ms
    );
    assert!(
        cs.packets > (BYTES / 1500) as u64,
        "every data segment counted: {}",
        cs.packets
    );
    assert!(
        cs.delay_ms.p50.is_some_and(|d| (0.0..50.0).contains(&d)),
        "delay {:?}",
        cs.delay_ms
    );
    println!(
        "router dropped {dropped}; stitched loss client->server {} of {}, server->client {} of {}; delay p50 {:?} ms p99 {:?} ms; offset {} ms",
        cs.lost, cs.packets, sc.lost, sc.packets, cs.delay_ms.p50, cs.delay_ms.p99, cs.clock_offset_ms
    );
}
