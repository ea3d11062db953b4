//! Fuzz target: see `phalanx_daemon::fuzz::ring_record`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| phalanx_daemon::fuzz::ring_record(data));
