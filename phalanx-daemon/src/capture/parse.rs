//! User-space frame parser (etherparse) producing `PacketMeta` records.
