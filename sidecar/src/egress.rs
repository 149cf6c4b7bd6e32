//! Where this sidecar sends requests and credentials: the destination rules of
//! [`detour_api::egress`], enforced here a second time, whatever the route table says.
//!
//! The operator's compiler already refused what breaks them, but the table reaches the
//! sidecar through a ConfigMap that a tenant may be able to write, so the sidecar checks:
//! - every table it loads ([`withhold_refused`]): each target's destination against the
//!   allowlist it was started with (`--allowed-hosts`, set by the injector from the
//!   operator's), every credential file inside its credentials root (`--credentials-dir`),
//!   every web-identity token file in the projected-token directory (or, for laptops, the
//!   credentials root). A target that breaks a rule is left out, named in an error at load;
//!   the rest of the table serves (a table with nothing left is refused and the previous one
//!   keeps serving);
//! - every address a host resolves to ([`check_addr`]), before connecting: never link-local
//!   or metadata, loopback only for an endpoint that names loopback, so DNS cannot turn an
//!   allowed name into a way to the instance metadata service or the pod's own listeners.
//!
//! Pure functions; the upstream client's connector calls [`check_addr`].

use std::net::SocketAddr;
use std::path::Path;

use detour_api::RouteTable;
use detour_api::defaults;
use detour_api::egress::{self, AllowedHosts, TargetDest};
use detour_api::table::{CredentialSource, Excluded, Target};

pub use detour_api::egress::Refused;

/// What the sidecar allows: the allowlist and the credentials root; and, standalone, the
/// endpoints the person running it replaced on the command line (checked by the same rules).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guard {
    pub allowed_hosts: AllowedHosts,
    /// Every credential file must be inside it.
    pub credentials_root: String,
    /// `--endpoint-override`: standalone YAML only.
    pub endpoint_overrides: Vec<EndpointOverride>,
}

/// `--endpoint-override TARGET=URL`: every target named `TARGET` (in any route) sends its
/// requests to `URL` instead of its own endpoint — for running the YAML a cluster uses against
/// local fakes or a local model server, without editing it. Standalone only. The result must
/// pass the same destination rules as any table: the host on the allowlist, plain `http://`
/// only to loopback (where the override itself is the opt-in `allowPlainHttp` would be) or
/// an in-cluster Service, never link-local.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointOverride {
    pub target: String,
    pub url: String,
}

impl EndpointOverride {
    /// Parses `TARGET=URL`; the error names what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (target, url) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: expected TARGET=URL (a target name, then its endpoint)"))?;
        let (target, url) = (target.trim(), url.trim().trim_end_matches('/'));
        if target.is_empty() {
            return Err(format!("{text:?}: the target name is empty"));
        }
        egress::parse_endpoint(url).map_err(|e| format!("{text:?}: the URL {e}"))?;
        Ok(Self {
            target: target.to_owned(),
            url: url.to_owned(),
        })
    }
}

/// Applies `overrides` to `table` (see [`EndpointOverride`]); an override that names no
/// target of the table is an error, so a typo does not silently send traffic elsewhere.
pub fn apply_overrides(table: &mut RouteTable, overrides: &[EndpointOverride]) -> Result<(), String> {
    for o in overrides {
        let mut found = false;
        for t in table
            .routes
            .iter_mut()
            .flat_map(|r| r.targets.iter_mut())
            .filter(|t| t.name == o.target)
        {
            found = true;
            t.endpoint = Some(o.url.clone());
            let loopback = egress::parse_endpoint(&o.url)
                .is_ok_and(|e| !e.https && egress::place_of(&e.host) == egress::Place::Loopback);
            if loopback {
                t.allow_plain_http = true;
            }
        }
        if !found {
            return Err(format!(
                "--endpoint-override {}={}: no route has a target named {:?}",
                o.target, o.url, o.target
            ));
        }
    }
    Ok(())
}

