//! pcap/pcapng reader producing `PacketMeta` records.
//!
//! The file formats are decoded by `pcap-file`'s slice parsers over a buffer
//! this reader owns, so every record's byte offset is known: a damaged file
//! yields its records up to the damage, then one error naming the offset.
//! zstd-compressed files are recognised by their magic number and decoded
//! while streaming.

use std::fmt;
use std::fs::File;
use std::io::{self, Cursor, Read};
use std::path::Path;

use pcap_file::pcap::PcapParser;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::{
    ENHANCED_PACKET_BLOCK, INTERFACE_DESCRIPTION_BLOCK, PACKET_BLOCK, SECTION_HEADER_BLOCK,
    SIMPLE_PACKET_BLOCK,
};
use pcap_file::pcapng::{Block, PcapNgParser};
use pcap_file::{Endianness, PcapError, TsResolution};
use phalanx_common::{Direction, PacketMeta};
use thiserror::Error;
use tracing::{debug, warn};

use super::parse::{fill_frame, LinkType, ParseError};

/// Largest pcap record or pcapng block accepted; a length field above this
/// is treated as corruption instead of being buffered (Wireshark uses the same bound).
pub const MAX_UNIT_LEN: usize = 16 * 1024 * 1024;

/// Largest plausible captured length of one pcap packet when the file's
/// snap length is smaller (libpcap's maximum snap length).
const MAX_PCAP_PACKET: u32 = 262_144;

const READ_CHUNK: usize = 256 * 1024;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
const PCAP_MAGICS: [[u8; 4]; 4] = [
    [0xa1, 0xb2, 0xc3, 0xd4],
    [0xd4, 0xc3, 0xb2, 0xa1],
    [0xa1, 0xb2, 0x3c, 0x4d],
    [0x4d, 0x3c, 0xb2, 0xa1],
];

/// Where in which input a problem is: the byte offset counts from the start
/// of the capture data (after decompression for `.zst` input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// File name (or the name given to [`CaptureReader::from_reader_named`]).
    pub name: String,
    /// Byte offset of the record or block that is damaged.
    pub offset: u64,
    /// The offset counts decompressed bytes.
    pub decompressed: bool,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: at byte offset {}", self.name, self.offset)?;
        if self.decompressed {
            f.write_str(" of the decompressed data")?;
        }
        Ok(())
    }
}

/// Errors of the capture file reader.
#[derive(Debug, Error)]
pub enum FileError {
    /// The file could not be opened.
    #[error("{name}: {source}")]
    Open {
        /// File name.
        name: String,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// The input is neither pcap nor pcapng (nor zstd-compressed either).
    #[error("{name}: {}", unknown_format(magic))]
    UnknownFormat {
        /// File name.
        name: String,
        /// The first bytes of the input.
        magic: Vec<u8>,
    },
    /// The input ends inside a header, record or block.
    #[error("{at}: file ends inside a {what}")]
    Truncated {
        /// Where the incomplete unit starts.
        at: Location,
        /// What was cut off.
        what: &'static str,
    },
    /// A header, record or block holds values that cannot be right.
    #[error("{at}: corrupt {what}: {reason}")]
    Corrupt {
        /// Where the damaged unit starts.
        at: Location,
        /// What is damaged.
        what: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// Reading (or decompressing) failed.
    #[error("{at}: read error: {source}")]
    Read {
        /// How far reading got.
        at: Location,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
}

impl FileError {
    /// Byte offset of the damage, for errors that have one.
    pub fn offset(&self) -> Option<u64> {
        match self {
            Self::Truncated { at, .. } | Self::Corrupt { at, .. } | Self::Read { at, .. } => {
                Some(at.offset)
            }
            Self::Open { .. } | Self::UnknownFormat { .. } => None,
        }
    }
}

/// Counters of what a reader has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// Packets found in the file (every pcap record, EPB, SPB and PB).
    pub frames: u64,
    /// Records produced.
    pub records: u64,
    /// Well-formed frames that are not IP (ARP, LLDP, ...), skipped.
    pub not_ip: u64,
    /// Frames whose headers are truncated or malformed, skipped.
    pub malformed: u64,
    /// Frames on interfaces with a link type the parser does not handle, skipped.
    pub unsupported_link: u64,
}

/// Container format of a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureFormat {
    /// libpcap format.
    Pcap,
    /// pcapng format.
    PcapNg,
}

/// Per-interface decoding state of a pcapng section.
#[derive(Debug, Clone)]
struct Interface {
    raw_link: u32,
    link: Option<LinkType>,
    tsresol: u8,
    tsoffset_s: u64,
    snaplen: u32,
    warned: bool,
}

impl Interface {
    /// The link type, or `None` (counted, and warned about once) when
    /// this interface's link type is not one we parse.
    #[inline(always)]
    fn link_or_warn(
        &mut self,
        file: &str,
        index: u32,
        stats: &mut ReaderStats,
    ) -> Option<LinkType> {
        if self.link.is_none() {
            stats.unsupported_link += 1;
            if !self.warned {
                warn!(file = %file, interface = index, linktype = self.raw_link,
                    "unsupported link type, packets skipped");
                self.warned = true;
            }
        }
        self.link
    }

