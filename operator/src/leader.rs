//! Leader election on a `coordination.k8s.io/v1` Lease, so that two replicas never reconcile
//! at once. Only the route controller and certificate issuing need a leader; every replica
//! serves the webhook and its probes.
//!
//! The protocol is the one client-go uses: the holder renews `renewTime` every
//! `renew_every`; another replica takes the Lease only once `renewTime + leaseDuration` has
//! passed; every write is a PUT carrying the `resourceVersion` read, so two replicas racing
//! for an expired Lease cannot both win (the loser gets 409 Conflict). A leader that cannot
//! renew within the lease duration steps down (the caller exits, and the pod restarts as a
//! follower), because by then another replica may have taken over.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use thiserror::Error;
use tokio::sync::watch;
use tracing::{info, warn};

/// The Lease and this replica's identity.
#[derive(Clone, Debug)]
pub struct Config {
    pub namespace: String,
    pub name: String,
    /// Unique per replica: the pod name.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

#[derive(Debug, Error)]
pub enum Error {
    #[error("lost the leader Lease {namespace}/{name}: not renewed within {lease_duration:?}")]
    Lost {
        namespace: String,
        name: String,
        lease_duration: Duration,
    },
}

/// What to do with the Lease as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No Lease yet: create it, holding it.
    Create,
    /// It is ours: renew it.
    Renew,
    /// Free or expired: take it over (a new transition).
    Acquire,
    /// Someone else holds it.
    Follow { holder: String },
}

/// Pure: what `identity` should do given the Lease at `now`.
pub fn decide(lease: Option<&Lease>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return if lease.is_none() {
            Decision::Create
        } else {
            Decision::Acquire
        };
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == identity => Decision::Renew,
        None | Some("") => Decision::Acquire,
        Some(holder) => {
            let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
            match spec
                .renew_time
                .as_ref()
                .and_then(|t| t.0.checked_add(duration).ok())
            {
                Some(expiry) if expiry > now => Decision::Follow {
                    holder: holder.to_owned(),
                },
                _ => Decision::Acquire,
            }
        }
    }
}

/// The Lease spec after `decision` at `now`.
pub fn next_spec(
    previous: Option<&LeaseSpec>,
    decision: &Decision,
    config: &Config,
    now: Timestamp,
) -> LeaseSpec {
    let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
    let acquire_time = match decision {
        Decision::Renew => previous.and_then(|s| s.acquire_time.clone()),
        _ => Some(MicroTime(now)),
    };
    LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(i32::try_from(config.lease_duration.as_secs()).unwrap_or(15)),
        acquire_time,
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(match decision {
            Decision::Acquire => transitions.saturating_add(1),
            _ => transitions,
        }),
        ..LeaseSpec::default()
    }
}

