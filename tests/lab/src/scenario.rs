//! Fault scenarios on namespace networks: each builds a path, injects one
//! fault (or none), names the host where the daemon should watch, and
//! drives HTTP downloads across it. Used by `cargo xtask lab NAME` and by
//! the integration tests that expect the matching diagnosis.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::{delay::DelayLine, unique, LabError, Netns, Routed};

/// One-way delay of the `slow-path` scenario's router (± 1 ms).
pub const SLOW_PATH_ONE_WAY: Duration = Duration::from_millis(50);

/// Port of the scenario's HTTP server.
pub const HTTP_PORT: u16 = 8080;

/// Every scenario: name and what it reproduces.
pub const SCENARIOS: &[(&str, &str)] = &[
    ("healthy", "client - router - server, paced downloads with no fault"),
    (
        "slow-path",
        "healthy, across a 100 ms round trip (a user-space delay line in the router, 50 ms each way)",
    ),
    ("lossy-link", "the router drops 3% of server->client packets at random (nftables numgen)"),
    (
        "pmtud-blackhole",
        "the router's client-side link has MTU 1280 and the router's ICMP frag-needed are dropped: downloads stall after the headers",
    ),
    (
        "congestion",
        "a 20 Mbit/s tbf bottleneck towards the client with a 200 ms queue, shared by 4 bulk CUBIC downloads",
    ),
    ("asymmetric", "client->server via router r1, server->client via router r2 (100 Mbit/s); the daemon watches r1"),
    ("syn-blackhole", "the router drops every SYN to the server's port"),
];

/// A built scenario.
#[derive(Debug)]
pub struct Scenario {
    /// Scenario name.
    pub name: &'static str,
    /// The client, router and server.
    pub net: Routed,
    /// Second router of the asymmetric scenario (the return path).
    pub return_router: Option<Netns>,
    /// The router's delay line, in the scenarios of a long path.
    pub delay: Option<DelayLine>,
    /// Parallel downloads the traffic driver keeps going.
    pub parallel: usize,
    /// Body size of one download.
    pub body_bytes: usize,
    /// Pause between a client's downloads (none: back to back).
    pub pause: Duration,
    /// TCP congestion control of the server's sockets (None: the host's default).
    pub congestion_control: Option<&'static str>,
}

/// Where the daemon of a scenario watches: namespace and interfaces.
pub struct Watch<'a> {
    /// Namespace to run the daemon in.
    pub ns: &'a Netns,
    /// Interfaces to attach to.
    pub interfaces: Vec<&'static str>,
}

/// What the traffic driver saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Downloads that completed.
    pub completed: u64,
    /// Downloads that failed (connect or read timeout, reset).
    pub failed: u64,
    /// Body bytes received.
    pub bytes: u64,
}

