//! Where a target may send requests and credentials: the destination rules that `compile`
//! applies to every target, and that the sidecar applies again when it loads a table and on
//! every resolved address (`detour-sidecar`'s `egress` module).
//!
//! The rules, each refused with the field and the rule it broke:
//! - an endpoint is `https://` or `http://`, with a host, and no `user:password@`;
//! - link-local and cloud-metadata addresses are never a destination (169.254.0.0/16,
//!   fe80::/10, `fd00:ec2::254`, 100.100.100.200, `metadata.google.internal`, …), nor the
//!   unspecified address;
//! - plain `http://` only to loopback or an in-cluster Service (`<name>.<namespace>.svc`,
//!   optionally followed by the cluster domain), and when the target carries credentials,
//!   only with the target's explicit `allowPlainHttp: true`;
//! - the host (the endpoint's, or the provider's public default) matches the platform's
//!   allowlist ([`AllowedHosts`]); tenants cannot extend it, so `openai-compatible` hosts are
//!   added by whoever runs the operator (or the standalone sidecar);
//! - a region has the providers' region shape (`us-east-1`, `eu-central-2`,
//!   `us-gov-west-1`), so it can only ever fill the one DNS label it is meant for.
//!
//! Pure: no I/O, no DNS. A name that resolves somewhere forbidden is caught by the sidecar's
//! check of each resolved address ([`check_resolved`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

use crate::crd::Provider;

/// The providers' public API hosts: the allowlist when the platform sets none.
pub const PROVIDER_HOSTS: &[&str] = &[
    "api.openai.com",
    "api.anthropic.com",
    "*.openai.azure.com",
    "bedrock-runtime.*.amazonaws.com",
    "aiplatform.googleapis.com",
    "*-aiplatform.googleapis.com",
];

/// Loopback names the standalone sidecar allows besides [`PROVIDER_HOSTS`] by default: a
/// laptop's local model server (Ollama, vLLM, llama.cpp) is the common standalone case.
pub const LOOPBACK_HOSTS: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// Names of cloud metadata services, refused whatever the allowlist says.
const METADATA_NAMES: &[&str] = &[
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "metadata.azure.internal",
    "instance-data",
    "instance-data.ec2.internal",
];

/// The providers' region shape: two letters, one or more words, a number (`us-east-1`,
/// `ap-southeast-2`, `us-gov-west-1`, `us-isob-east-1`).
pub fn valid_region(region: &str) -> bool {
    if region.len() > 32 {
        return false;
    }
    let parts: Vec<&str> = region.split('-').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return false;
    };
    first.len() == 2
        && first.bytes().all(|b| b.is_ascii_lowercase())
        && !middle.is_empty()
        && middle
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && (1..=2).contains(&last.len())
        && last.bytes().all(|b| b.is_ascii_digit())
}

/// Google's region shape: a word, a word ending in a number (`us-central1`, `europe-west4`,
/// `northamerica-northeast1`), or `global`.
pub fn valid_google_region(region: &str) -> bool {
    if region == "global" {
        return true;
    }
    let Some((area, place)) = region.split_once('-') else {
        return false;
    };
    let digits = place.bytes().rev().take_while(u8::is_ascii_digit).count();
    let word = &place[..place.len() - digits];
    region.len() <= 32
        && !area.is_empty()
        && area.bytes().all(|b| b.is_ascii_lowercase())
        && !word.is_empty()
        && word.bytes().all(|b| b.is_ascii_lowercase())
        && (1..=2).contains(&digits)
}

/// One allowlist entry: a host name or address, where a `*` label stands for exactly one
/// DNS label (`*.openai.azure.com`, `bedrock-runtime.*.amazonaws.com`) and a label starting
/// with `*-` for one label ending that way (`*-aiplatform.googleapis.com`: Vertex AI's
/// regional hosts, `us-central1-aiplatform.googleapis.com`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPattern(String);

