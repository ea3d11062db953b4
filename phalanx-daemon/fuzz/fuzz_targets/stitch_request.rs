//! Fuzz target: see `phalanx_daemon::fuzz::stitch_request`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| phalanx_daemon::fuzz::stitch_request(data));
