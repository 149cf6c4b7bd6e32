//! An upstream's answer, translated back to OpenAI's shape (Anthropic, Bedrock).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| detour_sidecar::fuzzing::response_body(data));