impl Default for Guard {
    /// The standalone defaults: the providers' public hosts and loopback, credentials under
    /// [`defaults::CREDENTIALS_ROOT`].
    fn default() -> Self {
        Self {
            allowed_hosts: AllowedHosts::standalone(),
            credentials_root: defaults::CREDENTIALS_ROOT.to_owned(),
            endpoint_overrides: Vec::new(),
        }
    }
}

impl Guard {
    pub fn new(allowed_hosts: AllowedHosts, credentials_root: &Path) -> Self {
        Self {
            allowed_hosts,
            credentials_root: credentials_root.display().to_string(),
            endpoint_overrides: Vec::new(),
        }
    }
}

/// A table target that breaks a rule: which, the field, and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("route {model:?} target {target:?}: {field}: {message}")]
pub struct Violation {
    pub model: String,
    pub target: String,
    pub field: String,
    pub message: String,
}

/// Checks every target of `table`; the first violation is returned.
pub fn check_table(table: &RouteTable, guard: &Guard) -> Result<(), Violation> {
    for route in &table.routes {
        for t in &route.targets {
            check_target(t, guard).map_err(|(field, message)| violation(&route.model, t, field, message))?;
        }
    }
    Ok(())
}

fn violation(model: &str, t: &Target, field: String, message: String) -> Violation {
    Violation {
        model: model.to_owned(),
        target: t.name.clone(),
        field,
        message,
    }
}

/// Leaves out of `table` every target that breaks a rule, as the compiler leaves out what it
/// refuses: the target goes, rules stop naming it, a route left with no target goes, and each
/// is listed in `excluded`. What is left never reaches a refused place; the rest of the table
/// keeps working, so a pod started with an older allowlist still takes the routes it allows.
/// Returns the violations, to log.
pub fn withhold_refused(table: &mut RouteTable, guard: &Guard) -> Vec<Violation> {
    let mut found = Vec::new();
    for route in &mut table.routes {
        let mut kept = Vec::with_capacity(route.targets.len());
        for t in std::mem::take(&mut route.targets) {
            match check_target(&t, guard) {
                Ok(()) => kept.push(t),
                Err((field, message)) => {
                    let v = violation(&route.model, &t, field, message);
                    table.excluded.push(Excluded {
                        model: route.model.clone(),
                        source: route.source.clone(),
                        target: Some(t.name.clone()),
                        reason: format!("{}: {} (refused by the sidecar)", v.field, v.message),
                    });
                    for rule in &mut route.rules {
                        if let Some(names) = &mut rule.targets {
                            names.retain(|n| *n != t.name);
                        }
                    }
                    found.push(v);
                }
            }
        }
        route.targets = kept;
    }
    table.routes.retain(|route| {
        if route.targets.is_empty() {
            table.excluded.push(Excluded {
                model: route.model.clone(),
                source: route.source.clone(),
                target: None,
                reason: "every target was refused by the sidecar".to_owned(),
            });
        }
        !route.targets.is_empty()
    });
    found
}

fn check_target(t: &Target, guard: &Guard) -> Result<(), (String, String)> {
    let dest = TargetDest {
        provider: t.provider,
        endpoint: t.endpoint.as_deref(),
        region: t.region.as_deref(),
        has_credentials: t.credentials.is_some(),
        allow_plain_http: t.allow_plain_http,
    };
    egress::check_target(&dest, &guard.allowed_hosts).map_err(|v| (v.field.to_owned(), v.message))?;
    let Some(c) = &t.credentials else {
        return Ok(());
    };
    let root = guard.credentials_root.as_str();
    for (field, source) in [
        ("credentials.apiKey", &c.api_key),
        ("credentials.accessKeyId", &c.access_key_id),
        ("credentials.secretAccessKey", &c.secret_access_key),
        ("credentials.sessionToken", &c.session_token),
    ] {
        if let Some(CredentialSource::File(path)) = source
            && !egress::path_within(path, root)
        {
            return Err((
                field.to_owned(),
                format!(
                    "{path:?} is outside the credentials directory {root:?}; the sidecar reads no other file"
                ),
            ));
        }
    }
    if let Some(a) = &c.azure_workload_identity
        && let Some(file) = &a.token_file
        && !(egress::path_within(file, defaults::AZURE_FEDERATED_TOKEN_DIR)
            || egress::path_within(file, root))
    {
        return Err((
            "credentials.azureWorkloadIdentity.tokenFile".to_owned(),
            format!(
                "{file:?} is not in the projected-token directory {:?} or the credentials directory {root:?}",
                defaults::AZURE_FEDERATED_TOKEN_DIR
            ),
        ));
    }
    if let Some(w) = &c.web_identity
        && !(egress::path_within(&w.token_file, defaults::WEB_IDENTITY_TOKEN_DIR)
            || egress::path_within(&w.token_file, root))
    {
        return Err((
            "credentials.webIdentity.tokenFile".to_owned(),
            format!(
                "{:?} is not in the projected-token directory {:?} or the credentials directory {root:?}",
                w.token_file,
                defaults::WEB_IDENTITY_TOKEN_DIR
            ),
        ));
    }
    Ok(())
}

