//! Fuzz target: see `phalanx_daemon::fuzz::peer_request`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| phalanx_daemon::fuzz::peer_request(data));
