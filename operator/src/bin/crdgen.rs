//! `crdgen [--check] [DIR...]`: writes (or, with `--check`, compares) the generated CRDs into
//! each directory; default `crds` and `charts/detour/crds`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut check = false;
    let mut dirs: Vec<PathBuf> = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                eprintln!("usage: crdgen [--check] [DIR...]   (default DIRs: crds charts/detour/crds)");
                return ExitCode::SUCCESS;
            }
            _ => dirs.push(PathBuf::from(arg)),
        }
    }
    if dirs.is_empty() {
        dirs = vec![PathBuf::from("crds"), PathBuf::from("charts/detour/crds")];
    }
    let files = match detour_operator::crdgen::render() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("crdgen: cannot render CRDs: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut drift = Vec::new();
    for dir in &dirs {
        for (name, yaml) in &files {
            let path = dir.join(name);
            if check {
                if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                    drift.push(path.display().to_string());
                }
            } else if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, yaml)) {
                eprintln!("crdgen: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if !drift.is_empty() {
        eprintln!(
            "crdgen: generated CRDs differ from the Rust types: {}\nrun `cargo run -p detour-operator --bin crdgen` and commit the result",
            drift.join(", ")
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
