//! The `phalanx` binary's error messages: every bad input says what is wrong
//! and where, before anything touches the kernel.

use std::process::{Command, Output};

fn phalanx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .args(args)
        .env("PHALANX_LOG", "error")
        .output()
        .expect("run phalanx")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn unknown_config_key_names_key_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("p.toml");
    std::fs::write(
        &cfg,
        "[capture]\ninterfaces = [\"lo\"]\nring_buffer = 4096\n",
    )
    .expect("write");
    let o = phalanx(&["run", "--config", cfg.to_str().expect("utf8")]);
    assert!(!o.status.success(), "bad config must fail");
    let e = stderr(&o);
    assert!(
        e.contains("ring_buffer") && e.contains("line 3"),
        "names key and line: {e}"
    );
}

#[test]
fn missing_config_file_is_reported() {
    let o = phalanx(&[
        "run",
        "--config",
        "/nonexistent/phalanx.toml",
        "--iface",
        "lo",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/nonexistent/phalanx.toml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn missing_interface_is_reported() {
    let o = phalanx(&["run", "--iface", "nosuchif0"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("nosuchif0") && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn an_open_api_on_a_public_address_is_refused() {
    // Before anything is loaded or attached: no root needed to see it.
    let o = phalanx(&["run", "--iface", "lo", "--listen", "0.0.0.0:19799"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("http.listen 0.0.0.0:19799 is not a loopback address")
            && e.contains("http.token_file")
            && e.contains("insecure_open"),
        "{e}"
    );
}

#[test]
fn no_interface_is_reported() {
    let o = phalanx(&["run"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--iface"), "{}", stderr(&o));
}

#[test]
fn missing_capabilities_are_named() {
    // As root, drop to nobody to see the message an unprivileged user gets.
    // SAFETY: geteuid has no preconditions.
    let o = if unsafe { libc::geteuid() } == 0 {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                env!("CARGO_BIN_EXE_phalanx"),
                "run",
                "--iface",
                "lo",
            ])
            .env("PHALANX_LOG", "error")
            .output()
            .expect("setpriv")
    } else {
        phalanx(&["run", "--iface", "lo"])
    };
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("capturing needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON")
            && stderr(&o).contains("missing: CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn analyze_reports_unreadable_files() {
    let o = phalanx(&["analyze", "/nonexistent/capture.pcap"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/nonexistent/capture.pcap"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn analyze_table_aligns_columns_and_sorts() {
    let espn = phalanx_lab::data::pcaps().join("internet/cs_http_espn.pcapng");
    let espn = espn.to_str().expect("utf-8 path");
    let table = |args: &[&str]| {
        let o = phalanx(args);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8(o.stdout).expect("utf-8")
    };
    let out = table(&["analyze", espn]);
    let lines: Vec<&str> = out.lines().take_while(|l| !l.is_empty()).collect();
    let (head, rows) = (lines[0], &lines[1..lines.len() - 1]);
    assert_eq!(rows.len(), 25 + 14, "25 TCP connections, 14 DNS queries");
    // Every numeric column ends where its heading ends.
    for name in ["PKTS", "BYTES", "RTT p99", "JITTER"] {
        let end = head.find(name).expect("heading") + name.len();
        for r in rows.iter() {
            assert!(
                r.len() >= end && r.as_bytes()[end - 1] != b' ',
                "{name} ends at {end} in {r:?}"
            );
            assert!(r.len() == end || r.as_bytes()[end] == b' ', "{r:?}");
        }
    }
    // No finding here: by retransmission rate (all 0), then packets.
    let packets = |r: &&str| -> u64 {
        r.split_whitespace()
            .nth(4)
            .and_then(|v| v.parse().ok())
            .expect("PKTS")
    };
    let by_packets: Vec<u64> = rows.iter().map(packets).collect();
    assert!(
        by_packets.windows(2).all(|w| w[0] >= w[1]),
        "{by_packets:?}"
    );
    // --sort like the API: the largest p99 RTT first.
    let out = table(&["analyze", "--sort", "rtt", espn]);
    let first = out.lines().nth(1).expect("a flow");
    assert!(first.contains("68.71.208.11:80"), "{first}");
    // The worst five, said so; --all every flow as it ends.
    let out = table(&["analyze", "--top", "5", espn]);
    let rows: Vec<&str> = out.lines().take_while(|l| !l.is_empty()).collect();
    assert_eq!(rows.len(), 1 + 5 + 1, "{out}");
    assert!(rows[6].starts_with("39 flows (5 shown: "), "{}", rows[6]);
    let out = table(&["analyze", "--all", espn]);
    let rows: Vec<&str> = out.lines().take_while(|l| !l.is_empty()).collect();
    assert_eq!(rows.len(), 1 + 39 + 1, "{out}");
    assert!(rows[40].starts_with("39 flows, "), "{}", rows[40]);
    assert_eq!(
        phalanx(&["analyze", "--top", "0", espn]).status.code(),
        Some(2)
    );
    let o = phalanx(&["analyze", "--sort", "retrans", espn]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("valid keys: retransmissions, retransmission_rate"));
}

#[test]
fn analyze_applies_exemptions_and_counts_them() {
    let printer = phalanx_lab::data::pcaps().join("internet/cs_inconsistent_printer.pcapng");
    let printer = printer.to_str().expect("utf-8 path");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("phalanx.toml");
    let run = |exemption: &str| {
        std::fs::write(&cfg, exemption).expect("config");
        let o = phalanx(&[
            "analyze",
            "--json",
            "--config",
            cfg.to_str().expect("utf-8"),
            printer,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
        (
            v["findings"].as_array().expect("findings").len(),
            v["exempted"].clone(),
        )
    };
    assert_eq!(run(""), (1, serde_json::json!({})), "the slow printer");
    let known =
        "[[exemptions]]\nrule = \"slow_receiver\"\nport = 9100\nreason = \"the old printer\"\n";
    assert_eq!(run(known), (0, serde_json::json!({"slow_receiver": 1})));
    let other_port = "[[exemptions]]\nrule = \"slow_receiver\"\nport = 631\n";
    assert_eq!(run(other_port).0, 1, "every selector must match");
    let expired = "[[exemptions]]\nport = 9100\nuntil = \"2020-01-01T00:00:00Z\"\n";
    assert_eq!(run(expired).0, 1, "ended by itself");
    std::fs::write(&cfg, "[[exemptions]]\nrule = \"slow_reciever\"\n").expect("config");
    let o = phalanx(&["analyze", "--config", cfg.to_str().expect("utf-8"), printer]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("exemptions[1].rule: unknown rule \"slow_reciever\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_systemd_unit_verifies_and_is_confined() {
    // The example unit with this build as its binary: systemd-analyze
    // checks it offline (systemd need not be PID 1) and rates its
    // exposure, 0 (confined) to 10; 2.0 or less passes.
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/deploy/phalanx.service"
    ))
    .expect("examples/deploy/phalanx.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/phalanx run"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("phalanx.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/phalanx", env!("CARGO_BIN_EXE_phalanx")),
    )
    .expect("unit copy");
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian: systemd)");
    assert!(verify.status.success(), "verify: {}", stderr(&verify));
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&path)
        .output()
        .expect("systemd-analyze security");
    let report = String::from_utf8_lossy(&security.stdout);
    assert!(
        security.status.success(),
        "exposure above 2.0:\n{}",
        report.lines().last().unwrap_or("")
    );
    for line in [
        "DynamicUser=yes",
        "AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON\n",
        "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON\n",
        "NoNewPrivileges=yes",
        "LimitNOFILE=",
    ] {
        assert!(unit.contains(line), "the unit sets {line}");
    }
}

#[test]
fn errors_are_one_line_without_backtrace_or_colour() {
    let o = Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .args(["analyze", "/nonexistent/capture.pcap"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run phalanx");
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert_eq!(
        e.trim_end(),
        "error: /nonexistent/capture.pcap: No such file or directory (os error 2)",
        "one line, each cause once"
    );
    assert!(!e.contains("backtrace") && !e.contains('\u{1b}'), "{e:?}");
}

/// A vendored capture of one clean TCP connection.
const GOOD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/data/pcaps/lab/keepalive_idle.pcap"
);

#[test]
fn a_bad_input_keeps_the_good_ones_and_exits_3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty.pcap");
    std::fs::write(&empty, b"").expect("empty file");
    let truncated = dir.path().join("truncated.pcap");
    let bytes = std::fs::read(GOOD).expect("vendored capture");
    std::fs::write(&truncated, &bytes[..bytes.len() - 30]).expect("truncated copy");
    let empty_s = empty.display().to_string();
    let o = phalanx(&["analyze", "--json", GOOD, &empty_s]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("the report");
    assert_eq!(
        v["flows"].as_array().map(Vec::len),
        Some(1),
        "the good file's flow"
    );
    assert_eq!(v["inputs"][0]["error"], serde_json::Value::Null);
    assert!(
        v["inputs"][1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("empty file")),
        "{}",
        v["inputs"][1]
    );
    assert!(
        stderr(&o).contains("error: 1 of 2 inputs damaged or unreadable"),
        "{}",
        stderr(&o)
    );
    // One damaged file alone: what it held, then status 3.
    let o = phalanx(&["analyze", "--json", &truncated.display().to_string()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("the report");
    assert!(
        v["inputs"][0]["records"].as_u64() > Some(20),
        "{}",
        v["inputs"][0]
    );
}

#[test]
fn a_dash_reads_standard_input() {
    use std::io::Write as _;
    let by_path = phalanx(&["analyze", "--json", GOOD]);
    assert!(by_path.status.success());
    let mut child = Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .args(["analyze", "--json", "-"])
        .env("PHALANX_LOG", "error")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run phalanx");
    let bytes = std::fs::read(GOOD).expect("vendored capture");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&bytes)
        .expect("feed stdin");
    let by_stdin = child.wait_with_output().expect("output");
    assert!(by_stdin.status.success());
    let flows = |o: &Output| {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
        v["flows"].clone()
    };
    assert_eq!(flows(&by_stdin), flows(&by_path), "the same figures");
}

/// Writes `n` one-packet UDP flows as a zstd-compressed pcapng: each from
/// its own address and port, 1,000 a second of capture time, so about a
/// minute's worth (the UDP idle timeout) are open at once.
fn one_packet_flows(path: &std::path::Path, n: u32) {
    use phalanx_common::{ipproto, PacketMeta, RecordKind};
    use phalanx_daemon::capture::frame::{PayloadMode, PcapngWriter};
    let file = std::fs::File::create(path).expect("create capture");
    let z = zstd::Encoder::new(file, 1).expect("zstd").auto_finish();
    let mut w = PcapngWriter::new(std::io::BufWriter::new(z)).expect("pcapng");
    let ifc = w.add_interface("synth0").expect("interface");
    for i in 0..n {
        let mut m = PacketMeta::zeroed();
        m.ts_ns = 1_700_000_000_000_000_000 + u64::from(i) * 1_000_000;
        m.kind = RecordKind::Udp as u8;
        m.ip_version = 4;
        m.l4_proto = ipproto::UDP;
        m.ttl = 64;
        let [a, b, c, d] = i.to_be_bytes();
        m.src_addr[..4].copy_from_slice(&[10, a.wrapping_add(1), b, c]);
        m.dst_addr[..4].copy_from_slice(&[192, 0, 2, 1]);
        m.sport = 1024 + u16::from(d);
        m.dport = 53;
        m.ip_len = 28 + 32;
        m.payload_len = 32;
        m.wire_len = 14 + 28 + 32;
        w.write_record(ifc, &m, PayloadMode::Zeroed, None)
            .expect("record");
    }
}

/// Runs `phalanx analyze --json FILE` into /dev/null; its peak RSS in MiB.
// `wait4` reaps the child, with the figures of that child alone.
#[allow(clippy::zombie_processes)]
fn analyze_peak_rss_mib(file: &std::path::Path) -> u64 {
    let child = Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .args(["analyze", "--json"])
        .arg(file)
        .env("PHALANX_LOG", "error")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run phalanx");
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for this child only.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our unwaited child; the pointers are valid.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "analyze failed: {status}"
    );
    (usage.ru_maxrss as u64) / 1024
}

#[test]
fn analyze_json_memory_follows_open_flows_not_all_flows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (small, large) = (
        dir.path().join("small.pcapng.zst"),
        dir.path().join("large.pcapng.zst"),
    );
    // 100,000 and 400,000 flows; some 60,000 open at once in both.
    one_packet_flows(&small, 100_000);
    one_packet_flows(&large, 400_000);
    let (a, b) = (analyze_peak_rss_mib(&small), analyze_peak_rss_mib(&large));
    eprintln!("analyze --json peak RSS: {a} MiB for 100,000 flows, {b} MiB for 400,000");
    // Holding every flow would take some 2 kB more per flow: +600 MiB.
    assert!(b < a + 64, "{a} MiB for 100,000 flows, {b} MiB for 400,000");
}

#[test]
fn analyze_anonymize_key_rewrites_every_address_consistently() {
    use phalanx_daemon::anonymize::Anonymizer;
    use serde_json::Value;
    use std::collections::BTreeSet;
    use std::net::IpAddr;

    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("anon.key");
    let hex: String = (0..32u8)
        .map(|b| format!("{:02x}", b.wrapping_mul(37)))
        .collect();
    std::fs::write(&key, format!("{hex}\n")).expect("key file");
    let key = key.to_str().expect("utf-8 path");
    let mut map = Anonymizer::from_key_file(std::path::Path::new(key)).expect("key");
    // An address as a whole token of the output (not inside a longer number).
    let mentions = |out: &str, ip: &str| {
        let part = |c: char| c.is_ascii_hexdigit() || c == '.' || c == ':';
        out.match_indices(ip)
            .any(|(i, _)| !out[..i].ends_with(part) && !out[i + ip.len()..].starts_with(part))
    };
    // Every value of a report that is an address (flows, ICMP senders, findings).
    fn addresses(v: &Value, out: &mut BTreeSet<IpAddr>) {
        match v {
            Value::String(s) => out.extend(s.parse::<IpAddr>()),
            Value::Array(a) => a.iter().for_each(|v| addresses(v, out)),
            Value::Object(o) => o.values().for_each(|v| addresses(v, out)),
            _ => {}
        }
    }
    let addresses = |v: &Value| {
        let mut out = BTreeSet::new();
        addresses(v, &mut out);
        out
    };
    // ICMP errors quoting a flow; IPv6; a /24 of two hosts; 39 flows of 15 hosts.
    for name in [
        "sv_bug-3616-smtp_pmtud.pcap",
        "sv_http-body-hook-01_ipv6.pcap",
        "internet/cs_inconsistent_printer.pcapng",
        "internet/cs_http_espn.pcapng",
    ] {
        let file = phalanx_lab::data::pcaps().join(name);
        let file = file.to_str().expect("utf-8 path");
        let run = |extra: &[&str]| {
            let o = phalanx(&[&["analyze", "--json"], extra, &[file]].concat());
            assert!(o.status.success(), "{name}: {}", stderr(&o));
            let text = String::from_utf8(o.stdout).expect("utf-8");
            let v: Value = serde_json::from_str(&text).expect("JSON");
            (text, v)
        };
        let (plain_text, plain) = run(&[]);
        let (anon_text, anon) = run(&["--anonymize-key", key]);
        let (pf, af) = (
            plain["flows"].as_array().expect("flows"),
            anon["flows"].as_array().expect("flows"),
        );
        assert_eq!(pf.len(), af.len(), "{name}: flows");
        assert_eq!(
            plain["findings"].as_array().map(Vec::len),
            anon["findings"].as_array().map(Vec::len),
            "{name}: findings"
        );
        // Each flow is found under its anonymised addresses with the same
        // figures.
        let originals = addresses(&plain);
        assert!(originals.len() >= 2, "{name}: {originals:?}");
        for f in pf {
            let ip = |k: &str| -> IpAddr {
                f[k].as_str().and_then(|a| a.parse().ok()).expect("address")
            };
            let (src, dst) = (map.ip(ip("src")).to_string(), map.ip(ip("dst")).to_string());
            let g = af
                .iter()
                .find(|g| {
                    (&g["src"], &g["sport"], &g["dst"], &g["dport"], &g["proto"])
                        == (
                            &Value::from(src.clone()),
                            &f["sport"],
                            &Value::from(dst.clone()),
                            &f["dport"],
                            &f["proto"],
                        )
                })
                .unwrap_or_else(|| panic!("{name}: no flow {src} -> {dst} for {f}"));
            for k in [
                "packets",
                "bytes",
                "retransmissions",
                "src_to_dst",
                "dst_to_src",
                "rtt",
            ] {
                assert_eq!(f[k], g[k], "{name}: {k} of {src} -> {dst}");
            }
        }
        let expected: Value = serde_json::from_str(&map.text(&plain_text)).expect("JSON");
        // Nothing else changes: the whole report is the plain one with the
        // addresses mapped, wherever they are (ICMP senders, summaries).
        assert_eq!(expected, anon, "{name}: the report");
        for ip in &originals {
            let ip = ip.to_string();
            assert!(
                mentions(&plain_text, &ip),
                "{name}: the check would see {ip}"
            );
            assert!(
                !mentions(&anon_text, &ip),
                "{name}: {ip} left in the output"
            );
        }
        // Prefix preservation: any two addresses share as many leading bits
        // after as before (two hosts of one /24 stay in one /24).
        let bits = |a: &IpAddr| -> (u128, u32) {
            match a {
                IpAddr::V4(a) => (u128::from(u32::from(*a)) << 96, 32),
                IpAddr::V6(a) => (u128::from(*a), 128),
            }
        };
        let common = |a: &IpAddr, b: &IpAddr| {
            let ((x, n), (y, _)) = (bits(a), bits(b));
            (x ^ y).leading_zeros().min(n)
        };
        let mapped: Vec<(IpAddr, IpAddr)> = originals.iter().map(|a| (*a, map.ip(*a))).collect();
        assert_eq!(
            addresses(&anon),
            mapped.iter().map(|m| m.1).collect(),
            "{name}"
        );
        for (a, x) in &mapped {
            for (b, y) in &mapped {
                if a.is_ipv4() == b.is_ipv4() {
                    assert_eq!(common(a, b), common(x, y), "{name}: {a} {b} -> {x} {y}");
                }
            }
        }
        if name.contains("printer") {
            let [(_, x), (_, y)] = mapped[..] else {
                panic!("{mapped:?}")
            };
            assert!(common(&x, &y) >= 24, "one /24 stays one /24: {x} {y}");
        }
    }
    // A bad key is refused before any output, naming the file.
    let short = dir.path().join("short.key");
    std::fs::write(&short, "0123").expect("key file");
    let o = phalanx(&[
        "analyze",
        "--json",
        "--anonymize-key",
        short.to_str().expect("utf-8"),
        "/nonexistent.pcap",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    let e = stderr(&o);
    assert!(
        e.contains("short.key") && e.contains("64 hex digits"),
        "{e}"
    );
}
