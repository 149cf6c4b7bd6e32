# Task list. Each target is a thin wrapper over a script that works without make.
.PHONY: demo install test lint generate licenses bench

demo:      ## the standalone sidecar on examples/demo.yaml, failover visible, no cluster or keys
	scripts/demo

install:   ## detour-sidecar into ~/.cargo/bin (cargo install; needs only the Rust toolchain)
	cargo install --locked --path sidecar

test:      ## the whole suite: installs what it needs, fmt, clippy, CRD drift, Rust and end-to-end tests
	scripts/test

lint:      ## formatting, clippy, licences and CRD drift only
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	PATH="$${DETOUR_TOOLS:-$$HOME/.cache/detour/tools}/bin:$$PATH" cargo deny --locked check licenses bans sources
	cargo run -q --locked -p detour-operator --bin crdgen -- --check

generate:  ## regenerate crds/ and charts/detour/crds/ from the Rust types
	cargo run -q --locked -p detour-operator --bin crdgen

licenses:  ## licences, duplicate and banned crates, sources (cargo-deny; scripts/install-test-deps installs it)
	PATH="$${DETOUR_TOOLS:-$$HOME/.cache/detour/tools}/bin:$$PATH" cargo deny --locked check licenses bans sources