impl HostPattern {
    /// Parses one entry; `Err` says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let t = text.trim().trim_end_matches('.').to_ascii_lowercase();
        let t = t
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .map_or(t.clone(), str::to_owned);
        let bad = |why: &'static str| PatternError {
            pattern: text.to_owned(),
            why,
        };
        if t.is_empty() {
            return Err(bad("is empty"));
        }
        if t.parse::<IpAddr>().is_ok() {
            return Ok(Self(t));
        }
        if t.contains("://") || t.contains('/') || t.contains(':') || t.contains('@') {
            return Err(bad("must be a host name, without scheme, port or path"));
        }
        let labels: Vec<&str> = t.split('.').collect();
        if labels.iter().all(|l| *l == "*") {
            return Err(bad("must name at least one label that is not *"));
        }
        let ok = labels.iter().all(|l| {
            let l = l.strip_prefix("*-").unwrap_or(l);
            l == "*"
                || (!l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-'))
        });
        if !ok {
            return Err(bad(
                "must be DNS labels (letters, digits, '-') or '*' for exactly one label",
            ));
        }
        Ok(Self(t))
    }

    /// Whether `host` (lowercase, no brackets) matches.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        let pattern: Vec<&str> = self.0.split('.').collect();
        let labels: Vec<&str> = host.split('.').collect();
        if host.parse::<IpAddr>().is_ok() || self.0.parse::<IpAddr>().is_ok() {
            return normalise_ip(host) == normalise_ip(&self.0);
        }
        pattern.len() == labels.len()
            && pattern
                .iter()
                .zip(&labels)
                .all(|(p, l)| (*p == "*" && !l.is_empty()) || label_matches(p, l))
    }
}

/// One label against one pattern label: equal (ignoring case), or `*-suffix` against a label
/// that is a non-empty prefix, `-`, and the suffix.
fn label_matches(pattern: &str, label: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) if suffix.starts_with('-') => {
            label.len() > suffix.len()
                && label
                    .get(label.len() - suffix.len()..)
                    .is_some_and(|end| end.eq_ignore_ascii_case(suffix))
                && !label.starts_with('-')
        }
        _ => pattern.eq_ignore_ascii_case(label),
    }
}

fn normalise_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>().ok().map(|ip| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    })
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An allowlist entry that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("allowed host {pattern:?} {why}")]
pub struct PatternError {
    pub pattern: String,
    pub why: &'static str,
}

/// The platform's allowlist of endpoint hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedHosts(Vec<HostPattern>);

impl AllowedHosts {
    /// Parses a list of entries (flag, env or chart value).
    pub fn parse<I, S>(entries: I) -> Result<Self, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        entries
            .into_iter()
            .filter(|e| !e.as_ref().trim().is_empty())
            .map(|e| HostPattern::parse(e.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Parses a comma- or whitespace-separated list, as flags and environment variables carry it.
    pub fn parse_list(list: &str) -> Result<Self, PatternError> {
        Self::parse(list.split(|c: char| c == ',' || c.is_whitespace()))
    }

    /// The operator's default: the providers' public API hosts ([`PROVIDER_HOSTS`]).
    pub fn providers() -> Self {
        Self(
            PROVIDER_HOSTS
                .iter()
                .map(|p| HostPattern(String::from(*p)))
                .collect(),
        )
    }

    /// The standalone sidecar's default: the providers' hosts and loopback.
    pub fn standalone() -> Self {
        let mut hosts = Self::providers();
        hosts
            .0
            .extend(LOOPBACK_HOSTS.iter().map(|p| HostPattern(String::from(*p))));
        hosts
    }

    pub fn allows(&self, host: &str) -> bool {
        self.0.iter().any(|p| p.matches(host))
    }

    pub fn patterns(&self) -> &[HostPattern] {
        &self.0
    }

    /// The entries joined by commas, as `--allowed-hosts` takes them.
    pub fn to_list(&self) -> String {
        self.0
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl fmt::Display for AllowedHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(none)");
        }
        f.write_str(
            &self
                .0
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        )
    }
}

/// What kind of place a host is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// `localhost`, 127.0.0.0/8, `::1`.
    Loopback,
    /// `<service>.<namespace>.svc[.<cluster domain>]`.
    ClusterService,
    /// Link-local, cloud metadata, or the unspecified address: never a destination.
    Forbidden,
    /// Anything else.
    Elsewhere,
}

