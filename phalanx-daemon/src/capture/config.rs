//! `[capture]`: where the kernel programs attach and what they keep.

use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use crate::flow::key::FlowSpec;

/// How the kernel programs attach.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// tcx (TC BPF links) on ingress and egress: sees GSO packets, costs little.
    #[default]
    Tcx,
    /// XDP on ingress (for physical NICs) plus tcx on egress.
    Xdp,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Tcx => "tcx",
            AttachMode::Xdp => "xdp",
        })
    }
}

/// `[capture]` section.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Interfaces to attach to (`--iface` replaces this list).
    pub interfaces: Vec<String>,
    /// `tcx` or `xdp`.
    pub mode: AttachMode,
    /// Ring buffer size: a power of two, at least 4096 bytes.
    pub ring_buffer_bytes: RingBytes,
    /// Scope filters; none means every TCP packet.
    pub filters: Vec<FilterRule>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            mode: AttachMode::Tcx,
            ring_buffer_bytes: RingBytes(8 << 20),
            filters: Vec::new(),
        }
    }
}

/// Ring-buffer size, validated while parsing so errors carry the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingBytes(pub u32);

impl<'de> Deserialize<'de> for RingBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if v < 4096 || !v.is_power_of_two() || v > (1 << 30) {
            return Err(serde::de::Error::custom(format!(
                "ring_buffer_bytes must be a power of two between 4096 and 1073741824, got {v}"
            )));
        }
        Ok(RingBytes(v as u32))
    }
}

/// Transport protocol a filter applies to.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FilterProto {
    /// TCP only.
    #[default]
    Tcp,
    /// UDP only.
    Udp,
    /// TCP and UDP.
    Any,
}

impl FilterRule {
    /// Whether the rule names a protocol alone: every packet of it is in scope.
    pub fn is_whole_protocol(&self) -> bool {
        self.flow.is_none() && self.cidr.is_none() && self.port.is_none()
    }
}

impl FilterProto {
    /// IP protocol numbers this filter covers.
    pub fn numbers(self) -> &'static [u8] {
        match self {
            FilterProto::Tcp => &[6],
            FilterProto::Udp => &[17],
            FilterProto::Any => &[6, 17],
        }
    }
}

/// One `[[capture.filters]]` entry: an exact flow, a CIDR and/or port, or
/// (with none of those) every packet of `proto`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FilterRule {
    /// `tcp` (default), `udp` or `any`.
    pub proto: FilterProto,
    /// Either endpoint inside this network.
    pub cidr: Option<IpNet>,
    /// Either endpoint on this port.
    pub port: Option<u16>,
    /// Exact flow `"10.0.0.1:40000 -> 10.0.0.2:80"` (both directions).
    pub flow: Option<FlowSpec>,
}
