//! Credentials: where each target's key comes from, and what is wrong with it.
//!
//! Contract:
//! - A key is a [`Secret`]: it prints as `*****` and is exposed only where a header is built.
//! - A [`KeySource`] is a file (re-read when it changes: kubelet rotates mounted Secrets) or
//!   an environment variable (read once, at load). When it cannot give a key, its error names
//!   the file or the variable and what is wrong with it — never a value. Providers turn that
//!   error into an attempt of class [`crate::class::Class::Credentials`]: nothing is sent, the
//!   next target is tried, and the target's breaker takes no verdict from it.
//! - [`problems`] lists, for a whole table, each target whose credential cannot be had now,
//!   in the same words; the server logs them as warnings whenever a table loads, and
//!   `/readyz` fails a route none of whose targets has a usable credential ([`usable`]).

pub mod aws;
pub mod azure;
pub mod google;

use std::borrow::Cow;
use std::fmt;
use std::io::ErrorKind;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use detour_api::RouteTable;
use detour_api::table::{CredentialSource, Target};
use tokio::time::Instant;

/// A secret value. Its `Debug` and `Display` print `*****`; the value is reachable only
/// through [`Secret::expose`], called where the header is built.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: &str) -> Self {
        Self(Arc::from(value.trim()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

/// Where a key comes from, re-read when its file changes (kubelet rotates Secret files).
#[derive(Debug)]
pub enum KeySource {
    None,
    /// An environment variable, read once at load.
    Env {
        var: String,
        value: Option<Secret>,
    },
    File {
        path: String,
        cache: Mutex<FileCache>,
    },
}

#[derive(Debug)]
pub struct FileCache {
    checked: Option<Instant>,
    stamp: Option<(SystemTime, u64)>,
    value: Result<Secret, String>,
}

/// How often a key file is stat'ed at most.
pub const KEY_RECHECK: Duration = Duration::from_secs(1);

impl KeySource {
    pub fn from_config(source: Option<&CredentialSource>) -> Self {
        match source {
            None => Self::None,
            Some(CredentialSource::Env(var)) => Self::Env {
                var: var.clone(),
                value: std::env::var(var)
                    .ok()
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| Secret::new(&v)),
            },
            Some(CredentialSource::File(path)) => Self::File {
                path: path.clone(),
                cache: Mutex::new(FileCache {
                    checked: None,
                    stamp: None,
                    value: Err(String::new()),
                }),
            },
        }
    }

    /// The current key: `Ok(None)` when none is configured, `Err` when one is configured but
    /// cannot be had (the message names the file or variable and why, never the value).
    pub fn current(&self) -> Result<Option<Secret>, Cow<'static, str>> {
        match self {
            Self::None => Ok(None),
            Self::Env { value: Some(s), .. } => Ok(Some(s.clone())),
            Self::Env { var, value: None } => Err(env_problem(var).into()),
            Self::File { path, cache } => {
                let Ok(mut cache) = cache.lock() else {
                    return Err("key cache poisoned".into());
                };
                let now = Instant::now();
                let fresh = cache
                    .checked
                    .is_some_and(|t| now.saturating_duration_since(t) < KEY_RECHECK);
                if !fresh {
                    cache.checked = Some(now);
                    let stamp = std::fs::metadata(path)
                        .ok()
                        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
                    if stamp != cache.stamp || cache.value.is_err() {
                        cache.stamp = stamp;
                        cache.value = read_key_file(path);
                    }
                }
                match &cache.value {
                    Ok(v) => Ok(Some(v.clone())),
                    Err(m) => Err(Cow::Owned(m.clone())),
                }
            }
        }
    }
}

/// Reads a key file; the error says which file and what is wrong, in words a person can act
/// on ("key file /x/openai/api-key does not exist").
pub fn read_key_file(path: &str) -> Result<Secret, String> {
    match std::fs::read_to_string(path) {
        Ok(v) if v.trim().is_empty() => Err(format!("key file {path} is empty")),
        Ok(v) => Ok(Secret::new(&v)),
        Err(e) => Err(file_error(path, &e)),
    }
}

fn file_error(path: &str, e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::NotFound => format!("key file {path} does not exist"),
        ErrorKind::PermissionDenied => format!("key file {path} cannot be read (permission denied)"),
        ErrorKind::IsADirectory => format!("key file {path} is a directory"),
        ErrorKind::InvalidData => format!("key file {path} is not UTF-8 text"),
        _ => format!("key file {path} cannot be read ({})", e.kind()),
    }
}

fn env_problem(var: &str) -> String {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => {
            format!("environment variable {var} was empty or not UTF-8 when the table loaded")
        }
        Some(_) => format!("environment variable {var} is empty"),
        None => format!("environment variable {var} is not set"),
    }
}