impl Scenario {
    /// Builds scenario `name` (see [`SCENARIOS`]).
    pub fn new(name: &str) -> Result<Self, LabError> {
        let (name, _) = SCENARIOS
            .iter()
            .copied()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| LabError::Command {
                cmd: format!("scenario {name}"),
                stderr: format!(
                    "unknown scenario; known: {}",
                    SCENARIOS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        let net = Routed::new("sc")?;
        let mut s = Scenario {
            name,
            net,
            return_router: None,
            delay: None,
            parallel: 2,
            body_bytes: 2 << 20,
            pause: Duration::ZERO,
            congestion_control: None,
        };
        let client = s.net.client_v4().to_string();
        let server = s.net.server_v4().to_string();
        match name {
            // Paced, so the path is never the bottleneck: back-to-back bulk
            // transfers on a loaded 2-core machine overflow veth backlogs
            // and cause real (correctly reported) retransmissions.
            "healthy" => {
                s.parallel = 1;
                s.body_bytes = 256 << 10;
                s.pause = Duration::from_millis(50);
            }
            "slow-path" => {
                s.delay = Some(s.net.delay(SLOW_PATH_ONE_WAY, Duration::from_millis(1))?);
                s.parallel = 1;
                s.body_bytes = 256 << 10;
                s.pause = Duration::from_millis(50);
            }
            "lossy-link" => s.net.router.drop_forwarded(&format!(
                "ip saddr {server} ip daddr {client} numgen random mod 100 < 3"
            ))?,
            "pmtud-blackhole" => {
                s.net
                    .router
                    .ip(&["link", "set", Routed::IF, "mtu", "1280"])?;
                s.net.router.nft(
                    "table inet phalanx_lab { chain out { type filter hook output priority 0;\n\
                     icmp type destination-unreachable icmp code frag-needed counter drop\n}\n}\n",
                )?;
            }
            "congestion" => {
                s.net.router.exec(&[
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    Routed::IF,
                    "root",
                    "tbf",
                    "rate",
                    "20mbit",
                    "burst",
                    "32kb",
                    "latency",
                    "200ms",
                ])?;
                // Loss-based congestion control, whatever the host's default
                // (often BBR, which keeps queues short by design): the
                // downloads fill the queue until it overflows, the classic
                // congestion this scenario reproduces.
                s.congestion_control = Some("cubic");
                s.parallel = 4;
                s.body_bytes = 4 << 20;
            }
            "syn-blackhole" => s.net.router.drop_forwarded(&format!(
                "ip daddr {server} tcp dport {HTTP_PORT} tcp flags & (syn | ack) == syn"
            ))?,
            "asymmetric" => {
                let r2 = s.add_return_path()?;
                // A 100 Mbit/s return path makes each download last seconds,
                // like the long-lived flows asymmetric routing hurts (a
                // brief flow proves little about a path).
                r2.exec(&[
                    "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "100mbit", "burst",
                    "64kb", "latency", "50ms",
                ])?;
                s.body_bytes = 16 << 20;
                s.return_router = Some(r2);
            }
            _ => {}
        }
        Ok(s)
    }

    /// Adds router r2 between a second client interface and a second
    /// server interface, and routes server->client traffic through it.
    fn add_return_path(&self) -> Result<Netns, LabError> {
        let r2 = Netns::new(&unique("scr2"))?;
        let sub = self.net.subnet;
        for (net, host, host_if, r2_if) in [
            (3u8, &self.net.client, "eth1", "eth0"),
            (4u8, &self.net.server, "eth1", "eth1"),
        ] {
            host.link_to(host_if, &r2, r2_if)?;
            host.ip(&[
                "addr",
                "add",
                &format!("10.{sub}.{net}.2/24"),
                "dev",
                host_if,
            ])?;
            host.ip(&["link", "set", host_if, "up"])?;
            r2.ip(&["addr", "add", &format!("10.{sub}.{net}.1/24"), "dev", r2_if])?;
            r2.ip(&["link", "set", r2_if, "up"])?;
        }
        r2.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        // r2 reaches the client's first address through the client's second link.
        r2.ip(&[
            "route",
            "add",
            &format!("10.{sub}.1.0/24"),
            "via",
            &format!("10.{sub}.3.2"),
        ])?;
        // The server answers the client's subnet through r2.
        self.net.server.ip(&[
            "route",
            "add",
            &format!("10.{sub}.1.0/24"),
            "via",
            &format!("10.{sub}.4.1"),
        ])?;
        // Replies arrive on the client's second link: accept them.
        for key in ["all", "default", "eth0", "eth1"] {
            self.net.client.exec(&[
                "sysctl",
                "-q",
                "-w",
                &format!("net.ipv4.conf.{key}.rp_filter=0"),
            ])?;
        }
        Ok(r2)
    }

    /// Packets the injected fault dropped so far (nftables counters), if the
    /// fault is a drop rule.
    pub fn dropped(&self) -> Option<u64> {
        self.net.router.dropped().ok()
    }

    /// Where the daemon watches in this scenario.
    pub fn watch(&self) -> Watch<'_> {
        match self.name {
            "pmtud-blackhole" | "lossy-link" => Watch {
                ns: &self.net.server,
                interfaces: vec![Routed::IF],
            },
            "asymmetric" => Watch {
                ns: &self.net.router,
                interfaces: vec![Routed::IF, Routed::ROUTER_SERVER_IF],
            },
            _ => Watch {
                ns: &self.net.client,
                interfaces: vec![Routed::IF],
            },
        }
    }

    /// The server's HTTP address.
    pub fn server_addr(&self) -> SocketAddr {
        SocketAddr::new(self.net.server_v4().into(), HTTP_PORT)
    }

    /// Serves downloads from the server and keeps `parallel` downloads going
    /// from the client for `duration`; every connection is bounded by timeouts.
    pub fn drive(&self, duration: Duration) -> Result<Traffic, LabError> {
        let addr = self.server_addr();
        let body = self.body_bytes;
        let stop = Arc::new(AtomicBool::new(false));
        let listener = self
            .net
            .server
            .run(move || TcpListener::bind(addr))?
            .map_err(|e| LabError::Io(format!("bind {addr}"), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| LabError::Io("listener".into(), e))?;
        if let Some(cc) = self.congestion_control {
            set_congestion_control(&listener, cc)?;
        }
        let server_stop = stop.clone();
        let server = std::thread::spawn(move || serve(listener, body, &server_stop));
        let deadline = Instant::now() + duration;
        let mut workers = Vec::new();
        let pause = self.pause;
        for _ in 0..self.parallel {
            let client = self.net.client.name().to_string();
            workers.push(std::thread::spawn(move || -> Traffic {
                let Ok(f) = std::fs::File::open(format!("/var/run/netns/{client}")) else {
                    return Traffic::default();
                };
                // SAFETY: joins only this thread to the namespace.
                if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) }
                    != 0
                {
                    return Traffic::default();
                }
                let mut t = Traffic::default();
                while Instant::now() < deadline {
                    match download(addr, deadline) {
                        Ok(n) if n == body => {
                            t.completed += 1;
                            t.bytes += n as u64;
                            std::thread::sleep(pause);
                        }
                        Ok(n) => {
                            t.failed += 1;
                            t.bytes += n as u64;
                        }
                        Err(_) => {
                            t.failed += 1;
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    }
                }
                t
            }));
        }
        let mut total = Traffic::default();
        for w in workers {
            if let Ok(t) = w.join() {
                total.completed += t.completed;
                total.failed += t.failed;
                total.bytes += t.bytes;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let _ = server.join();
        Ok(total)
    }
}

/// One GET; returns the body bytes received before the end, a stall
/// (3 s without data) or the deadline.
fn download(addr: SocketAddr, deadline: Instant) -> std::io::Result<usize> {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    let mut s = TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(5)))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    // One write: `write!` would send each piece as it comes, and on a
    // long path Nagle holds the rest of the request for a round trip.
    s.write_all(format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut head = Vec::new();
    let mut body: Option<usize> = None;
    while Instant::now() < deadline {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match body.as_mut() {
            Some(b) => *b += n,
            None => {
                head.extend_from_slice(&buf[..n]);
                if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    body = Some(head.len() - (p + 4));
                } else if head.len() > 8192 {
                    break;
                }
            }
        }
    }
    Ok(body.unwrap_or(0))
}

/// Sets TCP_CONGESTION on a listener; the connections it accepts inherit it.
fn set_congestion_control(listener: &TcpListener, name: &str) -> Result<(), LabError> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid socket and a buffer of the length passed.
    let r = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(LabError::Io(
            format!("TCP_CONGESTION {name}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Reads a request's head, up to its blank line (at most 8 KiB): closing
/// a socket with request bytes unread would reset the connection.
fn read_request(s: &mut TcpStream) -> std::io::Result<()> {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match s.read(&mut buf)? {
            0 => break,
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    Ok(())
}

fn serve(listener: TcpListener, body_bytes: usize, stop: &AtomicBool) {
    let body = Arc::new(vec![b'x'; body_bytes]);
    let mut handlers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut s, _)) => {
                let body = body.clone();
                handlers.push(std::thread::spawn(move || {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
                    let _ = read_request(&mut s);
                    let _ = write!(
                        s,
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(&body);
                }));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    for h in handlers {
        let _ = h.join();
    }
}