    /// The captured bytes of a packet: SPB data runs to the end of the
    /// block, padding included, so there the captured part is the
    /// original length capped by the snap length.
    #[inline(always)]
    fn captured(&self, packet: &Packet) -> (usize, usize) {
        let (lo, mut hi) = packet.data;
        if packet.ticks.is_none() {
            let mut cap = packet.orig_len as usize;
            if self.snaplen != 0 {
                cap = cap.min(self.snaplen as usize);
            }
            hi = hi.min(lo + cap);
        }
        (lo, hi)
    }

    fn from_idb(idb: &InterfaceDescriptionBlock<'_>) -> Self {
        let raw_link = u32::from(idb.linktype);
        let mut iface = Self {
            raw_link,
            link: LinkType::from_linktype(raw_link),
            // pcapng default resolution is microseconds.
            tsresol: 6,
            tsoffset_s: 0,
            snaplen: idb.snaplen,
            warned: false,
        };
        for opt in &idb.options {
            match opt {
                InterfaceDescriptionOption::IfTsResol(r) => iface.tsresol = *r,
                InterfaceDescriptionOption::IfTsOffset(o) => iface.tsoffset_s = *o,
                _ => {}
            }
        }
        iface
    }

    fn ts_ns(&self, ticks: u64) -> u64 {
        let ns = pcapng_ticks_to_ns(ticks, self.tsresol);
        ns.saturating_add(self.tsoffset_s.saturating_mul(1_000_000_000))
    }
}

/// Converts a pcapng timestamp in `if_tsresol` units to nanoseconds
/// (per packet: inlined although the interface check calls it too).
#[inline(always)]
fn pcapng_ticks_to_ns(ticks: u64, tsresol: u8) -> u64 {
    let ticks = u128::from(ticks);
    let exp = u32::from(tsresol & 0x7f);
    let ns = if tsresol & 0x80 == 0 {
        if exp <= 9 {
            ticks * 10u128.pow(9 - exp)
        } else {
            10u128.checked_pow(exp - 9).map_or(0, |d| ticks / d)
        }
    } else {
        // Negative powers of two: exp <= 127, so 2^exp fits in u128.
        ticks.saturating_mul(1_000_000_000) >> exp
    };
    u64::try_from(ns).unwrap_or(u64::MAX)
}

enum Format {
    Pcap {
        parser: PcapParser,
        raw_link: u32,
        link: Option<LinkType>,
        nanos: bool,
        snaplen: u32,
        warned: bool,
    },
    PcapNg {
        parser: PcapNgParser,
        interfaces: Vec<Interface>,
    },
}

/// What one step of the reader produced.
enum Step {
    /// A record was appended to the batch.
    Record,
    Skipped,
    End,
}

/// The byte stream and the buffer the format parsers run on.
struct Input {
    name: String,
    source: Box<dyn Read + Send>,
    compressed: bool,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    eof: bool,
}

impl Input {
    fn location(&self) -> Location {
        Location {
            name: self.name.clone(),
            offset: self.base + self.start as u64,
            decompressed: self.compressed,
        }
    }

    fn corrupt(&self, what: &'static str, reason: impl ToString) -> FileError {
        FileError::Corrupt {
            at: self.location(),
            what,
            reason: reason.to_string(),
        }
    }

    fn avail(&self) -> &[u8] {
        self.buf.get(self.start..self.end).unwrap_or_default()
    }

    /// Marks everything before `rest` (a suffix of the buffered bytes) as consumed.
    fn consume_to(&mut self, rest_len: usize) {
        self.start = self.end - rest_len;
    }

