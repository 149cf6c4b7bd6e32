//! The webhook's TLS without cert-manager: the operator issues a self-signed CA and a serving
//! certificate for the webhook Service, keeps them in a Secret, keeps the
//! MutatingWebhookConfiguration's `caBundle` equal to the CA, and renews before expiry.
//!
//! The decisions are pure ([`plan`], [`issue`]) and tested; [`Manager`] does the I/O.
//!
//! - The CA lives 10 years and is replaced 1 year before it expires; while the new CA rolls
//!   out, `caBundle` carries both, so the apiserver trusts the old serving certificate
//!   (still served by replicas that have not reloaded) and the new one.
//! - The serving certificate lives 1 year and is replaced 30 days before expiry, or at once
//!   when the Service's DNS names change.
//! - Expiry dates are stored as annotations on the Secret, so no certificate parsing is
//!   needed; a Secret without them (or with unreadable keys) is treated as absent.
//! - The CA's private key is never written anywhere: the leader keeps it in memory
//!   ([`CaKey`]) to re-sign the serving certificate, re-deriving the CA from the key and fixed
//!   parameters. A leader that does not hold the key of the stored CA (it restarted, or
//!   leadership moved) renews with a new CA instead, the old one still trusted in `caBundle`.
//!   So whoever can read the Secret gets the serving key, never a key that could sign
//!   another certificate the apiserver trusts. A `ca.key` left in the Secret by an earlier
//!   version is removed by the next leader.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use thiserror::Error;
use tracing::{info, warn};

use crate::controller::{MANAGED_BY_LABEL, MANAGER};

pub const CA_CERT: &str = "ca.crt";
/// Where earlier versions stored the CA's private key; removed from the Secret when found.
pub const LEGACY_CA_KEY: &str = "ca.key";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
/// The PEM that goes into `caBundle` (the current CA, plus the previous one while it rolls).
pub const CA_BUNDLE: &str = "ca-bundle.crt";
pub const CA_NOT_AFTER: &str = "detour.dev/ca-not-after";
pub const CERT_NOT_AFTER: &str = "detour.dev/cert-not-after";
pub const DNS_NAMES: &str = "detour.dev/dns-names";

/// Lifetimes and renewal margins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub ca: SignedDuration,
    pub ca_renew_before: SignedDuration,
    pub cert: SignedDuration,
    pub cert_renew_before: SignedDuration,
}

const DAY: i64 = 86_400;

impl Default for Validity {
    fn default() -> Self {
        Self {
            ca: SignedDuration::from_secs(3650 * DAY),
            ca_renew_before: SignedDuration::from_secs(365 * DAY),
            cert: SignedDuration::from_secs(365 * DAY),
            cert_renew_before: SignedDuration::from_secs(30 * DAY),
        }
    }
}

#[derive(Debug, Error)]
pub enum Error {
    #[error("generating a key or certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("date out of range for a certificate: {0}")]
    Date(String),
    #[error("reading Secret {namespace}/{name}: {source}")]
    ReadSecret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing Secret {namespace}/{name}: {source}")]
    WriteSecret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating caBundle of MutatingWebhookConfiguration {name}: {source}")]
    CaBundle {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("loading the serving certificate: {0}")]
    Load(String),
    #[error("reading {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A CA certificate and a serving certificate and key, as PEM, with their expiry: what the
/// Secret holds. The CA's key is not part of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    pub ca_cert: String,
    pub ca_bundle: String,
    pub cert: String,
    pub key: String,
    pub ca_not_after: Timestamp,
    pub cert_not_after: Timestamp,
    pub dns_names: Vec<String>,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("ca_not_after", &self.ca_not_after)
            .field("cert_not_after", &self.cert_not_after)
            .field("dns_names", &self.dns_names)
            .finish_non_exhaustive()
    }
}

/// The CA's private key, held only in the leader's memory, with the certificate it signs as.
#[derive(Clone, PartialEq, Eq)]
pub struct CaKey {
    /// The CA certificate (PEM) this key belongs to.
    pub ca_cert: String,
    key: String,
}

