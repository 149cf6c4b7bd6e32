//! The standalone routes loader on arbitrary text: it may reject, never panic or hang, and
//! whatever it accepts compiles into a table that reads back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(compiled) = detour_api::compile_yaml(text) {
        let json = compiled.table.to_json();
        let back = detour_api::RouteTable::from_json(&json);
        assert!(back.is_ok(), "a compiled table must read back: {back:?}");
    }
});