/// What is wrong with one credential source now, if anything (a file is read to check it
/// is not empty; the value is dropped at once).
pub fn source_problem(source: &CredentialSource) -> Option<String> {
    match source {
        CredentialSource::File(path) => read_key_file(path).err(),
        CredentialSource::Env(var) => match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => None,
            _ => Some(env_problem(var)),
        },
    }
}

/// What keeps `t` from having its credentials now, one message per source; empty when
/// nothing is known to be wrong (credentials a provider fetches at request time — an STS
/// exchange, a token endpoint — are checked only as far as their local files).
pub fn target_problems(t: &Target) -> Vec<String> {
    let Some(c) = &t.credentials else {
        return Vec::new();
    };
    let mut out: Vec<String> = [
        &c.api_key,
        &c.access_key_id,
        &c.secret_access_key,
        &c.session_token,
    ]
    .into_iter()
    .flatten()
    .filter_map(source_problem)
    .collect();
    if let Some(w) = &c.web_identity
        && let Err(m) = read_key_file(&w.token_file)
    {
        out.push(m.replacen("key file", "token file", 1));
    }
    if let Some(a) = &c.azure_workload_identity {
        if let Err(m) = read_key_file(&azure::token_file(a)) {
            out.push(m.replacen("key file", "federated token file", 1));
        }
        for (field, value, var) in [
            ("clientId", &a.client_id, "AZURE_CLIENT_ID"),
            ("tenantId", &a.tenant_id, "AZURE_TENANT_ID"),
        ] {
            if value.is_none() && std::env::var(var).map_or(true, |v| v.trim().is_empty()) {
                out.push(format!(
                    "azureWorkloadIdentity.{field} is not set and environment variable {var} is not set"
                ));
            }
        }
    }
    out
}

/// Whether `t` may have usable credentials (nothing known to be wrong).
pub fn usable(t: &Target) -> bool {
    target_problems(t).is_empty()
}

/// One target's credential problem in a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub route: String,
    pub target: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "route {:?} target {}: {}; its requests go to the next target until it can be read",
            self.route, self.target, self.message
        )
    }
}

/// Every credential problem of `table`, in table order.
pub fn problems(table: &RouteTable) -> Vec<Problem> {
    let mut out = Vec::new();
    for route in &table.routes {
        for t in &route.targets {
            for message in target_problems(t) {
                out.push(Problem {
                    route: route.model.clone(),
                    target: t.name.clone(),
                    message,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key prints as `*****` in Debug and Display.
    #[test]
    fn secret_never_prints() {
        let s = Secret::new("sk-very-secret\n");
        assert_eq!(format!("{s} {s:?}"), "***** *****");
        assert_eq!(s.expose(), "sk-very-secret");
    }

    /// A key file is re-read when it changes (kubelet rotates mounted Secrets), and an
    /// unreadable file is an error naming the path and why, not the value.
    #[tokio::test(start_paused = true)]
    async fn key_file_is_reread_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-key");
        std::fs::write(&path, "first").unwrap();
        let src = KeySource::from_config(Some(&CredentialSource::File(path.display().to_string())));
        assert_eq!(src.current().unwrap().unwrap().expose(), "first");
        std::fs::write(&path, "second-longer").unwrap();
        tokio::time::advance(KEY_RECHECK).await;
        assert_eq!(src.current().unwrap().unwrap().expose(), "second-longer");
        std::fs::remove_file(&path).unwrap();
        tokio::time::advance(KEY_RECHECK).await;
        let err = src.current().unwrap_err();
        assert_eq!(err, format!("key file {} does not exist", path.display()));
    }

    /// Each way a credential can be missing is named with its file or variable and the cause.
    #[test]
    fn problems_name_the_file_or_variable() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let missing = dir.path().join("missing");
        let file = |p: &std::path::Path| CredentialSource::File(p.display().to_string());
        assert_eq!(
            source_problem(&file(&missing)),
            Some(format!("key file {} does not exist", missing.display()))
        );
        assert_eq!(
            source_problem(&file(&empty)),
            Some(format!("key file {} is empty", empty.display()))
        );
        assert_eq!(
            source_problem(&file(dir.path())),
            Some(format!("key file {} is a directory", dir.path().display()))
        );
        let var = "DETOUR_TEST_SURELY_UNSET_VARIABLE_5D1";
        assert_eq!(
            source_problem(&CredentialSource::Env(var.to_owned())),
            Some(format!("environment variable {var} is not set"))
        );
        let src = KeySource::from_config(Some(&CredentialSource::Env(var.to_owned())));
        assert_eq!(
            src.current().unwrap_err(),
            format!("environment variable {var} is not set")
        );
    }
}