/// The check of one resolved address of `host` before connecting to it.
pub fn check_addr(host: &str, addr: &SocketAddr) -> Result<(), Refused> {
    egress::check_resolved(host, addr.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(endpoint: &str, plain: bool, key_path: &str) -> RouteTable {
        let json = serde_json::json!({
            "version": 1, "hash": "", "excluded": [],
            "routes": [{
                "model": "m", "source": {"namespace": "shop", "name": "r"}, "rules": [],
                "policy": defaults::policy(),
                "targets": [{
                    "name": "t", "provider": "openai-compatible", "model": "x",
                    "endpoint": endpoint, "allowPlainHttp": plain, "region": null, "apiVersion": null,
                    "credentials": {"secret": null, "apiKey": {"file": key_path}, "accessKeyId": null,
                                    "secretAccessKey": null, "sessionToken": null, "webIdentity": null},
                    "weight": 1, "cost": null, "quality": null, "contextWindow": null, "capabilities": null,
                    "perAttemptMs": 1000, "firstByteMs": 1000, "streamIdleMs": 1000, "mock": null
                }]
            }]
        });
        serde_json::from_value(json).unwrap()
    }

    fn cluster_guard() -> Guard {
        Guard {
            allowed_hosts: AllowedHosts::providers(),
            credentials_root: defaults::CREDENTIALS_ROOT.to_owned(),
            endpoint_overrides: Vec::new(),
        }
    }

    /// A tampered table is refused naming the target, the field and the rule: a host off the
    /// allowlist, credentials over plain http, a key file outside the credentials root.
    #[test]
    fn tampered_tables_are_refused() {
        let ok_key = "/var/run/detour/credentials/openai/api-key";
        let e = check_table(&table("https://evil.example/v1", false, ok_key), &cluster_guard()).unwrap_err();
        assert_eq!(e.field, "endpoint");
        assert!(e.message.contains("not in the platform's allowlist"), "{e}");
        assert!(
            e.to_string().starts_with("route \"m\" target \"t\": endpoint:"),
            "{e}"
        );

        let e = check_table(&table("http://127.0.0.1:9/v1", false, ok_key), &Guard::default()).unwrap_err();
        assert_eq!(e.field, "allowPlainHttp", "{e}");

        let e = check_table(
            &table(
                "https://api.openai.com/v1",
                false,
                "/var/run/secrets/kubernetes.io/serviceaccount/token",
            ),
            &cluster_guard(),
        )
        .unwrap_err();
        assert_eq!(e.field, "credentials.apiKey");
        assert!(e.message.contains("outside the credentials directory"), "{e}");

        assert!(
            check_table(
                &table("https://api.openai.com/v1", false, ok_key),
                &cluster_guard()
            )
            .is_ok()
        );
        assert!(check_table(&table("http://127.0.0.1:9/v1", true, ok_key), &Guard::default()).is_ok());
    }

    /// A pod started with an older allowlist leaves out only the targets it does not allow:
    /// the route keeps its allowed targets, its rules stop naming the refused one, a route with
    /// nothing left goes, and each is listed in `excluded` with the field and the rule.
    #[test]
    fn refused_targets_are_left_out_and_the_rest_serves() {
        let ok_key = "/var/run/detour/credentials/openai/api-key";
        let mut t = table("https://api.openai.com/v1", false, ok_key);
        let mut refused = t.routes[0].targets[0].clone();
        refused.name = "new-host".to_owned();
        refused.endpoint = Some("https://llm.internal.example/v1".to_owned());
        t.routes[0].targets.push(refused.clone());
        t.routes[0].rules.push(
            serde_json::from_value(serde_json::json!({
                "name": "r", "when": "all", "conditions": [], "targets": ["new-host", "t"], "strategy": null
            }))
            .unwrap(),
        );
        let mut only_refused = t.routes[0].clone();
        only_refused.model = "n".to_owned();
        only_refused.targets = vec![refused];
        only_refused.rules.clear();
        t.routes.push(only_refused);

        let found = withhold_refused(&mut t, &cluster_guard());

        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found
                .iter()
                .all(|v| v.field == "endpoint" && v.target == "new-host"),
            "{found:?}"
        );
        assert_eq!(t.routes.len(), 1);
        let names: Vec<&str> = t.routes[0].targets.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["t"]);
        assert_eq!(
            t.routes[0].rules[0].targets.as_deref(),
            Some(&["t".to_owned()][..])
        );
        let excluded: Vec<(&str, Option<&str>)> = t
            .excluded
            .iter()
            .map(|e| (e.model.as_str(), e.target.as_deref()))
            .collect();
        assert_eq!(
            excluded,
            [("m", Some("new-host")), ("n", Some("new-host")), ("n", None)]
        );
        assert!(
            t.excluded[0].reason.contains("not in the platform's allowlist"),
            "{:?}",
            t.excluded[0]
        );
    }

    /// An override replaces the endpoint of every target so named; plain http is opted into
    /// only for loopback, and the result still passes the destination rules.
    #[test]
    fn endpoint_overrides_are_applied_and_checked() {
        let mut t = table(
            "https://api.openai.com/v1",
            false,
            "/var/run/detour/credentials/s/api-key",
        );
        let o = EndpointOverride::parse("t=http://127.0.0.1:8080/v1/").unwrap();
        apply_overrides(&mut t, &[o]).unwrap();
        let target = &t.routes[0].targets[0];
        assert_eq!(target.endpoint.as_deref(), Some("http://127.0.0.1:8080/v1"));
        assert!(target.allow_plain_http);
        assert!(check_table(&t, &Guard::default()).is_ok());

        let mut t = table(
            "https://api.openai.com/v1",
            false,
            "/var/run/detour/credentials/s/api-key",
        );
        apply_overrides(
            &mut t,
            &[EndpointOverride::parse("t=http://evil.example/v1").unwrap()],
        )
        .unwrap();
        assert!(!t.routes[0].targets[0].allow_plain_http);
        assert!(
            check_table(&t, &Guard::default()).is_err(),
            "plain http elsewhere is refused"
        );

        let mut t = table(
            "https://api.openai.com/v1",
            false,
            "/var/run/detour/credentials/s/api-key",
        );
        apply_overrides(
            &mut t,
            &[EndpointOverride::parse("t=http://169.254.169.254/").unwrap()],
        )
        .unwrap();
        assert!(
            check_table(&t, &Guard::default()).is_err(),
            "link-local is refused"
        );

        let err = apply_overrides(
            &mut t,
            &[EndpointOverride::parse("nope=https://x.example").unwrap()],
        )
        .unwrap_err();
        assert!(err.contains("no route has a target named \"nope\""), "{err}");
        assert!(EndpointOverride::parse("no-equals").is_err());
        assert!(EndpointOverride::parse("t=ftp://x").is_err());
    }

    /// Resolved addresses: metadata never, loopback only behind a loopback endpoint.
    #[test]
    fn resolved_addresses() {
        let md: SocketAddr = "169.254.169.254:80".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert!(check_addr("llm.example", &md).is_err());
        assert!(check_addr("llm.example", &lo).is_err());
        assert!(check_addr("localhost", &lo).is_ok());
    }
}
