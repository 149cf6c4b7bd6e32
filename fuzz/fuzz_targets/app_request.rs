//! An app's HTTP/1.1 request split into arbitrary pieces: the first bytes choose the cuts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (cuts, request) = data.split_at(data.len().min(8));
    let cuts: Vec<usize> = cuts.iter().map(|&b| usize::from(b)).collect();
    detour_sidecar::fuzzing::app_request(request, &cuts);
});
