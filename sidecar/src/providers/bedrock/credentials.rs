//! Where a Bedrock target's AWS credentials come from.
//!
//! - Static keys (`credentials.secretName` with the `aws-access-key-id` /
//!   `aws-secret-access-key` / optional session-token keys, or files and variables
//!   standalone), re-read when their files change ([`KeySource`]).
//! - `credentials.webIdentity` (IRSA with an explicit role and token file), exchanged at STS by
//!   the AWS SDK's own provider ([`AwsCredentials::web_identity`]).
//! - Neither: the AWS SDKs' default credential chain ([`AwsCredentials::default_chain`]):
//!   environment, profile, web identity from the environment, EKS Pod Identity, ECS, IMDSv2.
//!
//! The SDK-backed sources cache and refresh ahead of expiry (see `credentials::aws`).
//! Nothing here logs or formats a key: errors name the file, the variable or the provider.

use std::borrow::Cow;

use aws_credential_types::Credentials;

use super::super::KeySource;
use crate::credentials::aws::AwsCredentials;

/// Where a target's credentials come from.
#[derive(Debug)]
pub enum AwsSource {
    Static {
        access_key_id: KeySource,
        secret_access_key: KeySource,
        session_token: KeySource,
    },
    Sdk(AwsCredentials),
}

impl AwsSource {
    pub fn from_config(c: Option<&detour_api::table::Credentials>, region: &str) -> Self {
        let c = c.cloned().unwrap_or_default();
        if let Some(w) = &c.web_identity {
            return Self::Sdk(AwsCredentials::web_identity(&w.role_arn, &w.token_file, region));
        }
        if c.access_key_id.is_none() && c.secret_access_key.is_none() {
            return Self::Sdk(AwsCredentials::default_chain(region));
        }
        Self::Static {
            access_key_id: KeySource::from_config(c.access_key_id.as_ref()),
            secret_access_key: KeySource::from_config(c.secret_access_key.as_ref()),
            session_token: KeySource::from_config(c.session_token.as_ref()),
        }
    }

    /// The credentials to sign with now; the error names the source, never a value.
    pub async fn current(&self) -> Result<Credentials, Cow<'static, str>> {
        match self {
            Self::Static {
                access_key_id,
                secret_access_key,
                session_token,
            } => {
                let missing = || Cow::Borrowed("bedrock needs an access key id and a secret access key");
                let id = access_key_id.current()?.ok_or_else(missing)?;
                let secret = secret_access_key.current()?.ok_or_else(missing)?;
                let token = session_token.current()?;
                Ok(Credentials::new(
                    id.expose(),
                    secret.expose(),
                    token.map(|t| t.expose().to_owned()),
                    None,
                    "detour",
                ))
            }
            Self::Sdk(sdk) => sdk.current().await.map_err(Cow::Owned),
        }
    }
}