/// Where `host` (from a URL, without brackets or port) points, as far as its text tells.
pub fn place_of(host: &str) -> Place {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if let Some(ip) = normalise_ip(&host) {
        return place_of_ip(ip);
    }
    if host == "localhost" || host.ends_with(".localhost") {
        return Place::Loopback;
    }
    if METADATA_NAMES.contains(&host.as_str()) {
        return Place::Forbidden;
    }
    let labels: Vec<&str> = host.split('.').collect();
    // service.namespace.svc, then optionally the cluster domain (cluster.local by default).
    if labels.len() >= 3 && labels.get(2) == Some(&"svc") {
        return Place::ClusterService;
    }
    Place::Elsewhere
}

/// Where an address points.
pub fn place_of_ip(ip: IpAddr) -> Place {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast() || v4 == ALIBABA_METADATA {
                Place::Forbidden
            } else if v4.is_loopback() {
                Place::Loopback
            } else {
                Place::Elsewhere
            }
        }
        IpAddr::V6(v6) => {
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            if link_local || v6.is_unspecified() || v6 == AWS_METADATA_V6 {
                Place::Forbidden
            } else if v6.is_loopback() {
                Place::Loopback
            } else {
                Place::Elsewhere
            }
        }
    }
}

const ALIBABA_METADATA: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// A parsed endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub https: bool,
    /// Lowercase, without brackets.
    pub host: String,
}

/// Parses an endpoint URL; `Err` is the rule it broke.
pub fn parse_endpoint(url: &str) -> Result<Endpoint, String> {
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err("must start with https:// (or http:// where plain http is allowed)".to_owned());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(
            "must not carry user:password@ (credentials come from the target's credentials)".to_owned(),
        );
    }
    let uri: http::Uri = url.parse().map_err(|e| format!("is not a valid URL ({e})"))?;
    let host = uri
        .host()
        .map(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase()
        })
        .filter(|h| !h.is_empty())
        .ok_or_else(|| "has no host".to_owned())?;
    Ok(Endpoint { https, host })
}

/// The host a target's requests go to when it sets no endpoint.
pub fn default_host(provider: Provider, region: Option<&str>) -> Option<String> {
    match provider {
        Provider::Openai => Some("api.openai.com".to_owned()),
        Provider::Anthropic => Some("api.anthropic.com".to_owned()),
        Provider::Bedrock => Some(format!(
            "bedrock-runtime.{}.amazonaws.com",
            region.unwrap_or("us-east-1")
        )),
        Provider::Vertex => Some(match region {
            None | Some("global") => "aiplatform.googleapis.com".to_owned(),
            Some(r) => format!("{r}-aiplatform.googleapis.com"),
        }),
        Provider::AzureOpenai | Provider::OpenaiCompatible | Provider::Mock => None,
    }
}

/// A destination rule a target broke: the field to fix and what the rule is.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct Violation {
    /// Relative to the target: `endpoint`, `region`, `allowPlainHttp`.
    pub field: &'static str,
    pub message: String,
}

/// What [`check_target`] needs to know about a target.
#[derive(Clone, Copy, Debug)]
pub struct TargetDest<'a> {
    pub provider: Provider,
    pub endpoint: Option<&'a str>,
    pub region: Option<&'a str>,
    /// Whether requests carry a key or signed AWS credentials.
    pub has_credentials: bool,
    pub allow_plain_http: bool,
}