    /// Reads more input into the buffer; returns false at end of input.
    fn fill(&mut self, what: &'static str) -> Result<bool, FileError> {
        if self.eof {
            return Ok(false);
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.base += self.start as u64;
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            if self.buf.len() >= MAX_UNIT_LEN + READ_CHUNK {
                return Err(self.corrupt(
                    what,
                    format!("longer than {MAX_UNIT_LEN} bytes (damaged length field?)"),
                ));
            }
            let grown = (self.buf.len() * 2).min(MAX_UNIT_LEN + READ_CHUNK);
            self.buf.resize(grown, 0);
        }
        loop {
            let free = self.buf.get_mut(self.end..).unwrap_or_default();
            match self.source.read(free) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    let mut at = self.location();
                    at.offset = self.base + self.end as u64;
                    return Err(FileError::Read { at, source });
                }
            }
        }
    }

    /// Reads more input after a parser asked for it; input ending here is truncated.
    fn need_more(&mut self, what: &'static str) -> Result<(), FileError> {
        if self.fill(what)? {
            Ok(())
        } else {
            Err(FileError::Truncated {
                at: self.location(),
                what,
            })
        }
    }

    /// Runs a `pcap-file` slice parser on the buffered bytes, reading more
    /// while it needs more, and consumes what it parsed.
    fn parse_unit<T>(
        &mut self,
        what: &'static str,
        parse: impl Fn(&[u8]) -> Result<(&[u8], T), PcapError>,
    ) -> Result<T, FileError> {
        loop {
            match parse(self.avail()) {
                Ok((rest, value)) => {
                    self.consume_to(rest.len());
                    return Ok(value);
                }
                Err(PcapError::IncompleteBuffer) => self.need_more(what)?,
                Err(e) => return Err(self.corrupt(what, e)),
            }
        }
    }

    /// True when all input has been consumed.
    fn at_end(&mut self) -> Result<bool, FileError> {
        if self.start < self.end {
            return Ok(false);
        }
        Ok(!self.fill("record")?)
    }
}

/// Streaming reader of pcap/pcapng (optionally zstd-compressed) captures that
/// yields one [`PacketMeta`] per IP frame, in file order.
///
/// Frames that are not IP, or whose headers are damaged, are skipped and
/// counted in [`CaptureReader::stats`]. Damage to the file itself ends the
/// iteration with exactly one error.
pub struct CaptureReader {
    input: Input,
    format: Format,
    stats: ReaderStats,
    done: bool,
    /// The one-record batch behind [`Iterator::next`].
    one: Vec<PacketMeta>,
}

impl fmt::Debug for CaptureReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaptureReader")
            .field("name", &self.input.name)
            .field("format", &self.format())
            .field("compressed", &self.input.compressed)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Opens a capture file (pcap or pcapng, plain or zstd-compressed).
pub fn open(path: &Path) -> Result<CaptureReader, FileError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|source| FileError::Open {
        name: name.clone(),
        source,
    })?;
    CaptureReader::from_reader_named(file, name)
}

/// Reads a capture from any byte stream (named `<input>` in errors).
pub fn from_reader<R: Read + Send + 'static>(reader: R) -> Result<CaptureReader, FileError> {
    CaptureReader::from_reader_named(reader, "<input>")
}

