//! Hosts made of network namespaces and veth pairs, for tests, the demo and
//! the fault scenarios. Everything created is removed on drop, also when a
//! test panics; traffic only ever goes to the namespaces' own addresses.

pub mod delay;
pub mod flood;
pub mod scenario;

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd,
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::Duration,
};

/// Errors setting up a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command failed.
    #[error("`{cmd}` failed: {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// An I/O error (spawning, setns).
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// Runs a command to completion; non-zero exit is an error with its stderr.
pub fn sh(args: &[&str]) -> Result<Output, LabError> {
    let (prog, rest) = args.split_first().ok_or_else(|| LabError::Command {
        cmd: String::new(),
        stderr: "empty command".into(),
    })?;
    let out = Command::new(prog)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::Io(args.join(" "), e))?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// Whether privileged tests can run here. Without root they skip, except
/// under `CI=true`, where a skipped privileged test is a failure.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: needs root (netns, veth, eBPF) and CI=true forbids skipping it");
    }
    eprintln!("SKIPPED {test}: needs root");
    false
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call, within IFNAMSIZ.
pub fn unique(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}{n}", std::process::id() % 100_000)
}

/// A second octet for a lab's 10.X.0.0/16 addresses, apart from the other
/// labs of this process and, most likely, of concurrent ones.
fn fresh_subnet() -> u8 {
    (100 + SEQ.fetch_add(1, Ordering::Relaxed) % 100 + std::process::id() % 50) as u8
}

