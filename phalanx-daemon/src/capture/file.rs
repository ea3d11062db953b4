//! pcap/pcapng reader producing `PacketMeta` records.
