//! `routes.json`: round-trips, and every bad file is rejected with the JSON path of the problem.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use detour_api::{RouteTable, TableError, compile_yaml, parse_yaml};
use pretty_assertions::assert_eq;
use serde_json::Value;

fn demo_table() -> RouteTable {
    let text = std::fs::read_to_string(format!("{}/../examples/demo.yaml", manifest_dir())).unwrap();
    compile_yaml(&text).unwrap().table
}

fn mutate(table: &RouteTable, f: impl FnOnce(&mut Value)) -> String {
    let mut v: Value = serde_json::from_str(&table.to_json()).unwrap();
    f(&mut v);
    serde_json::to_string(&v).unwrap()
}

/// A table survives serialisation and parsing unchanged.
#[test]
fn table_round_trips_through_json() {
    let table = demo_table();
    let parsed = RouteTable::from_json(&table.to_json()).unwrap();
    assert_eq!(parsed, table);
    assert_eq!(parsed.route("smart/balanced").map(|r| r.targets.len()), Some(2));
    assert!(parsed.route("no/such").is_none());
}

/// An unknown field is rejected, naming where it is.
#[test]
fn unknown_field_is_rejected_with_its_path() {
    let text = mutate(&demo_table(), |v| {
        v["routes"][0]["targets"][1]["weigth"] = Value::from(3);
    });
    let err = RouteTable::from_json(&text).unwrap_err();
    assert!(matches!(err, TableError::Invalid { .. }));
    let msg = err.to_string();
    assert!(
        msg.starts_with("routes.json: routes[0].targets[1].weigth: unknown field `weigth`"),
        "{msg}"
    );
}

/// A value of the wrong type or outside an enum is rejected, naming where it is.
#[test]
fn bad_value_is_rejected_with_its_path() {
    let text = mutate(&demo_table(), |v| {
        v["routes"][1]["policy"]["strategy"] = Value::from("fastest");
    });
    let msg = RouteTable::from_json(&text).unwrap_err().to_string();
    assert!(
        msg.starts_with("routes.json: routes[1].policy.strategy: unknown variant `fastest`"),
        "{msg}"
    );

    let text = mutate(&demo_table(), |v| {
        v["routes"][0]["policy"]["timeouts"]["totalMs"] = Value::from("5s");
    });
    let msg = RouteTable::from_json(&text).unwrap_err().to_string();
    assert!(
        msg.starts_with("routes.json: routes[0].policy.timeouts.totalMs: invalid type: string \"5s\""),
        "{msg}"
    );

    let msg = RouteTable::from_json("{\"version\": 1,").unwrap_err().to_string();
    assert!(msg.starts_with("routes.json: "), "{msg}");
    assert!(msg.contains("EOF"), "{msg}");
}

/// A file from a newer format, or edited by hand, is refused rather than half-read.
#[test]
fn wrong_version_and_wrong_hash_are_refused() {
    let text = mutate(&demo_table(), |v| v["version"] = Value::from(3));
    let err = RouteTable::from_json(&text).unwrap_err();
    assert!(
        matches!(
            err,
            TableError::Version {
                found: 3,
                supported: 2
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade detour-sidecar"));

    let text = mutate(&demo_table(), |v| {
        v["routes"][0]["targets"][0]["weight"] = Value::from(7)
    });
    let err = RouteTable::from_json(&text).unwrap_err();
    assert!(matches!(err, TableError::Hash { .. }), "{err}");
}

/// The standalone loader names the document and field of a mistake.
#[test]
fn loader_errors_name_document_and_field() {
    let route = "apiVersion: detour.dev/v1alpha1\nkind: ModelRoute\nmetadata: {name: r}\nspec:\n  model: m\n  targets: [{name: a, provider: opnai, model: x}]\n";
    let err = parse_yaml(&format!("---\n# comment only\n---\n{route}"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("document 2: spec.targets[0].provider: unknown variant `opnai`"),
        "{err}"
    );

    let err = parse_yaml("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "document 1: kind \"ConfigMap\" is not a Detour resource; this file may hold only ModelRoute and \
         RoutingPolicy (detour.dev/v1alpha1)"
    );

    let err = parse_yaml("apiVersion: detour.dev/v1\nkind: ModelRoute\nmetadata: {name: x}\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "document 1: apiVersion \"detour.dev/v1\" is not supported; use apiVersion: detour.dev/v1alpha1"
    );

    let err = parse_yaml("kind: ModelRoute\napiVersion: detour.dev/v1alpha1\nmetadata: {}\n")
        .unwrap_err()
        .to_string();
    assert_eq!(err, "document 1: metadata.name: is required");

    let err = parse_yaml("model: [unclosed\n").unwrap_err().to_string();
    assert!(err.starts_with("document 1: not valid YAML: "), "{err}");

    let err = parse_yaml("").unwrap_err().to_string();
    assert_eq!(err, "no ModelRoute found; the file must declare at least one");

    let ok = route.replace("opnai", "mock");
    let err = parse_yaml(&format!("{ok}---\n{ok}")).unwrap_err().to_string();
    assert_eq!(
        err,
        "document 2: ModelRoute \"r\" appears twice in namespace \"default\""
    );
}

/// This package's directory, read when the test runs (cargo sets it), so a test binary built
/// from another checkout sharing the target directory reads this checkout's files.
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}
