//! An upstream's HTTP/1.1 response split into arbitrary pieces: the first bytes choose the cuts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (cuts, response) = data.split_at(data.len().min(8));
    let cuts: Vec<usize> = cuts.iter().map(|&b| usize::from(b)).collect();
    detour_sidecar::fuzzing::upstream_response(response, &cuts);
});
