//! A client's request body through everything that reads it before a provider is called.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| detour_sidecar::fuzzing::request_body(data));
