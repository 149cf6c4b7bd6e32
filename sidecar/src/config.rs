//! Where the route table comes from, and noticing when it changes.
//!
//! Two sources: `--config routes.json` (the operator's ConfigMap, mounted by kubelet) and
//! `--routes FILE.yaml` (standalone: ModelRoute/RoutingPolicy YAML compiled here with the
//! same `detour_api::compile` the operator uses).
//!
//! Change detection is a poll (every ~250 ms): a `stat` of the path *through* its symlinks
//! and of the resolved target path. Kubelet updates a ConfigMap volume by writing a new
//! `..2024_…` directory and swapping the `..data` symlink, so the file's own mtime may not
//! change while the resolved path does; comparing (resolved path, inode, size, mtime) catches
//! both in-place writes and swaps. Only when the stamp changed is the file read, and only when
//! its content hash changed is it parsed. Polling instead of inotify keeps the behaviour the
//! same on every filesystem and adds no dependency; one stat every 250 ms costs nothing.
//!
//! Every table passes the sidecar's own destination and credential-path rules
//! ([`crate::egress::Guard`]) before it serves: a `routes.json` target that breaks one is
//! left out with an error naming it, and a table with nothing left is invalid (the previous
//! table keeps serving); standalone YAML is compiled with the guard's
//! allowlist and credentials directory, so the compiler refuses the same things.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use detour_api::{RouteTable, Severity};
use sha2::{Digest, Sha256};

use crate::credentials;
use crate::egress::{self, Guard};

/// A route table source.
#[derive(Debug, Clone)]
pub enum Source {
    /// A compiled `routes.json`.
    Json(PathBuf),
    /// Standalone YAML.
    Yaml(PathBuf),
}

impl Source {
    pub fn path(&self) -> &Path {
        match self {
            Self::Json(p) | Self::Yaml(p) => p,
        }
    }
}

/// A compiler diagnostic to show at load.
#[derive(Debug, Clone)]
pub struct Note {
    pub error: bool,
    pub message: String,
}

/// A table that loaded, with what the compiler had to say.
#[derive(Debug)]
pub struct Loaded {
    pub table: RouteTable,
    pub notes: Vec<Note>,
}

/// Parses `text` read from `source` under the default [`Guard`]. Errors are one line naming
/// the path and the field.
pub fn parse(source: &Source, text: &str) -> Result<Loaded, String> {
    parse_with(source, text, &Guard::default())
}

/// Parses `text` read from `source`, refusing what `guard` does not allow.
pub fn parse_with(source: &Source, text: &str, guard: &Guard) -> Result<Loaded, String> {
    let path = source.path().display();
    match source {
        Source::Json(_) => {
            let mut table = RouteTable::from_json(text).map_err(|e| format!("{path}: {e}"))?;
            let refused = egress::withhold_refused(&mut table, guard);
            if table.routes.is_empty() {
                let reasons: Vec<String> = refused.iter().map(ToString::to_string).collect();
                return Err(format!("{path}: refused: {}", reasons.join("; ")));
            }
            let mut notes: Vec<Note> = refused
                .into_iter()
                .map(|v| Note {
                    error: true,
                    message: format!(
                        "{path}: {v}; this target is left out (if the platform has since allowed it, restart the \
                         pod: its sidecar keeps the allowlist and credentials directory it was started with)"
                    ),
                })
                .collect();
            notes.extend(credential_notes(&table, true));
            Ok(Loaded { table, notes })
        }
        Source::Yaml(_) => {
            let mut compiled =
                detour_api::compile_yaml_with(text, &guard.credentials_root, &guard.allowed_hosts)
                    .map_err(|e| format!("{path}: {e}"))?;
            if !guard.endpoint_overrides.is_empty() {
                egress::apply_overrides(&mut compiled.table, &guard.endpoint_overrides)?;
                egress::check_table(&compiled.table, guard).map_err(|e| format!("{path}: refused: {e}"))?;
            }
            let mut notes: Vec<Note> = compiled
                .diagnostics
                .iter()
                .map(|d| Note {
                    error: d.severity == Severity::Error,
                    message: format!("{path}: {}: {d}", d.object),
                })
                .collect();
            if compiled.table.routes.is_empty() {
                let errors: Vec<&str> = notes
                    .iter()
                    .filter(|n| n.error)
                    .map(|n| n.message.as_str())
                    .collect();
                return Err(if errors.is_empty() {
                    format!("{path}: no route could be compiled")
                } else {
                    format!("no route could be compiled: {}", errors.join("; "))
                });
            }
            notes.extend(credential_notes(&compiled.table, false));
            Ok(Loaded {
                table: compiled.table,
                notes,
            })
        }
    }
}

