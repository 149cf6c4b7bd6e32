//! A target's credentials → file paths (or, standalone, an environment variable) for the
//! sidecar. Never a value: the operator reads only a referenced Secret's metadata, to know
//! that it exists and that its owner opted it in.

use super::diagnostics::{Diags, ObjectKey, Reason};
use super::{Input, Mode, SecretState};
use crate::crd::{CredentialsSpec, Provider};
use crate::defaults;
use crate::egress;
use crate::table::{AzureWorkloadIdentity, CredentialSource, Credentials, WebIdentity};

/// The Secret key a provider's API key is read from when `keys.apiKey` is not set.
fn default_api_key(provider: Provider) -> &'static str {
    if provider == Provider::Vertex {
        defaults::GOOGLE_KEY_KEY
    } else {
        defaults::API_KEY_KEY
    }
}

/// Whether `token_file` may be sent to a token exchange: only a pod's projected token, in
/// `dir`; standalone, a file in the credentials directory too. `Err`: where it may be.
fn projected_token(token_file: &str, dir: &str, input: &Input<'_>) -> Result<(), String> {
    let inside = egress::path_within(token_file, dir)
        || (input.mode == Mode::Standalone && egress::path_within(token_file, input.credentials_root));
    if inside {
        return Ok(());
    }
    Err(match input.mode {
        Mode::Cluster => format!("the projected-token directory {dir:?}"),
        Mode::Standalone => format!(
            "the projected-token directory {dir:?} or the credentials directory {:?}",
            input.credentials_root
        ),
    })
}

/// An error on `field` when it is set for another provider than the one it is for.
fn only_for(wanted: Provider, provider: Provider, field: &str, key: &ObjectKey, diags: &mut Diags) {
    if provider != wanted {
        diags.error(
            key,
            field,
            Reason::InvalidSpec,
            format!("is only for provider {wanted} (provider is {provider})"),
        );
    }
}

