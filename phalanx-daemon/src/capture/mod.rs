//! Packet sources. Every source yields [`phalanx_common::PacketMeta`]
//! records; the flow engine never knows which one produced them.

pub mod config;
pub mod ebpf;
pub mod file;
pub mod frame;
pub mod gso;
pub mod links;
pub mod parse;
pub mod ring;
