//! Fuzz target: see `phalanx_daemon::fuzz::token_file`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| phalanx_daemon::fuzz::token_file(data));