impl std::fmt::Debug for CaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaKey").finish_non_exhaustive()
    }
}

impl CaKey {
    /// Whether this is the key of `bundle`'s CA.
    pub fn signs(&self, bundle: &Bundle) -> bool {
        self.ca_cert == bundle.ca_cert
    }
}

/// What to do with what is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Keep,
    /// A new serving certificate from the same CA (needs its key in memory).
    RenewCert,
    /// A new CA (the old one stays in `caBundle` while valid) and a new serving certificate.
    RenewAll,
}

/// The DNS names a Service is reached by from the apiserver.
pub fn dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Pure: what to do at `now`, given the CA key this replica holds in memory (if any). A
/// serving certificate due for renewal whose CA key is not held gets a new CA.
pub fn plan(
    stored: Option<&Bundle>,
    ca_key: Option<&CaKey>,
    dns: &[String],
    now: Timestamp,
    validity: &Validity,
) -> Plan {
    let Some(b) = stored else {
        return Plan::RenewAll;
    };
    let left = |t: Timestamp| t.duration_since(now);
    if left(b.ca_not_after) <= validity.ca_renew_before {
        Plan::RenewAll
    } else if left(b.cert_not_after) <= validity.cert_renew_before || b.dns_names != dns {
        if ca_key.is_some_and(|k| k.signs(b)) {
            Plan::RenewCert
        } else {
            Plan::RenewAll
        }
    } else {
        Plan::Keep
    }
}

fn offset(t: Timestamp) -> Result<time::OffsetDateTime, Error> {
    time::OffsetDateTime::from_unix_timestamp(t.as_second()).map_err(|e| Error::Date(e.to_string()))
}

fn after(now: Timestamp, d: SignedDuration) -> Result<Timestamp, Error> {
    now.checked_add(d).map_err(|e| Error::Date(e.to_string()))
}

/// The CA's parameters: fixed, so the CA can be re-derived from its key to sign a new leaf.
fn ca_params(not_before: Timestamp, not_after: Timestamp) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "detour-operator webhook CA");
    dn.push(DnType::OrganizationName, "detour");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = offset(not_before)?;
    params.not_after = offset(not_after)?;
    Ok(params)
}

/// Issues what `plan` asked for, returning the new bundle and the key of its CA (to keep in
/// memory). `RenewCert` needs `stored` and the key of its CA, else a new CA is made.
pub fn issue(
    plan: Plan,
    stored: Option<&Bundle>,
    ca_key: Option<&CaKey>,
    dns: &[String],
    now: Timestamp,
    validity: &Validity,
) -> Result<Option<(Bundle, CaKey)>, Error> {
    let backdate = SignedDuration::from_secs(300);
    let not_before = now
        .checked_sub(backdate)
        .map_err(|e| Error::Date(e.to_string()))?;
    let (ca_cert, ca_key, ca_bundle, ca_not_after, issuer) = match (plan, stored) {
        (Plan::Keep, _) => return Ok(None),
        (Plan::RenewCert, Some(b)) if ca_key.is_some_and(|k| k.signs(b)) => {
            let held = ca_key.map(|k| k.key.as_str()).unwrap_or_default();
            let key = KeyPair::from_pem(held)?;
            // The issuer's DN and key identifier come from the fixed params and the key, so
            // the new leaf chains to the stored CA certificate.
            let issuer = Issuer::new(ca_params(not_before, b.ca_not_after)?, key);
            (
                b.ca_cert.clone(),
                held.to_owned(),
                b.ca_bundle.clone(),
                b.ca_not_after,
                issuer,
            )
        }
        (Plan::RenewAll | Plan::RenewCert, _) => {
            let key = KeyPair::generate()?;
            let ca_not_after = after(now, validity.ca)?;
            let params = ca_params(not_before, ca_not_after)?;
            let cert = params.self_signed(&key)?;
            let mut bundle = cert.pem();
            // Keep trusting the previous CA while it is valid: replicas may still serve a
            // certificate it signed until they reload.
            if let Some(old) = stored
                && old.ca_not_after > now
            {
                bundle.push_str(&old.ca_cert);
            }
            let key_pem = key.serialize_pem();
            (
                cert.pem(),
                key_pem,
                bundle,
                ca_not_after,
                Issuer::new(params, key),
            )
        }
    };
    let leaf_key = KeyPair::generate()?;
    let cert_not_after = after(now, validity.cert)?.min(ca_not_after);
    let mut params = CertificateParams::new(dns.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, dns.first().cloned().unwrap_or_default());
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_before = offset(not_before)?;
    params.not_after = offset(cert_not_after)?;
    let leaf = params.signed_by(&leaf_key, &issuer)?;
    let held = CaKey {
        ca_cert: ca_cert.clone(),
        key: ca_key,
    };
    Ok(Some((
        Bundle {
            ca_cert,
            ca_bundle,
            cert: leaf.pem(),
            key: leaf_key.serialize_pem(),
            ca_not_after,
            cert_not_after,
            dns_names: dns.to_vec(),
        },
        held,
    )))
}