/// Resolves `{at}.credentials` of route `key`. `None` when they cannot be resolved at all;
/// errors recorded beside `Some` leave the target out as well.
pub(super) fn resolve(
    c: &CredentialsSpec,
    provider: Provider,
    at: &str,
    key: &ObjectKey,
    input: &Input<'_>,
    diags: &mut Diags,
) -> Option<Credentials> {
    let at = format!("{at}.credentials");
    if input.mode == Mode::Cluster {
        for (field, set) in [
            ("apiKeyEnv", c.api_key_env.is_some()),
            ("apiKeyFile", c.api_key_file.is_some()),
        ] {
            if set {
                diags.error(
                    key,
                    format!("{at}.{field}"),
                    Reason::StandaloneOnly,
                    "is only for the standalone sidecar; in a cluster put the key in a Secret and set secretName".to_owned(),
                );
            }
        }
    }
    let keys = c.keys.clone().unwrap_or_default();
    let mut out = Credentials {
        secret: c.secret_name.clone(),
        ..Credentials::default()
    };
    if let Some(secret) = &c.secret_name {
        let state = input.secrets.map(|idx| idx.state(&key.namespace, secret));
        let refused = match state {
            Some(None) => Some((
                Reason::SecretNotFound,
                format!(
                    "Secret {secret:?} not found in namespace {:?}; create it (kubectl -n {} create secret generic {secret} --from-literal={}=...), \
                     label it {}=true, or fix the name; this target is left out until then",
                    key.namespace,
                    key.namespace,
                    keys.api_key.as_deref().unwrap_or(default_api_key(provider)),
                    defaults::CREDENTIALS_LABEL,
                ),
            )),
            Some(Some(SecretState::NotOptedIn)) => Some((
                Reason::SecretNotOptedIn,
                format!(
                    "Secret {secret:?} is not labelled {label}: \"true\"; only Secrets their owner opted in may be \
                     referenced by a route (kubectl -n {} label secret {secret} {label}=true); this target is left out until then",
                    key.namespace,
                    label = defaults::CREDENTIALS_LABEL,
                ),
            )),
            Some(Some(SecretState::Unreadable)) => Some((
                Reason::SecretNotReadable,
                format!(
                    "the operator may not read Secret {secret:?}'s metadata in namespace {:?}; bind the \
                     ClusterRole detour-credentials-reader to the operator's ServiceAccount with a RoleBinding \
                     in that namespace; this target is left out until then",
                    key.namespace
                ),
            )),
            Some(Some(SecretState::OptedIn)) | None => None,
        };
        if let Some((reason, message)) = refused {
            diags.error(key, format!("{at}.secretName"), reason, message);
            return None;
        }
        let path = |k: &str| {
            CredentialSource::File(format!(
                "{}/{secret}/{k}",
                input.credentials_root.trim_end_matches('/')
            ))
        };
        // Key names are not checked against the Secret: the operator never reads them (only
        // metadata). A wrong key shows as a file the sidecar cannot read (its health report
        // and the attempt's error name the path).
        if provider == Provider::Bedrock {
            if c.web_identity.is_none() {
                out.access_key_id = Some(path(
                    keys.access_key_id
                        .as_deref()
                        .unwrap_or(defaults::ACCESS_KEY_ID_KEY),
                ));
                out.secret_access_key = Some(path(
                    keys.secret_access_key
                        .as_deref()
                        .unwrap_or(defaults::SECRET_ACCESS_KEY_KEY),
                ));
                out.session_token = keys.session_token.as_deref().map(path);
            }
        } else {
            out.api_key = Some(path(keys.api_key.as_deref().unwrap_or(default_api_key(provider))));
        }
    }
    if let Some(var) = &c.api_key_env {
        out.api_key = Some(CredentialSource::Env(var.clone()));
    }
    if let Some(file) = &c.api_key_file {
        // Relative to the credentials root; either way it must end up inside it.
        let root = input.credentials_root.trim_end_matches('/');
        let full = if file.starts_with('/') {
            file.clone()
        } else {
            format!("{root}/{file}")
        };
        if !egress::path_within(&full, root) {
            diags.error(
                key,
                format!("{at}.apiKeyFile"),
                Reason::CredentialPathRefused,
                format!(
                    "{file:?} is outside the credentials directory {root:?}; put the key file there \
                     (or start the sidecar with --credentials-dir naming its directory)"
                ),
            );
            return None;
        }
        out.api_key = Some(CredentialSource::File(full));
    }
    if let Some(w) = &c.web_identity {
        only_for(
            Provider::Bedrock,
            provider,
            &format!("{at}.webIdentity"),
            key,
            diags,
        );
        let token_file = w
            .token_file
            .clone()
            .unwrap_or_else(|| defaults::WEB_IDENTITY_TOKEN_FILE.to_owned());
        if let Err(allowed) = projected_token(&token_file, defaults::WEB_IDENTITY_TOKEN_DIR, input) {
            diags.error(
                key,
                format!("{at}.webIdentity.tokenFile"),
                Reason::CredentialPathRefused,
                format!("{token_file:?} is not a file in {allowed}; only the pod's projected token may be sent to STS"),
            );
            return None;
        }
        out.web_identity = Some(WebIdentity {
            role_arn: w.role_arn.clone(),
            token_file,
        });
    }
    if let Some(a) = &c.azure_workload_identity {
        only_for(
            Provider::AzureOpenai,
            provider,
            &format!("{at}.azureWorkloadIdentity"),
            key,
            diags,
        );
        if let Some(token_file) = &a.token_file
            && let Err(allowed) = projected_token(token_file, defaults::AZURE_FEDERATED_TOKEN_DIR, input)
        {
            diags.error(
                key,
                format!("{at}.azureWorkloadIdentity.tokenFile"),
                Reason::CredentialPathRefused,
                format!(
                    "{token_file:?} is not a file in {allowed}; only the pod's projected token may be sent to Entra ID"
                ),
            );
            return None;
        }
        out.azure_workload_identity = Some(AzureWorkloadIdentity {
            client_id: a.client_id.clone(),
            tenant_id: a.tenant_id.clone(),
            token_file: a.token_file.clone(),
        });
    }
    Some(out)
}