impl CaptureReader {
    /// Reads a capture from a byte stream; `name` is used in error messages.
    pub fn from_reader_named<R: Read + Send + 'static>(
        reader: R,
        name: impl Into<String>,
    ) -> Result<Self, FileError> {
        let name = name.into();
        let mut source: Box<dyn Read + Send> = Box::new(reader);
        let read_err = |name: &str, source: io::Error, decompressed| FileError::Read {
            at: Location {
                name: name.to_string(),
                offset: 0,
                decompressed,
            },
            source,
        };
        let mut magic = read_prefix(&mut source).map_err(|e| read_err(&name, e, false))?;
        let mut compressed = false;
        if magic == ZSTD_MAGIC {
            let chained = Cursor::new(magic).chain(source);
            let decoder =
                zstd::stream::read::Decoder::new(chained).map_err(|e| read_err(&name, e, false))?;
            source = Box::new(decoder);
            compressed = true;
            magic = read_prefix(&mut source).map_err(|e| read_err(&name, e, true))?;
        }
        let pcapng = if magic.as_slice() == PCAPNG_MAGIC {
            true
        } else if PCAP_MAGICS.iter().any(|m| m.as_slice() == magic.as_slice()) {
            false
        } else {
            return Err(FileError::UnknownFormat { name, magic });
        };
        let mut buf = vec![0u8; READ_CHUNK];
        buf[..magic.len()].copy_from_slice(&magic);
        let mut input = Input {
            name,
            source,
            compressed,
            buf,
            start: 0,
            end: magic.len(),
            base: 0,
            eof: false,
        };
        let format = if pcapng {
            let parser = input.parse_unit("pcapng section header", PcapNgParser::new)?;
            Format::PcapNg {
                parser,
                interfaces: Vec::new(),
            }
        } else {
            let parser = input.parse_unit("pcap file header", PcapParser::new)?;
            let header = parser.header();
            let raw_link = u32::from(header.datalink);
            Format::Pcap {
                raw_link,
                link: LinkType::from_linktype(raw_link),
                nanos: header.ts_resolution == TsResolution::NanoSecond,
                snaplen: header.snaplen,
                parser,
                warned: false,
            }
        };
        Ok(Self {
            input,
            format,
            stats: ReaderStats::default(),
            done: false,
            one: Vec::with_capacity(1),
        })
    }

    /// Counters so far (final once the iterator has ended).
    pub fn stats(&self) -> ReaderStats {
        self.stats
    }

    /// Name used in error messages.
    pub fn name(&self) -> &str {
        &self.input.name
    }

    /// Container format of the capture.
    pub fn format(&self) -> CaptureFormat {
        match self.format {
            Format::Pcap { .. } => CaptureFormat::Pcap,
            Format::PcapNg { .. } => CaptureFormat::PcapNg,
        }
    }

    /// Bytes of the (decompressed) input consumed so far.
    pub fn position(&self) -> u64 {
        self.input.base + self.input.start as u64
    }

    /// True when the input was zstd-compressed.
    pub fn is_compressed(&self) -> bool {
        self.input.compressed
    }

    /// Appends the next records to `batch` until it holds `limit` records
    /// or the input ends. Returns false once the input is exhausted; damage
    /// to the file is returned once (after the records before it), and
    /// every later call returns false. Records are decoded in place in the
    /// batch, with no copy in between.
    pub fn read_batch(
        &mut self,
        batch: &mut Vec<PacketMeta>,
        limit: usize,
    ) -> Result<bool, FileError> {
        while !self.done {
            if batch.len() >= limit {
                return Ok(true);
            }
            match self.step(batch) {
                Ok(Step::Record | Step::Skipped) => {}
                Ok(Step::End) => self.done = true,
                Err(e) => {
                    self.done = true;
                    return Err(e);
                }
            }
        }
        Ok(false)
    }

    fn step(&mut self, batch: &mut Vec<PacketMeta>) -> Result<Step, FileError> {
        if self.input.at_end()? {
            return Ok(Step::End);
        }
        match &mut self.format {
            Format::Pcap { .. } => self.step_pcap(batch),
            Format::PcapNg { .. } => self.step_pcapng(batch),
        }
    }

    fn step_pcap(&mut self, batch: &mut Vec<PacketMeta>) -> Result<Step, FileError> {
        let Format::Pcap {
            parser,
            raw_link,
            link,
            nanos,
            snaplen,
            warned,
        } = &mut self.format
        else {
            return Ok(Step::End);
        };
        let what = "pcap packet record";
        let input = &mut self.input;
        let record_start = input.start;
        // Raw records: pcap-file's validated form rejects snapped packets
        // (orig_len > snaplen), which are normal in real captures.
        let avail = input.avail();
        // Reject an implausible length before buffering that much data.
        let max_incl = (*snaplen).max(MAX_PCAP_PACKET);
        if let Some(incl_len) = peek_u32(avail, 8, parser.header().endianness) {
            if incl_len > max_incl {
                return Err(input.corrupt(
                    what,
                    format!("captured length {incl_len} exceeds snap length {snaplen}"),
                ));
            }
        }
        let raw = match parser.next_raw_packet(avail) {
            Ok((rest, raw)) => {
                let data = data_range(avail, &raw.data);
                let fields = (raw.ts_sec, raw.ts_frac, raw.incl_len, raw.orig_len);
                let rest_len = rest.len();
                input.consume_to(rest_len);
                (fields, data)
            }
            Err(PcapError::IncompleteBuffer) => {
                input.need_more(what)?;
                return Ok(Step::Skipped);
            }
            Err(e) => return Err(input.corrupt(what, e)),
        };
        let ((ts_sec, ts_frac, incl_len, orig_len), (lo, hi)) = raw;
        self.stats.frames += 1;
        let Some(link) = *link else {
            self.stats.unsupported_link += 1;
            if !*warned {
                warn!(file = %input.name, linktype = *raw_link, "unsupported link type, packets skipped");
                *warned = true;
            }
            return Ok(Step::Skipped);
        };
        let frac_ns = if *nanos {
            u64::from(ts_frac)
        } else {
            u64::from(ts_frac) * 1000
        };
        let ts_ns = u64::from(ts_sec) * 1_000_000_000 + frac_ns;
        let wire_len = orig_len.max(incl_len);
        let frame = input
            .buf
            .get(record_start + lo..record_start + hi)
            .unwrap_or_default();
        Ok(record_frame(
            &mut self.stats,
            input,
            batch,
            record_start,
            |meta| fill_frame(meta, link, frame, ts_ns, 0, Direction::Unknown, wire_len),
        ))
    }

    fn step_pcapng(&mut self, batch: &mut Vec<PacketMeta>) -> Result<Step, FileError> {
        let Format::PcapNg { parser, interfaces } = &mut self.format else {
            return Ok(Step::End);
        };
        let input = &mut self.input;
        let block_start = input.start;
        // Peek the block type so that only blocks we use are decoded in full:
        // decoding the others is wasted work and, for some damaged name
        // resolution blocks, not panic-free in pcap-file 2.0.
        let endianness = parser.section().endianness;
        let avail = input.avail();
        let block_type = peek_u32(avail, 0, endianness);
        check_block_len(input, avail, block_type, endianness)?;
        if !matches!(
            block_type,
            Some(ENHANCED_PACKET_BLOCK | SIMPLE_PACKET_BLOCK | PACKET_BLOCK)
        ) {
            return read_other_block(parser, interfaces, input);
        }
        let plain = if block_type == Some(ENHANCED_PACKET_BLOCK) {
            plain_epb(avail, endianness).map(|(packet, len)| (packet, avail.len() - len))
        } else {
            None
        };
        let packet = match plain {
            Some((packet, rest_len)) => {
                input.consume_to(rest_len);
                packet
            }
            None => match decode_packet_block(parser, input)? {
                Some(packet) => packet,
                None => return Ok(Step::Skipped),
            },
        };
        self.stats.frames += 1;
        let Some(iface) = interfaces.get_mut(packet.iface as usize) else {
            input.start = block_start;
            return Err(input.corrupt(
                PCAPNG_BLOCK,
                format!("packet refers to undeclared interface {}", packet.iface),
            ));
        };
        let Some(link) = iface.link_or_warn(&input.name, packet.iface, &mut self.stats) else {
            return Ok(Step::Skipped);
        };
        let (lo, hi) = iface.captured(&packet);
        let ts_ns = packet.ticks.map_or(0, |t| iface.ts_ns(t));
        let frame = input
            .buf
            .get(block_start + lo..block_start + hi)
            .unwrap_or_default();
        let wire_len = packet.orig_len.max(frame.len() as u32);
        Ok(record_frame(
            &mut self.stats,
            input,
            batch,
            block_start,
            |meta| fill_frame(meta, link, frame, ts_ns, packet.iface, packet.dir, wire_len),
        ))
    }
}