/// Reads a bundle from its Secret; `None` when anything is missing or unreadable.
pub fn from_secret(secret: &Secret) -> Option<Bundle> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| data.get(k).and_then(|b| String::from_utf8(b.0.clone()).ok());
    let annotations = secret.metadata.annotations.as_ref()?;
    let time = |k: &str| annotations.get(k)?.parse::<Timestamp>().ok();
    Some(Bundle {
        ca_cert: text(CA_CERT)?,
        ca_bundle: text(CA_BUNDLE)?,
        cert: text(TLS_CERT)?,
        key: text(TLS_KEY)?,
        ca_not_after: time(CA_NOT_AFTER)?,
        cert_not_after: time(CERT_NOT_AFTER)?,
        dns_names: annotations
            .get(DNS_NAMES)?
            .split(',')
            .map(str::to_owned)
            .collect(),
    })
}

/// Whether `secret` still holds a CA private key written by an earlier version.
pub fn has_legacy_ca_key(secret: &Secret) -> bool {
    secret
        .data
        .as_ref()
        .is_some_and(|d| d.contains_key(LEGACY_CA_KEY))
}

/// The Secret holding `bundle` (applied with force by our field manager, so a key this
/// manager applied before and `bundle` lacks, such as a legacy `ca.key`, is removed).
pub fn to_secret(name: &str, namespace: &str, bundle: &Bundle) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                MANAGER.to_owned(),
            )])),
            annotations: Some(BTreeMap::from([
                (CA_NOT_AFTER.to_owned(), bundle.ca_not_after.to_string()),
                (CERT_NOT_AFTER.to_owned(), bundle.cert_not_after.to_string()),
                (DNS_NAMES.to_owned(), bundle.dns_names.join(",")),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(BTreeMap::from([
            (CA_CERT.to_owned(), bytes(&bundle.ca_cert)),
            (CA_BUNDLE.to_owned(), bytes(&bundle.ca_bundle)),
            (TLS_CERT.to_owned(), bytes(&bundle.cert)),
            (TLS_KEY.to_owned(), bytes(&bundle.key)),
        ])),
        ..Secret::default()
    }
}

/// A rustls certificate resolver whose certificate can be swapped while serving.
#[derive(Debug, Default)]
pub struct Reloadable {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl Reloadable {
    /// Loads a PEM chain and key; the next handshake uses them.
    pub fn load(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), Error> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Load(format!("certificate PEM: {e}")))?;
        if certs.is_empty() {
            return Err(Error::Load("no certificate in the PEM".to_owned()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| Error::Load(format!("key PEM: {e}")))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| Error::Load(format!("key: {e}")))?;
        let certified = Arc::new(CertifiedKey::new(certs, signer));
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(certified);
        Ok(())
    }

    /// Whether a certificate is loaded (the webhook is ready to serve).
    pub fn is_loaded(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
}

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Issued by the operator (the leader) into `secret`; every replica loads it from there.
    SelfIssued {
        secret: String,
        namespace: String,
        service: String,
        webhook_config: String,
    },
    /// Files mounted from a cert-manager Certificate's Secret (`tls.crt`, `tls.key`);
    /// cert-manager's CA injector keeps `caBundle` current.
    Files { dir: String },
}

/// Keeps the serving certificate current.
#[derive(Clone)]
pub struct Manager {
    pub client: Client,
    pub source: Source,
    pub resolver: Arc<Reloadable>,
    pub validity: Validity,
    pub metrics: crate::metrics::Metrics,
    /// The key of the CA this replica issued, while it leads; never written anywhere.
    pub ca_key: Arc<Mutex<Option<CaKey>>>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// How often certificates are checked and reloaded.
pub const CHECK_EVERY: Duration = Duration::from_secs(60);

impl Manager {
    /// One round: as the leader, issue or renew and keep `caBundle` current; in every
    /// replica, load the current certificate.
    pub async fn tick(&self, leader: bool) -> Result<(), Error> {
        match &self.source {
            Source::Files { dir } => {
                let read = |name: &str| {
                    let path = format!("{dir}/{name}");
                    std::fs::read(&path).map_err(|source| Error::File { path, source })
                };
                self.resolver.load(&read(TLS_CERT)?, &read(TLS_KEY)?)
            }
            Source::SelfIssued {
                secret,
                namespace,
                service,
                webhook_config,
            } => {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
                let current = api.get_opt(secret).await.map_err(|source| Error::ReadSecret {
                    namespace: namespace.clone(),
                    name: secret.clone(),
                    source,
                })?;
                let stored = current.as_ref().and_then(from_secret);
                let mut bundle = stored.clone();
                if leader {
                    let dns = dns_names(service, namespace);
                    let now = Timestamp::now();
                    let held = self.held_ca_key();
                    let plan = plan(stored.as_ref(), held.as_ref(), &dns, now, &self.validity);
                    let issued = issue(plan, stored.as_ref(), held.as_ref(), &dns, now, &self.validity)?;
                    let legacy = current.as_ref().is_some_and(has_legacy_ca_key);
                    let write = match issued {
                        Some((new, key)) => {
                            info!(?plan, cert_not_after = %new.cert_not_after, "issued the webhook serving certificate");
                            *self.ca_key.lock().unwrap_or_else(PoisonError::into_inner) = Some(key);
                            self.metrics.certificates_issued.inc();
                            Some(new)
                        }
                        // Rewritten unchanged, without the key an earlier version stored.
                        None if legacy => stored.clone(),
                        None => None,
                    };
                    if let Some(new) = write {
                        api.patch(
                            secret,
                            &PatchParams::apply(MANAGER).force(),
                            &Patch::Apply(to_secret(secret, namespace, &new)),
                        )
                        .await
                        .map_err(|source| Error::WriteSecret {
                            namespace: namespace.clone(),
                            name: secret.clone(),
                            source,
                        })?;
                        if legacy {
                            info!(%secret, "removed the CA private key an earlier version stored in the Secret");
                        }
                        bundle = Some(new);
                    }
                    if let Some(b) = &bundle {
                        self.sync_ca_bundle(webhook_config, &b.ca_bundle).await?;
                    }
                }
                match bundle {
                    Some(b) => self.resolver.load(b.cert.as_bytes(), b.key.as_bytes()),
                    None => {
                        warn!(%secret, "no webhook certificate yet; waiting for the leader to issue it");
                        Ok(())
                    }
                }
            }
        }
    }

    fn held_ca_key(&self) -> Option<CaKey> {
        self.ca_key.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Sets every webhook's `caBundle` to `pem` where it differs (a `helm upgrade` resets it).
    async fn sync_ca_bundle(&self, name: &str, pem: &str) -> Result<(), Error> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let config = api.get(name).await.map_err(|source| Error::CaBundle {
            name: name.to_owned(),
            source,
        })?;
        let patch = ca_bundle_patch(&config, pem);
        if patch.0.is_empty() {
            return Ok(());
        }
        api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
            .map_err(|source| Error::CaBundle {
                name: name.to_owned(),
                source,
            })?;
        info!(%name, "updated the webhook caBundle");
        Ok(())
    }
}

/// A JSON patch setting each webhook's `caBundle` to `pem`, for those that differ. A `test`
/// of the webhook's name guards each index against a concurrent reorder.
pub fn ca_bundle_patch(config: &MutatingWebhookConfiguration, pem: &str) -> json_patch::Patch {
    use json_patch::jsonptr::PointerBuf;
    use json_patch::{AddOperation, PatchOperation, TestOperation};
    let mut ops = Vec::new();
    for (i, webhook) in config.webhooks.iter().flatten().enumerate() {
        if webhook.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) == Some(pem.as_bytes()) {
            continue;
        }
        let pointer = |p: String| PointerBuf::parse(&p).unwrap_or_default();
        ops.push(PatchOperation::Test(TestOperation {
            path: pointer(format!("/webhooks/{i}/name")),
            value: serde_json::Value::String(webhook.name.clone()),
        }));
        ops.push(PatchOperation::Add(AddOperation {
            path: pointer(format!("/webhooks/{i}/clientConfig/caBundle")),
            value: serde_json::to_value(ByteString(pem.as_bytes().to_vec())).unwrap_or_default(),
        }));
    }
    json_patch::Patch(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn dns() -> Vec<String> {
        dns_names("detour-webhook", "detour-system")
    }

    /// Nothing stored: a CA and a certificate; a fresh bundle is kept; a certificate within
    /// 30 days of expiry is renewed from the same CA (its key held in memory); a CA within a
    /// year of expiry is replaced with the old one still trusted; a changed Service name
    /// renews at once.
    #[test]
    fn plans_and_rotations() {
        let v = Validity::default();
        let now = at("2026-01-01T00:00:00Z");
        assert_eq!(plan(None, None, &dns(), now, &v), Plan::RenewAll);
        let (first, key) = issue(Plan::RenewAll, None, None, &dns(), now, &v)
            .unwrap()
            .unwrap();
        assert!(key.signs(&first));
        assert_eq!(first.cert_not_after, at("2027-01-01T00:00:00Z"));
        assert_eq!(first.ca_bundle, first.ca_cert);
        assert!(first.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        let k = Some(&key);
        assert_eq!(plan(Some(&first), k, &dns(), now, &v), Plan::Keep);
        assert_eq!(
            plan(Some(&first), k, &dns(), at("2026-12-01T00:00:00Z"), &v),
            Plan::Keep
        );
        assert_eq!(
            plan(Some(&first), k, &dns(), at("2026-12-03T00:00:00Z"), &v),
            Plan::RenewCert
        );
        let moved = dns_names("renamed", "detour-system");
        assert_eq!(plan(Some(&first), k, &moved, now, &v), Plan::RenewCert);

        let later = at("2026-12-03T00:00:00Z");
        let (renewed, renewed_key) = issue(Plan::RenewCert, Some(&first), k, &dns(), later, &v)
            .unwrap()
            .unwrap();
        assert_eq!(renewed.ca_cert, first.ca_cert, "same CA");
        assert_eq!(renewed_key, key, "same CA key");
        assert_ne!(renewed.cert, first.cert);
        assert_eq!(renewed.cert_not_after, at("2027-12-03T00:00:00Z"));

        let near_ca_expiry = at("2035-02-01T00:00:00Z");
        assert_eq!(
            plan(Some(&renewed), k, &dns(), near_ca_expiry, &v),
            Plan::RenewAll
        );
        let (rolled, rolled_key) = issue(Plan::RenewAll, Some(&renewed), k, &dns(), near_ca_expiry, &v)
            .unwrap()
            .unwrap();
        assert_ne!(rolled.ca_cert, renewed.ca_cert);
        assert_ne!(rolled_key, key);
        assert!(rolled.ca_bundle.starts_with(&rolled.ca_cert));
        assert!(
            rolled.ca_bundle.ends_with(&renewed.ca_cert),
            "old CA still trusted"
        );
    }

    /// A replica that does not hold the stored CA's key (restarted, or newly leading) cannot
    /// re-sign: a due renewal makes a new CA, the old one still trusted in caBundle; a key of
    /// another CA does not count as held.
    #[test]
    fn without_the_ca_key_a_renewal_rolls_the_ca() {
        let v = Validity::default();
        let now = at("2026-01-01T00:00:00Z");
        let (first, _lost) = issue(Plan::RenewAll, None, None, &dns(), now, &v)
            .unwrap()
            .unwrap();
        let (_, other) = issue(Plan::RenewAll, None, None, &dns(), now, &v)
            .unwrap()
            .unwrap();
        let due = at("2026-12-03T00:00:00Z");
        assert_eq!(plan(Some(&first), None, &dns(), now, &v), Plan::Keep);
        assert_eq!(plan(Some(&first), None, &dns(), due, &v), Plan::RenewAll);
        assert_eq!(plan(Some(&first), Some(&other), &dns(), due, &v), Plan::RenewAll);
        let (rolled, key) = issue(Plan::RenewCert, Some(&first), None, &dns(), due, &v)
            .unwrap()
            .unwrap();
        assert_ne!(rolled.ca_cert, first.ca_cert, "a new CA");
        assert!(key.signs(&rolled));
        assert_eq!(rolled.ca_bundle, format!("{}{}", rolled.ca_cert, first.ca_cert));
    }

    /// A bundle survives the Secret round trip, the served chain loads into rustls, and the
    /// Secret holds no private key but the serving one: not the CA's.
    #[test]
    fn secret_round_trip_and_load() {
        let v = Validity::default();
        let (b, key) = issue(Plan::RenewAll, None, None, &dns(), Timestamp::now(), &v)
            .unwrap()
            .unwrap();
        let secret = to_secret("detour-webhook-tls", "detour-system", &b);
        assert_eq!(from_secret(&secret), Some(b.clone()));
        let data = secret.data.clone().unwrap();
        assert_eq!(
            data.keys().map(String::as_str).collect::<Vec<_>>(),
            [CA_BUNDLE, CA_CERT, TLS_CERT, TLS_KEY]
        );
        for (name, value) in &data {
            let text = String::from_utf8(value.0.clone()).unwrap();
            assert_eq!(text.contains("PRIVATE KEY"), name == TLS_KEY, "{name}");
            assert!(!text.contains(key.key.trim()), "{name} holds the CA key");
        }
        assert!(!has_legacy_ca_key(&secret));
        let resolver = Reloadable::default();
        assert!(!resolver.is_loaded());
        resolver.load(b.cert.as_bytes(), b.key.as_bytes()).unwrap();
        assert!(resolver.is_loaded());
        assert!(resolver.load(b"junk", b"junk").is_err());
    }

    /// The caBundle patch touches only webhooks whose bundle differs.
    #[test]
    fn ca_bundle_patch_only_when_different() {
        use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, WebhookClientConfig};
        let webhook = |bundle: Option<&str>| MutatingWebhook {
            name: "inject.detour.dev".into(),
            client_config: WebhookClientConfig {
                ca_bundle: bundle.map(|b| ByteString(b.as_bytes().to_vec())),
                ..WebhookClientConfig::default()
            },
            ..MutatingWebhook::default()
        };
        let config = MutatingWebhookConfiguration {
            webhooks: Some(vec![webhook(None)]),
            ..MutatingWebhookConfiguration::default()
        };
        let patch = ca_bundle_patch(&config, "PEM");
        assert_eq!(patch.0.len(), 2);
        let mut doc = serde_json::to_value(&config).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        let patched: MutatingWebhookConfiguration = serde_json::from_value(doc).unwrap();
        let bundle = patched.webhooks.unwrap()[0]
            .client_config
            .ca_bundle
            .clone()
            .unwrap();
        assert_eq!(bundle.0, b"PEM");
        let config = MutatingWebhookConfiguration {
            webhooks: Some(vec![webhook(Some("PEM"))]),
            ..MutatingWebhookConfiguration::default()
        };
        assert!(ca_bundle_patch(&config, "PEM").0.is_empty());
    }
}

#[cfg(test)]
mod manager_tests {
    use super::*;
    use crate::rbac::Certs;
    use crate::verifier::mock_client_for;
    use serde_json::json;

    const SECRET: &str = "/api/v1/namespaces/detour-system/secrets/detour-webhook-tls";
    const MWC: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/detour-injector";

    fn manager(client: Client) -> Manager {
        Manager {
            client,
            source: Source::SelfIssued {
                secret: "detour-webhook-tls".into(),
                namespace: "detour-system".into(),
                service: "detour-webhook".into(),
                webhook_config: "detour-injector".into(),
            },
            resolver: Arc::new(Reloadable::default()),
            validity: Validity::default(),
            metrics: crate::metrics::Metrics::new().unwrap(),
            ca_key: Arc::default(),
        }
    }

    fn mwc(bundle: Option<&str>) -> serde_json::Value {
        let mut client_config = json!({"service": {"name": "detour-webhook", "namespace": "detour-system"}});
        if let Some(b) = bundle {
            client_config["caBundle"] = serde_json::to_value(ByteString(b.as_bytes().to_vec())).unwrap();
        }
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
               "metadata": {"name": "detour-injector"},
               "webhooks": [{"name": "inject.detour.dev", "clientConfig": client_config,
                             "sideEffects": "None", "admissionReviewVersions": ["v1"]}]})
    }

    /// First start as leader: no Secret, so a CA and certificate are issued and applied by
    /// our field manager, the webhook's empty caBundle is set by a JSON patch, and the
    /// certificate is loaded; the applied Secret carries no CA key, which stays in memory.
    /// The next round changes nothing.
    #[tokio::test]
    async fn leader_issues_stores_and_publishes_the_ca() {
        let (client, mut v) = mock_client_for(Certs::SelfIssued);
        let m = manager(client);
        let (result, stored) = tokio::join!(m.tick(true), async {
            v.expect("GET", SECRET).await.fail(404, "NotFound");
            let apply = v.expect("PATCH", SECRET).await;
            apply.assert_apply();
            let stored = apply.body.clone();
            assert_eq!(stored["type"], "kubernetes.io/tls");
            assert!(stored["metadata"]["annotations"][CERT_NOT_AFTER].is_string());
            let keys: Vec<&String> = stored["data"].as_object().unwrap().keys().collect();
            assert_eq!(keys, [CA_BUNDLE, CA_CERT, TLS_CERT, TLS_KEY], "no ca.key");
            apply.echo();
            v.expect("GET", MWC).await.reply(200, &mwc(None));
            let patch = v.expect("PATCH", MWC).await;
            assert!(
                patch.query.is_empty() || !patch.query.contains("force"),
                "{}",
                patch.query
            );
            let ops = patch.body.as_array().unwrap().clone();
            assert_eq!(ops[0]["op"], "test");
            assert_eq!(ops[1]["path"], "/webhooks/0/clientConfig/caBundle");
            patch.reply(200, &mwc(Some("x")));
            (stored, v)
        });
        result.unwrap();
        assert!(m.resolver.is_loaded());
        assert_eq!(m.metrics.certificates_issued.get(), 1);
        let held = m.held_ca_key().expect("the leader holds the CA key");
        let ca_cert = String::from_utf8(
            serde_json::from_value::<ByteString>(stored.0["data"][CA_CERT].clone())
                .unwrap()
                .0,
        )
        .unwrap();
        assert_eq!(held.ca_cert, ca_cert);
        assert!(!stored.0.to_string().contains(&held.key[40..80]));

        let (stored, mut v) = stored;
        let bundle = String::from_utf8(
            serde_json::from_value::<ByteString>(stored["data"][CA_BUNDLE].clone())
                .unwrap()
                .0,
        )
        .unwrap();
        let (result, ()) = tokio::join!(m.tick(true), async {
            v.expect("GET", SECRET).await.reply(200, &stored);
            v.expect("GET", MWC).await.reply(200, &mwc(Some(&bundle)));
            v.done().await;
        });
        result.unwrap();
        assert_eq!(m.metrics.certificates_issued.get(), 1, "nothing re-issued");
    }

    /// A follower never writes: it loads what the leader stored, or waits for it.
    #[tokio::test]
    async fn follower_only_loads() {
        let (client, mut v) = mock_client_for(Certs::SelfIssued);
        let m = manager(client);
        let (result, ()) = tokio::join!(m.tick(false), async {
            v.expect("GET", SECRET).await.fail(404, "NotFound");
        });
        result.unwrap();
        assert!(!m.resolver.is_loaded());
        let secret = serde_json::to_value(legacy_secret()).unwrap();
        let (result, ()) = tokio::join!(m.tick(false), async {
            v.expect("GET", SECRET).await.reply(200, &secret);
            v.done().await;
        });
        result.unwrap();
        assert!(m.resolver.is_loaded());
        assert!(m.held_ca_key().is_none());
    }

    /// A new CA and serving certificate for the webhook's Service, as a first start issues.
    fn fresh() -> (Bundle, CaKey) {
        issue(
            Plan::RenewAll,
            None,
            None,
            &dns_names("detour-webhook", "detour-system"),
            Timestamp::now(),
            &Validity::default(),
        )
        .unwrap()
        .unwrap()
    }

    /// A Secret written by an earlier version, with the CA key in it.
    fn legacy_secret() -> Secret {
        let (bundle, key) = fresh();
        let mut secret = to_secret("detour-webhook-tls", "detour-system", &bundle);
        if let Some(data) = secret.data.as_mut() {
            data.insert(LEGACY_CA_KEY.into(), ByteString(key.key.into_bytes()));
        }
        secret
    }

    /// A leader finding a CA key stored by an earlier version re-applies the same
    /// certificates without it (our field manager owned it, so the apply removes it), keeps
    /// using the stored certificate, and does not take the stored key into memory.
    #[tokio::test]
    async fn leader_removes_a_stored_ca_key() {
        let (client, mut v) = mock_client_for(Certs::SelfIssued);
        let m = manager(client);
        let legacy = legacy_secret();
        assert!(has_legacy_ca_key(&legacy));
        let stored = from_secret(&legacy).unwrap();
        let (result, ()) = tokio::join!(m.tick(true), async {
            v.expect("GET", SECRET)
                .await
                .reply(200, &serde_json::to_value(&legacy).unwrap());
            let apply = v.expect("PATCH", SECRET).await;
            apply.assert_apply();
            assert!(apply.body["data"].get(LEGACY_CA_KEY).is_none(), "{}", apply.body);
            let applied: Secret = serde_json::from_value(apply.body.clone()).unwrap();
            assert_eq!(from_secret(&applied).as_ref(), Some(&stored), "same certificates");
            apply.echo();
            v.expect("GET", MWC)
                .await
                .reply(200, &mwc(Some(&stored.ca_bundle)));
            v.done().await;
        });
        result.unwrap();
        assert!(m.resolver.is_loaded());
        assert_eq!(m.metrics.certificates_issued.get(), 0, "nothing issued");
        assert!(m.held_ca_key().is_none());
    }

    /// With cert-manager the manager makes no API call at all: it loads the mounted files
    /// (the cert-manager install grants no Secret or webhook-configuration rule).
    #[tokio::test]
    async fn files_mode_calls_no_api() {
        let (client, v) = crate::verifier::mock_client();
        let dir = std::env::temp_dir().join(format!("detour-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (bundle, _) = fresh();
        std::fs::write(dir.join(TLS_CERT), &bundle.cert).unwrap();
        std::fs::write(dir.join(TLS_KEY), &bundle.key).unwrap();
        let mut m = manager(client);
        m.source = Source::Files {
            dir: dir.to_string_lossy().into_owned(),
        };
        m.tick(true).await.unwrap();
        assert!(m.resolver.is_loaded());
        v.done().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
