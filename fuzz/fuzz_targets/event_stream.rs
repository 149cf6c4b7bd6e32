//! Bedrock's binary event-stream framing (prelude, CRCs, headers, payload).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| detour_sidecar::fuzzing::event_stream(data));