/// What pcapng errors name.
const PCAPNG_BLOCK: &str = "pcapng block";

/// Rejects an implausible block length before buffering that much data
/// (a section header carries its own byte order; pcap-file checks it).
#[inline(always)]
fn check_block_len(
    input: &Input,
    avail: &[u8],
    block_type: Option<u32>,
    endianness: Endianness,
) -> Result<(), FileError> {
    if block_type == Some(SECTION_HEADER_BLOCK) {
        return Ok(());
    }
    match peek_u32(avail, 4, endianness) {
        Some(len) if len as usize > MAX_UNIT_LEN => Err(input.corrupt(
            PCAPNG_BLOCK,
            format!("block length {len} exceeds the {MAX_UNIT_LEN}-byte limit"),
        )),
        _ => Ok(()),
    }
}

/// A block that carries no packet: a section header starts a new list of
/// interfaces, an interface description adds one, others are skipped.
fn read_other_block(
    parser: &mut PcapNgParser,
    interfaces: &mut Vec<Interface>,
    input: &mut Input,
) -> Result<Step, FileError> {
    let rest_len = match parser.next_raw_block(input.avail()) {
        Ok((rest, raw)) => {
            match raw.type_ {
                SECTION_HEADER_BLOCK => interfaces.clear(),
                INTERFACE_DESCRIPTION_BLOCK => {
                    if let Some(idb) = parser.interfaces().last() {
                        let iface = Interface::from_idb(idb);
                        // A resolution so fine that 64 bits of ticks span
                        // under a second would read every time as 0.
                        if pcapng_ticks_to_ns(u64::MAX, iface.tsresol) < 1_000_000_000 {
                            return Err(input.corrupt(
                                "pcapng interface description",
                                format!(
                                    "if_tsresol {:#04x} cannot express even one second in 64-bit timestamps",
                                    iface.tsresol
                                ),
                            ));
                        }
                        debug!(file = %input.name, linktype = iface.raw_link,
                            tsresol = iface.tsresol, "pcapng interface");
                        interfaces.push(iface);
                    }
                }
                _ => {}
            }
            rest.len()
        }
        Err(PcapError::IncompleteBuffer) => {
            input.need_more(PCAPNG_BLOCK)?;
            return Ok(Step::Skipped);
        }
        Err(e) => return Err(input.corrupt(PCAPNG_BLOCK, e)),
    };
    input.consume_to(rest_len);
    Ok(Step::Skipped)
}