/// One round: read the Lease, and create, renew or take it when we may. `Ok(true)` while we
/// lead.
pub async fn try_lead(api: &Api<Lease>, config: &Config) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(&config.name).await?;
    let decision = decide(current.as_ref(), &config.identity, now);
    let spec = next_spec(
        current.as_ref().and_then(|l| l.spec.as_ref()),
        &decision,
        config,
        now,
    );
    let result = match (&decision, current) {
        (Decision::Follow { .. }, _) => return Ok(false),
        (Decision::Create, _) | (_, None) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    namespace: Some(config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
            };
            api.create(&PostParams::default(), &lease).await.map(|_| ())
        }
        (_, Some(mut lease)) => {
            // The resourceVersion read above makes this write lose a race instead of
            // overwriting another replica's claim.
            lease.spec = Some(spec);
            api.replace(&config.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
    };
    match result {
        Ok(()) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up, if we hold it, so another replica takes over at once instead of
/// after the lease duration. Call only once this replica stopped reconciling.
pub async fn release(client: Client, config: &Config) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    api.replace(&config.name, &PostParams::default(), &lease).await?;
    info!(lease = %config.name, "released the leader Lease");
    Ok(())
}

/// Campaigns for and holds the Lease until `shutdown` fires, publishing whether we lead on
/// `leading`. Returns `Err(Lost)` when leadership was held and then lost.
pub async fn run(
    client: Client,
    config: Config,
    leading: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut last_renewed: Option<tokio::time::Instant> = None;
    loop {
        match try_lead(&api, &config).await {
            Ok(true) => {
                if last_renewed.is_none() {
                    info!(lease = %config.name, identity = %config.identity, "became the leader");
                }
                last_renewed = Some(tokio::time::Instant::now());
                leading.send_replace(true);
            }
            Ok(false) => {
                if last_renewed.is_some() {
                    return Err(lost(&config));
                }
            }
            Err(e) => {
                warn!(error = %e, lease = %config.name, "cannot read or write the leader Lease");
                if let Some(at) = last_renewed
                    && tokio::time::Instant::now().saturating_duration_since(at) >= config.lease_duration
                {
                    return Err(lost(&config));
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(config.renew_every) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

fn lost(config: &Config) -> Error {
    Error::Lost {
        namespace: config.namespace.clone(),
        name: config.name.clone(),
        lease_duration: config.lease_duration,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: Timestamp) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_owned()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(renewed)),
                ..LeaseSpec::default()
            }),
        }
    }

    /// A live Lease held by another replica is respected; an expired one is taken; our own
    /// is renewed; none is created.
    #[test]
    fn decisions() {
        let now: Timestamp = "2026-01-01T00:00:30Z".parse().unwrap();
        assert_eq!(decide(None, "a", now), Decision::Create);
        assert_eq!(
            decide(
                Some(&lease("b", "2026-01-01T00:00:20Z".parse().unwrap())),
                "a",
                now
            ),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(
            decide(
                Some(&lease("b", "2026-01-01T00:00:10Z".parse().unwrap())),
                "a",
                now
            ),
            Decision::Acquire
        );
        assert_eq!(
            decide(
                Some(&lease("a", "2026-01-01T00:00:10Z".parse().unwrap())),
                "a",
                now
            ),
            Decision::Renew
        );
    }

    /// Taking over counts a transition; renewing keeps the acquire time.
    #[test]
    fn transitions_are_counted() {
        let config = Config {
            namespace: "d".into(),
            name: "l".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        };
        let now: Timestamp = "2026-01-01T00:00:30Z".parse().unwrap();
        let taken = next_spec(None, &Decision::Acquire, &config, now);
        assert_eq!(taken.lease_transitions, Some(1));
        let later: Timestamp = "2026-01-01T00:00:35Z".parse().unwrap();
        let renewed = next_spec(Some(&taken), &Decision::Renew, &config, later);
        assert_eq!(renewed.lease_transitions, Some(1));
        assert_eq!(renewed.acquire_time, taken.acquire_time);
        assert_eq!(renewed.renew_time, Some(MicroTime(later)));
    }
}

#[cfg(test)]
mod api_tests {
    use super::*;
    use crate::verifier::mock_client;
    use serde_json::json;

    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/detour-system/leases/detour-operator";
    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/detour-system/leases";

    fn config(identity: &str) -> Config {
        Config {
            namespace: "detour-system".into(),
            name: "detour-operator".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }

    /// No Lease: create it, holding it. Another replica's live Lease: follow, write nothing.
    /// Losing the race for an expired Lease (409 on the PUT): follow.
    #[tokio::test]
    async fn create_follow_and_lose_a_race() {
        let (client, mut v) = mock_client();
        let api: Api<Lease> = Api::namespaced(client, "detour-system");
        let (a, b) = (config("pod-a"), config("pod-b"));
        let (led, ()) = tokio::join!(try_lead(&api, &a), async {
            v.expect("GET", LEASE).await.fail(404, "NotFound");
            let create = v.expect("POST", LEASES).await;
            assert_eq!(create.body["spec"]["holderIdentity"], "pod-a");
            assert_eq!(create.body["spec"]["leaseDurationSeconds"], 15);
            create.echo();
        });
        assert!(led.unwrap());

        let live = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "detour-operator", "namespace": "detour-system", "resourceVersion": "7"},
            "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15,
                     "renewTime": Timestamp::now().to_string()}});
        let (led, ()) = tokio::join!(try_lead(&api, &b), async {
            v.expect("GET", LEASE).await.reply(200, &live);
        });
        assert!(!led.unwrap());

        let mut expired = live.clone();
        expired["spec"]["renewTime"] = json!("2020-01-01T00:00:00.000000Z");
        let (led, ()) = tokio::join!(try_lead(&api, &b), async {
            v.expect("GET", LEASE).await.reply(200, &expired);
            let put = v.expect("PUT", LEASE).await;
            assert_eq!(
                put.body["metadata"]["resourceVersion"], "7",
                "optimistic concurrency"
            );
            assert_eq!(put.body["spec"]["holderIdentity"], "pod-b");
            put.fail(409, "Conflict");
        });
        assert!(!led.unwrap());
        v.done().await;
    }

    /// On the way out, a leader clears its holder so a follower takes over at once; a Lease
    /// held by someone else is left alone.
    #[tokio::test]
    async fn release_hands_over_only_our_lease() {
        let (client, mut v) = mock_client();
        let ours = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "detour-operator", "namespace": "detour-system", "resourceVersion": "9"},
            "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15}});
        let a = config("pod-a");
        let (released, ()) = tokio::join!(release(client.clone(), &a), async {
            v.expect("GET", LEASE).await.reply(200, &ours);
            let put = v.expect("PUT", LEASE).await;
            assert!(put.body["spec"].get("holderIdentity").is_none(), "{}", put.body);
            assert_eq!(put.body["metadata"]["resourceVersion"], "9");
            put.echo();
        });
        released.unwrap();
        let b = config("pod-b");
        let (released, ()) = tokio::join!(release(client, &b), async {
            v.expect("GET", LEASE).await.reply(200, &ours);
        });
        released.unwrap();
        v.done().await;
    }
}