/// A warning per credential of `table` that cannot be had now ([`credentials::problems`]):
/// logged whenever a table loads, so a wrong key name or a missing file shows at start-up
/// and on each reload, not only as failed requests. `cluster`: add where a pod's Secrets
/// come from.
fn credential_notes(table: &RouteTable, cluster: bool) -> Vec<Note> {
    credentials::problems(table)
        .into_iter()
        .map(|p| Note {
            error: false,
            message: if cluster {
                format!(
                    "{p} (is the key name right, and does this pod select the route with detour.dev/routes?)"
                )
            } else {
                p.to_string()
            },
        })
        .collect()
}

/// Reads and parses `source` under the default [`Guard`].
pub fn load(source: &Source) -> Result<Loaded, String> {
    load_with(source, &Guard::default())
}

/// Reads and parses `source`, refusing what `guard` does not allow.
pub fn load_with(source: &Source, guard: &Guard) -> Result<Loaded, String> {
    let text = std::fs::read_to_string(source.path())
        .map_err(|e| format!("{}: cannot read: {e}", source.path().display()))?;
    parse_with(source, &text, guard)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    resolved: Option<PathBuf>,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        resolved: std::fs::canonicalize(path).ok(),
        ino: meta.ino(),
        len: meta.len(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    })
}

/// What a poll found.
#[derive(Debug)]
pub enum Change {
    /// A new valid table.
    Loaded(Loaded),
    /// The file changed but is not valid (or unreadable): keep the previous table.
    Invalid(String),
}

/// Watches one source.
#[derive(Debug)]
pub struct Watcher {
    source: Source,
    guard: Guard,
    stamp: Option<Stamp>,
    hash: Option<[u8; 32]>,
    reported_missing: bool,
}

impl Watcher {
    pub fn new(source: Source) -> Self {
        Self::with_guard(source, Guard::default())
    }

    pub fn with_guard(source: Source, guard: Guard) -> Self {
        Self {
            source,
            guard,
            stamp: None,
            hash: None,
            reported_missing: false,
        }
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Checks for a change; `None` when nothing changed.
    pub fn poll(&mut self) -> Option<Change> {
        let now = stamp(self.source.path());
        if now.is_some() && now == self.stamp {
            return None;
        }
        let Some(now) = now else {
            // Missing (not yet written, or between kubelet's writes): report it once.
            if self.stamp.take().is_some() || !self.reported_missing {
                self.reported_missing = true;
                return Some(Change::Invalid(format!(
                    "{}: cannot read: the file does not exist",
                    self.source.path().display()
                )));
            }
            return None;
        };
        self.reported_missing = false;
        self.stamp = Some(now);
        let text = match std::fs::read_to_string(self.source.path()) {
            Ok(t) => t,
            Err(e) => {
                return Some(Change::Invalid(format!(
                    "{}: cannot read: {e}",
                    self.source.path().display()
                )));
            }
        };
        let hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        if self.hash == Some(hash) {
            return None;
        }
        self.hash = Some(hash);
        Some(match parse_with(&self.source, &text, &self.guard) {
            Ok(l) => Change::Loaded(l),
            Err(e) => Change::Invalid(e),
        })
    }
}