/// The packet of a block pcap-file decodes (a simple or obsolete packet
/// block, or an enhanced one with options); `None` when more input is
/// needed first.
#[inline(never)]
fn decode_packet_block(
    parser: &mut PcapNgParser,
    input: &mut Input,
) -> Result<Option<Packet>, FileError> {
    let avail = input.avail();
    let (packet, rest_len) = match parser.next_block(avail) {
        Ok((rest, block)) => (Packet::from_block(avail, block), rest.len()),
        Err(PcapError::IncompleteBuffer) => {
            input.need_more(PCAPNG_BLOCK)?;
            return Ok(None);
        }
        Err(e) => return Err(input.corrupt(PCAPNG_BLOCK, e)),
    };
    input.consume_to(rest_len);
    Ok(Some(packet))
}

/// Parses a frame into a new record at the end of the batch and counts it.
#[inline(always)]
fn record_frame(
    stats: &mut ReaderStats,
    input: &Input,
    batch: &mut Vec<PacketMeta>,
    unit_start: usize,
    fill: impl FnOnce(&mut PacketMeta) -> Result<(), ParseError>,
) -> Step {
    batch.push(PacketMeta::zeroed());
    let res = match batch.last_mut() {
        Some(meta) => fill(meta),
        None => return Step::Skipped,
    };
    finish(stats, input, batch, res, unit_start)
}

/// Counts a parsed frame and turns it into a step; a frame that did not
/// parse is taken off the batch again.
fn finish(
    stats: &mut ReaderStats,
    input: &Input,
    batch: &mut Vec<PacketMeta>,
    res: Result<(), ParseError>,
    unit_start: usize,
) -> Step {
    match res {
        Ok(()) => {
            stats.records += 1;
            Step::Record
        }
        Err(e) => {
            batch.pop();
            if e.is_not_ip() {
                stats.not_ip += 1;
            } else {
                stats.malformed += 1;
                debug!(file = %input.name, offset = input.base + unit_start as u64, error = %e,
                    "frame skipped");
            }
            Step::Skipped
        }
    }
}

/// A packet block's fields, with the data as a range relative to the block start.
struct Packet {
    iface: u32,
    /// Timestamp in interface units; SPBs have none.
    ticks: Option<u64>,
    orig_len: u32,
    data: (usize, usize),
    dir: Direction,
}

/// An enhanced packet block without options, complete in `bytes` and
/// consistent in every length (the common case, which `pcap-file` would
/// accept and decode to the same fields), decoded without building a
/// `Block`; returns the packet and the block's length. Anything else is
/// left to `pcap-file`, for its checks and errors.
fn plain_epb(bytes: &[u8], endianness: Endianness) -> Option<(Packet, usize)> {
    let field = |at| peek_u32(bytes, at, endianness);
    let len = field(4)? as usize;
    let captured = field(20)? as usize;
    let padded = captured.checked_add((4 - captured % 4) % 4)?;
    if len != padded.checked_add(32)? || len > bytes.len() || field(len - 4)? as usize != len {
        return None;
    }
    let ticks = (u64::from(field(12)?) << 32) + u64::from(field(16)?);
    let packet = Packet {
        iface: field(8)?,
        ticks: Some(ticks),
        orig_len: field(24)?,
        data: (28, 28 + captured),
        dir: Direction::Unknown,
    };
    Some((packet, len))
}