/// A network namespace, deleted on drop (with every interface inside it).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace with loopback up.
    pub fn new(name: &str) -> Result<Self, LabError> {
        sh(&["ip", "netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<Output, LabError> {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// A command that will run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// MAC address of interface `ifname` in the namespace.
    pub fn mac(&self, ifname: &str) -> Result<String, LabError> {
        let out = self.ip(&["-br", "link", "show", "dev", ifname])?;
        // "eth0@if12  UP  aa:bb:cc:dd:ee:ff <...>"
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(2)
            .map(str::to_string)
            .ok_or_else(|| LabError::Command {
                cmd: format!("ip -n {} -br link show dev {ifname}", self.name),
                stderr: "no MAC address in the output".into(),
            })
    }

    /// Joins this namespace and `peer` by a veth pair, named `ifname` here
    /// and `peer_ifname` there (both down).
    pub fn link_to(&self, ifname: &str, peer: &Netns, peer_ifname: &str) -> Result<(), LabError> {
        let (tmp, tmp_peer) = (unique("pxa"), unique("pxb"));
        sh(&[
            "ip", "link", "add", &tmp, "type", "veth", "peer", "name", &tmp_peer,
        ])?;
        for (t, ns, name) in [(&tmp, self, ifname), (&tmp_peer, peer, peer_ifname)] {
            sh(&["ip", "link", "set", t, "netns", ns.name(), "name", name])?;
        }
        Ok(())
    }

    /// Whether process `pid` runs in this namespace (a process started by
    /// `ip netns exec` enters it a moment after it is spawned).
    pub fn holds(&self, pid: u32) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        let id = |p: String| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
        let inside = id(format!("/proc/{pid}/ns/net"));
        inside.is_some() && inside == id(format!("/var/run/netns/{}", self.name))
    }

    /// Runs a command inside the namespace to completion.
    pub fn exec(&self, args: &[&str]) -> Result<Output, LabError> {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Runs `f` on a thread that has joined this namespace (sockets it opens live there).
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, LabError> {
        let path = format!("/var/run/netns/{}", self.name);
        let file = File::open(&path).map_err(|e| LabError::Io(path.clone(), e))?;
        let handle = std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with a valid namespace fd.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(LabError::Io(path, std::io::Error::last_os_error()));
            }
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Starts tcpdump on `iface` writing `file` (filter words in `filter`) and
    /// returns once it is listening. `-Z root`: Debian's tcpdump otherwise
    /// drops to a user that cannot write root's temp dirs; `--immediate-mode`:
    /// otherwise packets wait in a kernel block (1 s timeout) and a prompt
    /// stop loses them.
    pub fn tcpdump(&self, iface: &str, filter: &[&str], file: &Path) -> Result<Tcpdump, LabError> {
        let mut child = self
            .command("tcpdump")
            .args([
                "-i",
                iface,
                "-Z",
                "root",
                "--immediate-mode",
                "-U",
                "-nn",
                "-s",
                "128",
                "-w",
            ])
            .arg(file)
            .args(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LabError::Io("spawning tcpdump".into(), e))?;
        let stderr = child.stderr.take();
        let proc = Proc::new(child);
        let (tx, lines) = mpsc::channel();
        // Read stderr to the end, so tcpdump's exit report never meets a closed pipe.
        std::thread::spawn(move || {
            let Some(stderr) = stderr else { return };
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        loop {
            match lines.recv_timeout(Duration::from_secs(20)) {
                Ok(line) if line.contains("listening on") => return Ok(Tcpdump { proc, lines }),
                Ok(_) => {}
                Err(_) => {
                    return Err(LabError::Command {
                        cmd: format!("tcpdump -i {iface}"),
                        stderr: "did not start listening within 20 s".into(),
                    })
                }
            }
        }
    }

    /// Loads an nftables script (`nft -f`) in the namespace.
    pub fn nft(&self, script: &str) -> Result<(), LabError> {
        let path = std::env::temp_dir().join(format!("{}.nft", unique("phxnft")));
        std::fs::write(&path, script).map_err(|e| LabError::Io(path.display().to_string(), e))?;
        let r = self.exec(&["nft", "-f", &path.display().to_string()]);
        let _ = std::fs::remove_file(&path);
        r.map(|_| ())
    }

    /// Drops forwarded packets matching `matches` (an nft match expression),
    /// counted, in table `inet phalanx_lab` (removed with the namespace).
    pub fn drop_forwarded(&self, matches: &str) -> Result<(), LabError> {
        self.nft(&format!(
            "table inet phalanx_lab {{\n chain drops {{\n  type filter hook forward priority 0;\n  {matches} counter drop\n }}\n}}\n"
        ))
    }

    /// Packets counted by the rules of table `inet phalanx_lab`.
    pub fn dropped(&self) -> Result<u64, LabError> {
        let out = self.exec(&["nft", "-j", "list", "table", "inet", "phalanx_lab"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        // Sum every `"counter": {"packets": N, ...}` of the table.
        let mut total = 0u64;
        for part in text.split("\"counter\":").skip(1) {
            let n = part
                .split("\"packets\":")
                .nth(1)
                .and_then(|x| {
                    x.split(|c: char| !c.is_ascii_digit())
                        .find(|t| !t.is_empty())
                })
                .and_then(|t| t.parse::<u64>().ok())
                .ok_or_else(|| LabError::Command {
                    cmd: "nft -j list table inet phalanx_lab".into(),
                    stderr: "counter without a packet count".into(),
                })?;
            total += n;
        }
        Ok(total)
    }

    /// Reads an interface counter from sysfs inside the namespace.
    pub fn if_stat(&self, iface: &str, stat: &str) -> Result<u64, LabError> {
        let out = self.exec(&["cat", &format!("/sys/class/net/{iface}/statistics/{stat}")])?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| LabError::Command {
                cmd: format!("read {iface}/{stat}"),
                stderr: "not a number".into(),
            })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process killed (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
}

impl Proc {
    /// Wraps a spawned child.
    pub fn new(child: Child) -> Self {
        Proc { child: Some(child) }
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends a signal to the child.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill with a pid we own.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for it to exit; returns its output.
    pub fn stop(mut self, timeout: std::time::Duration) -> Option<Output> {
        let mut child = self.child.take()?;
        // SAFETY: kill with a pid we own.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return child.wait_with_output().ok();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait_with_output().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill with a pid we own.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            std::thread::sleep(std::time::Duration::from_millis(100));
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running tcpdump (see [`Netns::tcpdump`]).
#[derive(Debug)]
pub struct Tcpdump {
    proc: Proc,
    lines: mpsc::Receiver<String>,
}

impl Tcpdump {
    /// Stops it and returns the packets it reported as dropped by the kernel.
    pub fn stop(self) -> Result<u64, LabError> {
        drop(self.proc.stop(Duration::from_secs(5)));
        let mut drops = None;
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            if let Some(n) = line.strip_suffix(" packets dropped by kernel") {
                drops = n.trim().parse().ok();
            }
        }
        drops.ok_or_else(|| LabError::Command {
            cmd: "tcpdump".into(),
            stderr: "no exit report".into(),
        })
    }
}

/// A plain HTTP/1.0 GET; returns the status line and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(String, Vec<u8>)> {
    http_request(addr, "GET", path, &[], &[])
}

/// [`http_get`] waiting up to `within` for the answer (instead of 15 s).
pub fn http_get_within(
    addr: SocketAddr,
    path: &str,
    within: Duration,
) -> std::io::Result<(String, Vec<u8>)> {
    exchange(addr, "GET", path, &[], &[], within)
}

/// One HTTP/1.0 request with extra `headers` and a `body` (with its
/// Content-Length, except on a GET without one); returns the status line
/// and the body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<(String, Vec<u8>)> {
    exchange(addr, method, path, headers, body, Duration::from_secs(15))
}

fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
    within: Duration,
) -> std::io::Result<(String, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(within))?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if method != "GET" || !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.lines().next().unwrap_or("").to_string();
    Ok((status, raw[split..].to_vec()))
}

/// The value of an unlabelled sample `name` in Prometheus text (0 when absent).
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Two hosts joined by a veth pair: `a` (10.X.0.1, fd00:X::1) and `b` (10.X.0.2, fd00:X::2).
#[derive(Debug)]
pub struct TwoHosts {
    /// Client side.
    pub a: Netns,
    /// Server side.
    pub b: Netns,
    /// Interface name in `a`.
    pub a_if: String,
    /// Interface name in `b`.
    pub b_if: String,
    /// Second octet of the 10.X.0.0/24 subnet.
    pub subnet: u8,
}

impl TwoHosts {
    /// Creates both namespaces and the link; addresses come up without DAD delay.
    pub fn new(prefix: &str) -> Result<Self, LabError> {
        let a = Netns::new(&unique(&format!("{prefix}a")))?;
        let b = Netns::new(&unique(&format!("{prefix}b")))?;
        let subnet = fresh_subnet();
        let hosts = TwoHosts {
            a,
            b,
            a_if: "eth0".to_string(),
            b_if: "eth0".to_string(),
            subnet,
        };
        hosts.link()?;
        Ok(hosts)
    }

    /// Creates the veth pair between the hosts, with its addresses, up:
    /// again after it was deleted, as a new device of the same names.
    pub fn link(&self) -> Result<(), LabError> {
        let subnet = self.subnet;
        self.a.link_to(&self.a_if, &self.b, &self.b_if)?;
        for (ns, ifn, host) in [(&self.a, &self.a_if, 1), (&self.b, &self.b_if, 2)] {
            ns.ip(&[
                "addr",
                "add",
                &format!("10.{subnet}.0.{host}/24"),
                "dev",
                ifn,
            ])?;
            ns.ip(&[
                "addr",
                "add",
                &format!("fd00:{subnet:x}::{host}/64"),
                "dev",
                ifn,
                "nodad",
            ])?;
            ns.ip(&["link", "set", ifn, "up"])?;
        }
        Ok(())
    }

    /// IPv4 address of `a` (host 1) or `b` (host 2).
    pub fn v4(&self, host: u8) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(10, self.subnet, 0, host)
    }

    /// IPv6 address of `a` (host 1) or `b` (host 2).
    pub fn v6(&self, host: u8) -> std::net::Ipv6Addr {
        std::net::Ipv6Addr::new(0xfd00, self.subnet as u16, 0, 0, 0, 0, 0, host as u16)
    }

    /// Adds VLAN `vid` on both ends with 10.X.VID%256.{1,2}/24 addresses; returns the subinterface name.
    pub fn add_vlan(&self, vid: u16) -> Result<String, LabError> {
        let name = format!("vl{vid}");
        for (ns, parent, host) in [(&self.a, &self.a_if, 1), (&self.b, &self.b_if, 2)] {
            ns.ip(&[
                "link",
                "add",
                "link",
                parent,
                "name",
                &name,
                "type",
                "vlan",
                "id",
                &vid.to_string(),
            ])?;
            ns.ip(&[
                "addr",
                "add",
                &format!("10.{}.{}.{host}/24", self.subnet, vid % 256),
                "dev",
                &name,
            ])?;
            ns.ip(&["link", "set", &name, "up"])?;
        }
        Ok(name)
    }
}

/// Two hosts joined by several veth pairs (`eth0`, `eth1`, ... on both
/// sides), for captures compared side by side, one per pair: each host's
/// address (10.X.0.1 on `a`, 10.X.0.2 on `b`) sits on loopback, every pair
/// knows the other end's MAC statically, and one host route per side says
/// which pair carries the traffic. Moving the routes moves a running
/// connection to another pair between two packets.
#[derive(Debug)]
pub struct ParallelLinks {
    /// Client side.
    pub a: Netns,
    /// Server side.
    pub b: Netns,
    /// Interface names, the same on both sides.
    pub links: Vec<String>,
    /// Second octet of the 10.X.0.0 addresses.
    pub subnet: u8,
}

impl ParallelLinks {
    /// Creates both namespaces and `n` links; the traffic starts on link 0.
    pub fn new(prefix: &str, n: usize) -> Result<Self, LabError> {
        let a = Netns::new(&unique(&format!("{prefix}a")))?;
        let b = Netns::new(&unique(&format!("{prefix}b")))?;
        let subnet = fresh_subnet();
        let lab = ParallelLinks {
            a,
            b,
            links: (0..n).map(|k| format!("eth{k}")).collect(),
            subnet,
        };
        // Replies may arrive on the pair the route just left: no
        // reverse-path filter may drop them.
        for ns in [&lab.a, &lab.b] {
            ns.exec(&[
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ])?;
        }
        for (ns, host) in [(&lab.a, 1), (&lab.b, 2)] {
            ns.ip(&[
                "addr",
                "add",
                &format!("10.{subnet}.0.{host}/32"),
                "dev",
                "lo",
            ])?;
        }
        for link in &lab.links {
            lab.a.link_to(link, &lab.b, link)?;
            for ns in [&lab.a, &lab.b] {
                ns.ip(&["link", "set", link, "up"])?;
            }
        }
        for link in &lab.links {
            for (ns, peer, peer_host) in [(&lab.a, &lab.b, 2), (&lab.b, &lab.a, 1)] {
                let mac = peer.mac(link)?;
                let addr = format!("10.{subnet}.0.{peer_host}");
                ns.ip(&[
                    "neigh",
                    "replace",
                    &addr,
                    "lladdr",
                    &mac,
                    "dev",
                    link,
                    "nud",
                    "permanent",
                ])?;
            }
        }
        lab.route_via(0)?;
        Ok(lab)
    }

    /// IPv4 address of `a` (host 1) or `b` (host 2).
    pub fn v4(&self, host: u8) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(10, self.subnet, 0, host)
    }

    /// Routes the traffic between the hosts, both ways, over link `k`.
    pub fn route_via(&self, k: usize) -> Result<(), LabError> {
        let link = self.links.get(k).ok_or_else(|| LabError::Command {
            cmd: format!("route via link {k}"),
            stderr: format!("the lab has {} links", self.links.len()),
        })?;
        for (ns, from, to) in [(&self.a, 1, 2), (&self.b, 2, 1)] {
            ns.ip(&[
                "route",
                "replace",
                &format!("{}/32", self.v4(to)),
                "dev",
                link,
                "src",
                &self.v4(from).to_string(),
            ])?;
        }
        Ok(())
    }
}

/// Three hosts on a routed path, each link a veth pair:
/// `client` (10.X.1.2) — `router` (10.X.1.1 | 10.X.2.1, forwarding on) —
/// `server` (10.X.2.2), with default routes through the router. Each end
/// host's interface is `eth0`; the router's are `eth0` (client side) and
/// `eth1` (server side).
#[derive(Debug)]
pub struct Routed {
    /// Client host.
    pub client: Netns,
    /// Router.
    pub router: Netns,
    /// Server host.
    pub server: Netns,
    /// Second octet of the 10.X.{1,2}.0/24 subnets.
    pub subnet: u8,
}

impl Routed {
    /// Interface name of the client, of the server, and of the router towards the client.
    pub const IF: &'static str = "eth0";
    /// Interface name of the router towards the server.
    pub const ROUTER_SERVER_IF: &'static str = "eth1";

    /// Creates the namespaces, links, addresses and routes.
    pub fn new(prefix: &str) -> Result<Self, LabError> {
        let client = Netns::new(&unique(&format!("{prefix}c")))?;
        let router = Netns::new(&unique(&format!("{prefix}r")))?;
        let server = Netns::new(&unique(&format!("{prefix}s")))?;
        let subnet = fresh_subnet();
        let lab = Routed {
            client,
            router,
            server,
            subnet,
        };
        for (net, host, host_if, router_if) in [
            (1u8, &lab.client, Self::IF, Self::IF),
            (2u8, &lab.server, Self::IF, Self::ROUTER_SERVER_IF),
        ] {
            host.link_to(host_if, &lab.router, router_if)?;
            let gw = format!("10.{subnet}.{net}.1");
            host.ip(&[
                "addr",
                "add",
                &format!("10.{subnet}.{net}.2/24"),
                "dev",
                host_if,
            ])?;
            host.ip(&["link", "set", host_if, "up"])?;
            lab.router
                .ip(&["addr", "add", &format!("{gw}/24"), "dev", router_if])?;
            lab.router.ip(&["link", "set", router_if, "up"])?;
            host.ip(&["route", "add", "default", "via", &gw])?;
        }
        lab.router
            .exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        Ok(lab)
    }

    /// The client's address.
    pub fn client_v4(&self) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(10, self.subnet, 1, 2)
    }

    /// The server's address.
    pub fn server_v4(&self) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(10, self.subnet, 2, 2)
    }

    /// Every veth end as (namespace, interface).
    pub fn interfaces(&self) -> [(&Netns, &'static str); 4] {
        [
            (&self.client, Self::IF),
            (&self.router, Self::IF),
            (&self.router, Self::ROUTER_SERVER_IF),
            (&self.server, Self::IF),
        ]
    }

    /// Delays every packet the router forwards, either way, by `one_way`
    /// ± `jitter` ([`delay::DelayLine`]): the path's round trip becomes
    /// twice `one_way`.
    pub fn delay(&self, one_way: Duration, jitter: Duration) -> Result<delay::DelayLine, LabError> {
        delay::DelayLine::start(
            &self.router,
            &[Self::IF, Self::ROUTER_SERVER_IF],
            one_way,
            jitter,
        )
    }

    /// Turns segmentation and receive offloads off on every veth end, so
    /// captures see the segments that are on the wire.
    pub fn offloads_off(&self) -> Result<(), LabError> {
        for (ns, ifn) in self.interfaces() {
            ns.exec(&[
                "ethtool", "-K", ifn, "tso", "off", "gso", "off", "gro", "off",
            ])?;
        }
        Ok(())
    }
}

/// What [`upload`] measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upload {
    /// The client's port.
    pub client_port: u16,
    /// Bytes the server read before the client's FIN.
    pub received: usize,
}

/// Caps a socket's sending rate (TCP's own pacing, no qdisc needed).
/// Unpaced, a sender on veth outruns the receive backlog; ACKs then queue
/// long enough for RACK to re-send data that was never lost, and a drop
/// counter would no longer be the truth for the retransmissions.
pub fn pace(s: &TcpStream, bytes_per_sec: u32) -> Result<(), LabError> {
    // SAFETY: setsockopt on an open socket with a correctly sized u32 value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MAX_PACING_RATE,
            (&bytes_per_sec as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(LabError::Io(
            "SO_MAX_PACING_RATE".into(),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// A bulk upload of `bytes` from a client in `client` to a server it
/// starts in `server` on `addr`, optionally paced; ends with both FINs, so
/// a capture holds the whole connection. Every step is bounded by timeouts.
pub fn upload(
    client: &Netns,
    server: &Netns,
    addr: SocketAddr,
    bytes: usize,
    pace_bytes_per_sec: Option<u32>,
) -> Result<Upload, LabError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| LabError::Io(what, e)
    };
    let listener = server
        .run(move || std::net::TcpListener::bind(addr))?
        .map_err(io("bind server"))?;
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(n),
                k => n += k,
            }
        }
    });
    let mut c = client
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))?
        .map_err(io("connect"))?;
    let client_port = c.local_addr().map_err(io("local address"))?.port();
    c.set_write_timeout(Some(Duration::from_secs(20)))
        .map_err(io("timeout"))?;
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(io("timeout"))?;
    if let Some(rate) = pace_bytes_per_sec {
        pace(&c, rate)?;
    }
    let chunk = vec![0x5au8; 1 << 16];
    let mut left = bytes;
    while left > 0 {
        let k = left.min(chunk.len());
        c.write_all(&chunk[..k]).map_err(io("upload"))?;
        left -= k;
    }
    c.shutdown(std::net::Shutdown::Write).map_err(io("FIN"))?;
    // The server's FIN, so the close is captured too.
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).map_err(io("server's FIN"))?;
    let received = reader
        .join()
        .map_err(|_| LabError::Io("server thread".into(), std::io::Error::other("panicked")))?
        .map_err(io("server reads"))?;
    Ok(Upload {
        client_port,
        received,
    })
}

