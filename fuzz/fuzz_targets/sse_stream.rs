//! An upstream SSE stream split into arbitrary chunks: the first bytes choose the cuts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (cuts, body) = data.split_at(data.len().min(8));
    let cuts: Vec<usize> = cuts.iter().map(|&b| usize::from(b)).collect();
    detour_sidecar::fuzzing::sse_stream(body, &cuts);
});
