//! `detour-sidecar`: the proxy. The serving path lands with the sidecar issue.

fn main() {}
