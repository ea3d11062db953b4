//! A small-frame load generator: minimum-size Ethernet/IPv4/TCP frames sent
//! with `sendmmsg` on an AF_PACKET socket bound to one interface, paced to a
//! target rate and bounded in count and time: data segments for the ring
//! benchmark, SYNs for a sweep of new flows.
//!
//! The frames carry a destination MAC that is not the peer's, so the peer's
//! stack drops them as "other host" right after XDP and tc ingress have run:
//! the load reaches our programs and then costs nothing more, and no reply
//! traffic mixes into the figure.

use std::time::{Duration, Instant};

use crate::LabError;

type Result<T> = std::result::Result<T, LabError>;

fn failed(what: String) -> LabError {
    LabError::Io(what, std::io::Error::last_os_error())
}

/// Frames per `sendmmsg` call.
const BATCH: usize = 64;
/// Minimum Ethernet frame without FCS: 14 + 20 (IPv4) + 20 (TCP) + 6 payload.
const FRAME: usize = 60;
/// Payload bytes per segment (the padding up to the minimum frame).
const PAYLOAD: u32 = (FRAME - 54) as u32;

/// What to send.
pub struct Load {
    /// Interface to send on (in the calling thread's namespace).
    pub iface: String,
    /// IPv4 source and destination.
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Source ports (from `first_port`) the frames cycle through ...
    pub flows: u16,
    /// ... from this many source addresses (`src`, then the next ones
    /// in its last byte): `flows * sources` conversations.
    pub sources: u8,
    pub first_port: u16,
    /// Frames per second; infinite: as fast as the socket takes them.
    pub rate: f64,
    /// Upper bound on frames.
    pub max_frames: u64,
    /// Upper bound on time.
    pub max_time: Duration,
    /// TCP flags: [`DATA`] segments, or [`SYN`]s (no payload: each port
    /// is one connection attempt, its SYN re-sent).
    pub flags: u8,
}

/// ACK|PSH data segments of 6 bytes.
pub const DATA: u8 = 0x18;
/// SYNs.
pub const SYN: u8 = 0x02;

/// What was sent.
pub struct Sent {
    pub frames: u64,
    pub elapsed: Duration,
}

/// Closes a raw fd on drop.
struct Fd(i32);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

/// Writes the checksum of an IPv4 header without options.
fn set_ip_checksum(ip: &mut [u8]) {
    ip[10..12].fill(0);
    let sum = ip[..20]
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// Payload bytes of a `load` segment.
fn payload(load: &Load) -> u32 {
    if load.flags & SYN != 0 {
        0
    } else {
        PAYLOAD
    }
}

/// The frame template; each send patches the source port and sequence number.
fn frame(load: &Load) -> [u8; FRAME] {
    let mut f = [0u8; FRAME];
    // Ethernet: locally administered addresses that belong to no interface.
    f[..6].copy_from_slice(&[0x02, 0xfe, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[0x02, 0xfe, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    // IPv4, TTL 64, TCP; a SYN's frame is padded, not its segment.
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(40 + payload(load) as u16).to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&load.src);
    ip[16..20].copy_from_slice(&load.dst);
    set_ip_checksum(ip);
    // TCP (checksum is not checked by the parser).
    let tcp = &mut f[34..54];
    tcp[2..4].copy_from_slice(&5001u16.to_be_bytes());
    if load.flags & SYN == 0 {
        tcp[8..12].copy_from_slice(&1u32.to_be_bytes());
    }
    tcp[12] = 0x50;
    tcp[13] = load.flags;
    tcp[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    f
}

/// Sends `load` from the calling thread; returns the frames the socket took.
pub fn send(load: &Load) -> Result<Sent> {
    let name = std::ffi::CString::new(load.iface.as_str())
        .map_err(|_| failed(format!("interface name {:?}", load.iface)))?;
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(failed(format!("no interface {}", load.iface)));
    }
    // Protocol 0: this socket only sends, it never receives a copy of traffic.
    // SAFETY: plain socket call.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(failed("AF_PACKET socket".into()));
    }
    let fd = Fd(fd);
    // Skip the sender's own qdisc: its cost is not what is measured.
    let one: libc::c_int = 1;
    // SAFETY: valid option pointer and length.
    unsafe {
        libc::setsockopt(
            fd.0,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: valid address pointer and length.
    let rc = unsafe {
        libc::bind(
            fd.0,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(failed(format!("bind to {}", load.iface)));
    }

    let flows = load.flows.max(1);
    let step = payload(load);
    let sources = load.sources.max(1);
    let mut seqs = vec![1u32; usize::from(flows) * usize::from(sources)];
    let mut source = 0u8;
    let mut frames = vec![frame(load); BATCH];
    let mut iov: Vec<libc::iovec> = frames
        .iter_mut()
        .map(|f| libc::iovec {
            iov_base: f.as_mut_ptr().cast(),
            iov_len: FRAME,
        })
        .collect();
    // SAFETY: mmsghdr is plain data; zero is a valid start.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }

    let start = Instant::now();
    let mut sent = 0u64;
    let mut next_port = 0u16;
    while sent < load.max_frames && start.elapsed() < load.max_time {
        for f in frames.iter_mut() {
            let i = usize::from(source) * usize::from(flows) + usize::from(next_port);
            if sources > 1 {
                f[29] = load.src[3].wrapping_add(source);
                set_ip_checksum(&mut f[14..34]);
            }
            f[34..36].copy_from_slice(&(load.first_port + next_port).to_be_bytes());
            f[38..42].copy_from_slice(&seqs[i].to_be_bytes());
            seqs[i] = seqs[i].wrapping_add(step);
            next_port = (next_port + 1) % flows;
            if next_port == 0 {
                source = (source + 1) % sources;
            }
        }
        let want = (load.max_frames - sent).min(BATCH as u64) as u32;
        // SAFETY: msgs points at BATCH valid headers whose iovecs point at live frames.
        let n = unsafe { libc::sendmmsg(fd.0, msgs.as_mut_ptr(), want, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            // A full device queue is back-pressure, not failure: try again.
            if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN)) {
                std::thread::yield_now();
                continue;
            }
            return Err(LabError::Io(format!("sendmmsg on {}", load.iface), e));
        }
        sent += n as u64;
        if load.rate.is_finite() {
            let due = sent as f64 / load.rate;
            let ahead = due - start.elapsed().as_secs_f64();
            // Sleep only in coarse steps; shorter waits are caught up by the next batches.
            if ahead > 0.000_2 {
                std::thread::sleep(Duration::from_secs_f64(ahead));
            }
        }
    }
    Ok(Sent {
        frames: sent,
        elapsed: start.elapsed(),
    })
}