impl Packet {
    fn from_block(block_bytes: &[u8], block: Block<'_>) -> Self {
        match block {
            Block::EnhancedPacket(epb) => {
                let mut dir = Direction::Unknown;
                for opt in &epb.options {
                    if let EnhancedPacketOption::Flags(flags) = opt {
                        // epb_flags bits 0-1: 01 inbound, 10 outbound.
                        dir = match flags & 0x3 {
                            1 => Direction::Ingress,
                            2 => Direction::Egress,
                            _ => Direction::Unknown,
                        };
                    }
                }
                Self {
                    iface: epb.interface_id,
                    // pcap-file stores the raw tick count in a Duration's nanoseconds.
                    ticks: Some(u64::try_from(epb.timestamp.as_nanos()).unwrap_or(u64::MAX)),
                    orig_len: epb.original_len,
                    data: data_range(block_bytes, &epb.data),
                    dir,
                }
            }
            Block::SimplePacket(spb) => Self {
                iface: 0,
                ticks: None,
                orig_len: spb.original_len,
                data: data_range(block_bytes, &spb.data),
                dir: Direction::Unknown,
            },
            Block::Packet(pb) => Self {
                iface: u32::from(pb.interface_id),
                ticks: Some(pb.timestamp),
                orig_len: pb.original_len,
                data: data_range(block_bytes, &pb.data),
                dir: Direction::Unknown,
            },
            _ => Self {
                iface: 0,
                ticks: None,
                orig_len: 0,
                data: (0, 0),
                dir: Direction::Unknown,
            },
        }
    }
}

/// Range of `inner` within `outer` (a sub-slice of it).
fn data_range(outer: &[u8], inner: &[u8]) -> (usize, usize) {
    let lo = (inner.as_ptr() as usize).saturating_sub(outer.as_ptr() as usize);
    (lo, lo + inner.len())
}

/// A length or type field of a record header, if buffered.
fn peek_u32(bytes: &[u8], at: usize, endianness: Endianness) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(match endianness {
        Endianness::Big => u32::from_be_bytes(b),
        Endianness::Little => u32::from_le_bytes(b),
    })
}

/// Reads up to 4 bytes (fewer only at end of input).
fn read_prefix(r: &mut dyn Read) -> io::Result<Vec<u8>> {
    let mut magic = Vec::with_capacity(4);
    r.take(4).read_to_end(&mut magic)?;
    Ok(magic)
}

impl Iterator for CaptureReader {
    type Item = Result<PacketMeta, FileError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut one = std::mem::take(&mut self.one);
        one.clear();
        // With a limit of one, an error comes only when no record did.
        let res = self.read_batch(&mut one, 1);
        let rec = one.pop();
        self.one = one;
        match (rec, res) {
            (Some(meta), _) => Some(Ok(meta)),
            (None, Err(e)) => Some(Err(e)),
            (None, Ok(_)) => None,
        }
    }
}

impl std::iter::FusedIterator for CaptureReader {}