/// Applies every destination rule to one target.
pub fn check_target(t: &TargetDest<'_>, allowed: &AllowedHosts) -> Result<(), Violation> {
    if t.provider == Provider::Mock {
        return Ok(());
    }
    if let Some(region) = t.region
        && t.provider == Provider::Vertex
        && !valid_google_region(region)
    {
        return Err(Violation {
            field: "region",
            message: format!(
                "{region:?} is not a Google Cloud region; use e.g. us-central1, europe-west4 or global"
            ),
        });
    }
    if let Some(region) = t.region
        && t.provider != Provider::Vertex
        && !valid_region(region)
    {
        return Err(Violation {
            field: "region",
            message: format!(
                "{region:?} is not a region; use the provider's region name, e.g. us-east-1 (two letters, words, a number, joined by '-')"
            ),
        });
    }
    let (host, https) = match t.endpoint {
        Some(url) => {
            let e = parse_endpoint(url).map_err(|message| Violation {
                field: "endpoint",
                message: format!("{url:?} {message}"),
            })?;
            (e.host, e.https)
        }
        None => match default_host(t.provider, t.region) {
            Some(h) => (h, true),
            None => return Ok(()),
        },
    };
    let place = place_of(&host);
    if place == Place::Forbidden {
        return Err(Violation {
            field: "endpoint",
            message: format!(
                "host {host:?} is a link-local or cloud-metadata address, which is never a destination"
            ),
        });
    }
    if !https {
        if !matches!(place, Place::Loopback | Place::ClusterService) {
            return Err(Violation {
                field: "endpoint",
                message: format!(
                    "plain http:// is allowed only to loopback or an in-cluster Service \
                     (<name>.<namespace>.svc); use https:// for {host:?}"
                ),
            });
        }
        if t.has_credentials && !t.allow_plain_http {
            return Err(Violation {
                field: "allowPlainHttp",
                message: format!(
                    "credentials go over plain http:// only when the target sets allowPlainHttp: true \
                     (loopback or in-cluster Services only); use https:// for {host:?} or opt in"
                ),
            });
        }
    }
    if !allowed.allows(&host) {
        return Err(Violation {
            field: "endpoint",
            message: format!(
                "host {host:?} is not in the platform's allowlist of endpoint hosts ({allowed}); \
                 the operator's --allowed-hosts (chart value) or the standalone sidecar's \
                 --allowed-hosts decides it, not the route"
            ),
        });
    }
    Ok(())
}

/// Why the sidecar refused to connect to a resolved address.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Refused {
    #[error(
        "{host} resolved to {addr}, a link-local or cloud-metadata address, which is never a destination"
    )]
    Forbidden { host: String, addr: IpAddr },
    #[error("{host} resolved to the loopback address {addr}; only a loopback endpoint may reach loopback")]
    Loopback { host: String, addr: IpAddr },
}

/// The check of one resolved address of `host` (the URL's host): never link-local or
/// metadata; loopback only when the endpoint itself names loopback, so no DNS name can turn
/// an allowed host into a way to the pod's own listeners.
pub fn check_resolved(host: &str, addr: IpAddr) -> Result<(), Refused> {
    match place_of_ip(addr) {
        Place::Forbidden => Err(Refused::Forbidden {
            host: host.to_owned(),
            addr,
        }),
        Place::Loopback if place_of(host) != Place::Loopback => Err(Refused::Loopback {
            host: host.to_owned(),
            addr,
        }),
        _ => Ok(()),
    }
}