/// A webhook receiver on 127.0.0.1:`port` inside a namespace: answers every
/// POST with 200 and forwards its body to the channel; stops when dropped.
#[derive(Debug)]
pub struct WebhookReceiver {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl WebhookReceiver {
    /// Binds inside `ns` and serves on a thread.
    pub fn start(ns: &Netns, port: u16, tx: mpsc::Sender<String>) -> Result<Self, LabError> {
        let listener = ns
            .run(move || std::net::TcpListener::bind(("127.0.0.1", port)))?
            .map_err(|e| LabError::Io("bind webhook receiver".into(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| LabError::Io("nonblocking".into(), e))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let Ok((mut c, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let body = read_request_body(&mut c);
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                if let Some(b) = body {
                    let _ = tx.send(b);
                }
            }
        });
        Ok(Self { stop })
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The body of one HTTP/1.1 request (headers, then Content-Length bytes).
fn read_request_body(c: &mut TcpStream) -> Option<String> {
    let mut req = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
        let Some(p) = req.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&req[..p]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        if req.len() >= p + 4 + len {
            return Some(String::from_utf8_lossy(&req[p + 4..p + 4 + len]).to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{privileged, ParallelLinks};
    use std::{
        io::{Read as _, Write as _},
        net::{SocketAddr, TcpListener, TcpStream},
        time::Duration,
    };

    /// Bytes host a has sent out of each link.
    fn tx_bytes(lab: &ParallelLinks) -> Vec<u64> {
        lab.links
            .iter()
            .map(|l| {
                let out = lab
                    .a
                    .exec(&["cat", &format!("/sys/class/net/{l}/statistics/tx_bytes")])
                    .expect("read tx_bytes");
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .expect("a number")
            })
            .collect()
    }

    #[test]
    fn moving_the_route_moves_a_running_connection_to_another_link() {
        if !privileged("moving_the_route_moves_a_running_connection_to_another_link") {
            return;
        }
        const CHUNK: usize = 4 << 20;
        const ROUTE: [usize; 4] = [0, 2, 1, 0];
        let lab = ParallelLinks::new("tpl", 3).expect("lab");
        let server = SocketAddr::new(lab.v4(2).into(), 5301);
        let listener = lab
            .b
            .run(move || TcpListener::bind(server))
            .expect("enter b")
            .expect("bind");
        // The server acknowledges every chunk with one byte, so the client
        // knows the chunk crossed before the route moves on.
        let echo = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = vec![0u8; CHUNK];
            for _ in ROUTE {
                s.read_exact(&mut buf).expect("read a chunk");
                s.write_all(&[1]).expect("acknowledge");
            }
        });
        let mut client = lab
            .a
            .run(move || TcpStream::connect_timeout(&server, Duration::from_secs(5)))
            .expect("enter a")
            .expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let chunk = vec![7u8; CHUNK];
        for link in ROUTE {
            lab.route_via(link).expect("move the route");
            let before = tx_bytes(&lab);
            client.write_all(&chunk).expect("send a chunk");
            let mut ack = [0u8];
            client.read_exact(&mut ack).expect("chunk acknowledged");
            let after = tx_bytes(&lab);
            for (k, (b, a)) in before.iter().zip(&after).enumerate() {
                let sent = a - b;
                if k == link {
                    assert!(sent >= CHUNK as u64, "link {k} carried {sent} bytes");
                } else {
                    assert!(sent < 64 << 10, "link {k} carried {sent} bytes off route");
                }
            }
        }
        echo.join().expect("server");
        assert!(lab.route_via(3).is_err(), "a link the lab lacks");
    }
}

/// Test data vendored in the repository.
pub mod data {
    use std::path::PathBuf;

    /// The third-party captures (`tests/data/pcaps`, origins and licences in
    /// its README): inside the repository, so a clone tests itself.
    pub fn pcaps() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/pcaps")
    }
}