/// Why input starting with `magic` is not a capture.
fn unknown_format(magic: &[u8]) -> String {
    if magic.is_empty() {
        "empty file, not a pcap or pcapng capture".into()
    } else {
        format!("not a pcap or pcapng file (starts with {magic:02x?})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The direct decoding of a plain EPB matches pcap-file's, in both
    /// byte orders; a block with options is left to pcap-file.
    #[test]
    fn plain_epb_decodes_as_pcap_file_does() {
        for endianness in [Endianness::Little, Endianness::Big] {
            for captured in [0usize, 1, 3, 4, 61] {
                let pad = (4 - captured % 4) % 4;
                let len = 32 + captured + pad;
                let mut b = Vec::new();
                let mut put = |v: u32| match endianness {
                    Endianness::Little => b.extend_from_slice(&v.to_le_bytes()),
                    Endianness::Big => b.extend_from_slice(&v.to_be_bytes()),
                };
                for v in [
                    ENHANCED_PACKET_BLOCK,
                    len as u32,
                    2,
                    0x0001_2345,
                    0x89ab_cdef,
                ] {
                    put(v);
                }
                put(captured as u32);
                put(1500);
                b.extend((0..captured).map(|i| i as u8));
                b.extend(std::iter::repeat_n(0, pad));
                let trailer = match endianness {
                    Endianness::Little => (len as u32).to_le_bytes(),
                    Endianness::Big => (len as u32).to_be_bytes(),
                };
                b.extend_from_slice(&trailer);
                b.extend_from_slice(b"next");
                let (fast, used) = plain_epb(&b, endianness).expect("plain EPB");
                assert_eq!(used, len);
                // A section header in the same byte order sets the parser's.
                let u32b = |v: u32| match endianness {
                    Endianness::Little => v.to_le_bytes(),
                    Endianness::Big => v.to_be_bytes(),
                };
                let mut shb = Vec::new();
                for v in [SECTION_HEADER_BLOCK, 28, 0x1A2B_3C4D] {
                    shb.extend_from_slice(&u32b(v));
                }
                // Version 1.0: major and minor as two u16.
                shb.extend_from_slice(&u32b(match endianness {
                    Endianness::Little => 1,
                    Endianness::Big => 1 << 16,
                }));
                shb.extend_from_slice(&[0xff; 8]); // section length unknown
                shb.extend_from_slice(&u32b(28));
                let (_, mut parser) = PcapNgParser::new(&shb).expect("section header");
                let (rest, block) = parser.next_block(&b).expect("pcap-file");
                assert_eq!(rest, b"next");
                let slow = Packet::from_block(&b, block);
                assert_eq!(
                    (fast.iface, fast.ticks, fast.orig_len, fast.data, fast.dir),
                    (slow.iface, slow.ticks, slow.orig_len, slow.data, slow.dir)
                );
                // Truncated, or with a wrong trailer: not decoded here.
                assert!(plain_epb(&b[..len - 1], endianness).is_none());
                let mut bad = b.clone();
                bad[len - 1] ^= 0x40;
                assert!(plain_epb(&bad, endianness).is_none());
            }
        }
    }

    /// Drains a reader, checking that an error, if any, comes last and alone.
    fn drain(r: CaptureReader) -> (usize, Option<FileError>) {
        let mut n = 0;
        let mut err = None;
        for item in r {
            assert!(err.is_none(), "nothing may follow an error");
            match item {
                Ok(_) => n += 1,
                Err(e) => err = Some(e),
            }
        }
        (n, err)
    }

    #[test]
    fn ticks_to_ns() {
        assert_eq!(pcapng_ticks_to_ns(1_500_000, 6), 1_500_000_000);
        assert_eq!(pcapng_ticks_to_ns(7, 9), 7);
        assert_eq!(pcapng_ticks_to_ns(12_345, 12), 12);
        // 2^-10 s units: 1024 ticks are one second.
        assert_eq!(pcapng_ticks_to_ns(1024, 0x80 | 10), 1_000_000_000);
        assert_eq!(pcapng_ticks_to_ns(u64::MAX, 0), u64::MAX, "saturates");
        assert_eq!(pcapng_ticks_to_ns(5, 127), 0);
    }

    #[test]
    fn an_unusable_timestamp_resolution_is_an_error_not_zero_times() {
        use crate::capture::frame::{PayloadMode, PcapngWriter};
        let mut rec = PacketMeta::zeroed();
        rec.kind = phalanx_common::RecordKind::Tcp as u8;
        rec.ip_version = 4;
        rec.l4_proto = phalanx_common::ipproto::TCP;
        rec.ts_ns = 1_700_000_000_000_000_000;
        let mut w = PcapngWriter::new(Vec::new()).expect("writer");
        let iface = w.add_interface("x").expect("interface");
        w.write_record(iface, &rec, PayloadMode::HeadersOnly, None)
            .expect("record");
        let good = w.into_inner();
        // if_tsresol (option 9, length 1) = 9: nanoseconds.
        let at = good
            .windows(5)
            .position(|b| b == [9, 0, 1, 0, 9])
            .expect("if_tsresol option");
        for (resol, ok) in [(9u8, true), (12, true), (0x7f, false), (0xff, false)] {
            let mut bytes = good.clone();
            bytes[at + 4] = resol;
            let (n, err) = drain(from_reader(std::io::Cursor::new(bytes)).expect("opens"));
            if ok {
                assert!(err.is_none() && n == 1, "{resol:#x}: {err:?}");
            } else {
                let e = err.expect("refused").to_string();
                assert!(e.contains(&format!("if_tsresol {resol:#04x}")), "{e}");
                assert_eq!(n, 0, "no record with a zero time");
            }
        }
    }

    #[test]
    fn empty_and_unknown_inputs() {
        let err = from_reader(Cursor::new(Vec::new())).expect_err("empty input");
        assert!(matches!(err, FileError::UnknownFormat { .. }), "{err}");
        let err = from_reader(Cursor::new(b"GIF89a....".to_vec())).expect_err("not a capture");
        assert!(
            err.to_string().contains("not a pcap or pcapng file"),
            "{err}"
        );
        let err = from_reader(Cursor::new(vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0])).expect_err("short");
        assert!(
            matches!(&err, FileError::Truncated { at, .. } if at.offset == 0),
            "a cut file header is truncation at offset 0: {err}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(
            magic in prop::sample::select(vec![
                PCAPNG_MAGIC, PCAP_MAGICS[0], PCAP_MAGICS[1], PCAP_MAGICS[2], PCAP_MAGICS[3], [0, 0, 0, 0],
            ]),
            body in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut bytes = magic.to_vec();
            bytes.extend_from_slice(&body);
            if let Ok(r) = from_reader(Cursor::new(bytes)) {
                let _ = drain(r);
            }
        }
    }
}