/// Whether `path` is absolute, free of `.`/`..` segments and empty segments, and inside
/// `root` (a directory path): the shape of a credential path the sidecar will read.
pub fn path_within(path: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    let clean = |p: &str| {
        p.starts_with('/')
            && p.split('/')
                .skip(1)
                .all(|s| !s.is_empty() && s != "." && s != "..")
    };
    !root.is_empty()
        && clean(root)
        && clean(path)
        && path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Region shapes: real regions pass, anything that could reach another host does not.
    #[test]
    fn regions() {
        for ok in [
            "us-east-1",
            "eu-central-2",
            "us-gov-west-1",
            "us-isob-east-1",
            "ap-southeast-4",
        ] {
            assert!(valid_region(ok), "{ok}");
        }
        for bad in [
            "x@evil.example/",
            "us-east-1.evil",
            "US-EAST-1",
            "us-east",
            "u-east-1",
            "",
            "us--1",
        ] {
            assert!(!valid_region(bad), "{bad}");
        }
    }

    /// Google's region shapes pass for Vertex, AWS's do not, and nothing that could reach
    /// another host does.
    #[test]
    fn google_regions() {
        for ok in [
            "us-central1",
            "europe-west4",
            "northamerica-northeast1",
            "me-central2",
            "global",
        ] {
            assert!(valid_google_region(ok), "{ok}");
        }
        for bad in [
            "us-east-1",
            "us-central",
            "us-central123",
            "US-CENTRAL1",
            "central1",
            "-central1",
            "us-central1.evil.example",
            "us-central1/x",
            "",
        ] {
            assert!(!valid_google_region(bad), "{bad}");
        }
        let dest = |region| TargetDest {
            provider: Provider::Vertex,
            endpoint: None,
            region: Some(region),
            has_credentials: true,
            allow_plain_http: false,
        };
        let allowed = AllowedHosts::providers();
        assert_eq!(check_target(&dest("europe-west4"), &allowed), Ok(()));
        assert_eq!(check_target(&dest("global"), &allowed), Ok(()));
        assert_eq!(
            check_target(&dest("us-east-1"), &allowed).unwrap_err().field,
            "region"
        );
        assert_eq!(
            default_host(Provider::Vertex, Some("europe-west4")).as_deref(),
            Some("europe-west4-aiplatform.googleapis.com")
        );
        assert_eq!(
            default_host(Provider::Vertex, Some("global")).as_deref(),
            Some("aiplatform.googleapis.com")
        );
    }

    /// A `*-suffix` label matches one label ending in `-suffix` with something before it,
    /// and nothing else.
    #[test]
    fn label_suffix_patterns() {
        let a = AllowedHosts::parse(["*-aiplatform.googleapis.com"]).unwrap();
        assert!(a.allows("us-central1-aiplatform.googleapis.com"));
        assert!(a.allows("EUROPE-WEST4-aiplatform.googleapis.com"));
        assert!(!a.allows("aiplatform.googleapis.com"));
        assert!(!a.allows("-aiplatform.googleapis.com"));
        assert!(!a.allows("x.us-central1-aiplatform.googleapis.com"));
        assert!(!a.allows("us-central1-aiplatform.googleapis.com.evil.example"));
        assert!(!a.allows("evilaiplatform.googleapis.com"));
        assert!(HostPattern::parse("*-").is_err());
        assert!(HostPattern::parse("*x.example.com").is_err());
    }

    /// A `*` label matches exactly one label; IP entries match the same address.
    #[test]
    fn patterns() {
        let a =
            AllowedHosts::parse(["*.openai.azure.com", "bedrock-runtime.*.amazonaws.com", "::1"]).unwrap();
        assert!(a.allows("myres.openai.azure.com"));
        assert!(!a.allows("a.b.openai.azure.com"));
        assert!(!a.allows("openai.azure.com"));
        assert!(a.allows("bedrock-runtime.eu-west-1.amazonaws.com"));
        assert!(!a.allows("evil.s3.amazonaws.com"));
        assert!(a.allows("::1"));
        assert!(HostPattern::parse("https://x").is_err());
        assert!(HostPattern::parse("*").is_err());
    }

    /// Link-local, metadata and loopback addresses are told apart, IPv4-mapped forms too.
    #[test]
    fn places() {
        assert_eq!(place_of("169.254.169.254"), Place::Forbidden);
        assert_eq!(place_of("::ffff:169.254.169.254"), Place::Forbidden);
        assert_eq!(place_of("fe80::1"), Place::Forbidden);
        assert_eq!(place_of("metadata.google.internal"), Place::Forbidden);
        assert_eq!(place_of("127.0.0.2"), Place::Loopback);
        assert_eq!(place_of("vllm.models.svc.cluster.local"), Place::ClusterService);
        assert_eq!(place_of("api.openai.com"), Place::Elsewhere);
    }

    /// Paths must be clean and strictly inside the root.
    #[test]
    fn paths() {
        let root = "/var/run/detour/credentials";
        assert!(path_within("/var/run/detour/credentials/openai/api-key", root));
        assert!(!path_within(
            "/var/run/detour/credentials/../../secrets/token",
            root
        ));
        assert!(!path_within("/var/run/detour/credentials", root));
        assert!(!path_within("/var/run/detour/credentialsX/a", root));
        assert!(!path_within("relative/a", root));
    }

    /// A resolved address is refused when link-local, or loopback behind a name.
    #[test]
    fn resolved() {
        let ll: IpAddr = "169.254.169.254".parse().unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(check_resolved("api.openai.com", ll).is_err());
        assert!(check_resolved("api.openai.com", lo).is_err());
        assert!(check_resolved("localhost", lo).is_ok());
        assert!(check_resolved("127.0.0.1", lo).is_ok());
    }
}
