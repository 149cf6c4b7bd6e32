//! The `routes.json` reader on arbitrary bytes: it may reject, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(table) = detour_api::RouteTable::from_json(text) {
        let again = detour_api::RouteTable::from_json(&table.to_json());
        assert!(again.is_ok(), "an accepted table must round-trip: {again:?}");
    }
});
