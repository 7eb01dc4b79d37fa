//! Leader election on a `coordination.k8s.io/v1` Lease, for the jobs only one replica should
//! run: the retention sweep, on the holder of the leader Lease; and the start-up schema
//! work (migrations, retention TTL), on whichever replica holds the schema Lease, one at a
//! time. Outside Kubernetes, or with `[leader] mode = "off"`, the one
//! instance is always the leader.
//!
//! The protocol is the one client-go's leaderelection uses: the holder renews
//! `renewTime` every `renew_interval_secs`; a candidate takes the Lease over only when
//! `renewTime + leaseDurationSeconds` has passed; every write is a `replace` carrying the
//! `resourceVersion` it read, so two candidates racing for an expired Lease cannot both
//! win (the loser gets 409 Conflict and stays a follower).
//!
//! Two guards against two leaders at once. Every API call has a timeout of half the renew
//! interval, and a call that fails or times out drops leadership at once: a holder whose
//! calls stall stops leading within the renew interval and a half, well before its Lease
//! (three renew intervals by default) can expire for the others. And no replica trusts
//! another's clock: a candidate judges a Lease expired when the record it saw (its
//! `resourceVersion`) has not changed for the Lease's duration by its own monotonic clock,
//! as client-go does, never by comparing `renewTime` with its own wall clock.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// When to elect a leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaderMode {
    /// On Kubernetes (`KUBERNETES_SERVICE_HOST` set): elect; elsewhere: always lead.
    Auto,
    /// Always elect (fails at start-up without a reachable API server).
    Kubernetes,
    /// Never elect: this instance runs the singleton jobs.
    Off,
}

/// `[leader]` in the ingest config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaderSettings {
    pub mode: LeaderMode,
    /// The Lease's name, in the pod's namespace.
    pub lease_name: String,
    /// How long a Lease holds without renewal, in seconds.
    pub lease_duration_secs: u32,
    /// How often the holder renews (and a follower retries), in seconds.
    pub renew_interval_secs: u32,
}

impl Default for LeaderSettings {
    fn default() -> Self {
        Self {
            mode: LeaderMode::Auto,
            lease_name: "sightline-ingest".into(),
            lease_duration_secs: 15,
            renew_interval_secs: 5,
        }
    }
}

impl LeaderSettings {
    /// Whether this process should elect, given its environment.
    pub fn elects(&self) -> bool {
        match self.mode {
            LeaderMode::Off => false,
            LeaderMode::Kubernetes => true,
            LeaderMode::Auto => std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
        }
    }
}

/// Whether this replica leads now.
#[derive(Debug, Clone)]
pub struct Leadership(watch::Receiver<bool>);

impl Leadership {
    /// A leadership that always leads (no election).
    pub fn always() -> Self {
        Self(watch::channel(true).1)
    }

    pub fn is_leader(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until leadership changes; `false` once the elector has stopped.
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

/// One candidate for a Lease.
#[derive(Debug, Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    renew: Duration,
    /// The other holder's record last seen (its `resourceVersion`) and when, by this
    /// process's monotonic clock.
    observed: Arc<Mutex<Option<(String, Instant)>>>,
}

impl Elector {
    pub fn new(api: Api<Lease>, settings: &LeaderSettings, identity: impl Into<String>) -> Self {
        Self {
            api,
            name: settings.lease_name.clone(),
            identity: identity.into(),
            duration: Duration::from_secs(u64::from(settings.lease_duration_secs)),
            renew: Duration::from_secs(u64::from(settings.renew_interval_secs)),
            observed: Arc::default(),
        }
    }

    /// Runs one API call with a timeout of half the renew interval: a stalled API server
    /// must not keep a round (and with it a leadership) alive.
    async fn call<T>(
        &self,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, kube::Error> {
        let limit = self.renew / 2;
        match tokio::time::timeout(limit, request).await {
            Ok(result) => result,
            Err(_) => Err(kube::Error::Service(Box::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the Kubernetes API did not answer within {} ms",
                    limit.as_millis()
                ),
            )))),
        }
    }

    /// Whether another holder's Lease has expired, by this process's clock: the record
    /// (`version`) unchanged for `held_for` since this candidate first saw it.
    fn expired(&self, version: &str, held_for: Duration) -> bool {
        let mut observed = self
            .observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match observed.as_ref() {
            Some((seen, since)) if seen == version => since.elapsed() >= held_for,
            _ => {
                *observed = Some((version.to_owned(), Instant::now()));
                false
            }
        }
    }

    /// The same candidate for the schema Lease (`<lease_name>-schema`), which serializes
    /// start-up schema work (migrations, retention TTL) across replicas. It is a Lease of
    /// its own, held only while a replica prepares the schema, so a new pod of a rolling
    /// upgrade never waits on an old leader whose build lacks the new migrations.
    pub fn for_schema(&self) -> Self {
        Self {
            name: format!("{}-schema", self.name),
            observed: Arc::default(),
            ..self.clone()
        }
    }

    /// One round: acquire the Lease if it is free or expired, renew it if held. Returns
    /// whether this candidate holds it afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let seconds = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.call(self.api.get_opt(&self.name)).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self
                .call(self.api.create(&PostParams::default(), &lease))
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        if !mine {
            let held_for = spec
                .lease_duration_seconds
                .map_or(self.duration, |s| Duration::from_secs(s.max(0) as u64));
            let version = lease.metadata.resource_version.clone().unwrap_or_default();
            if spec.holder_identity.is_some() && !self.expired(&version, held_for) {
                return Ok(false);
            }
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(seconds);
        // The resourceVersion read above makes this a compare-and-swap.
        match self
            .call(self.api.replace(&self.name, &PostParams::default(), &lease))
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Campaigns until `cancel` fires, publishing leadership. An API error drops leadership
    /// (the Lease may expire meanwhile: better no sweep than two). On cancel a held Lease
    /// is released so another replica takes over at once.
    pub fn spawn(self, cancel: CancellationToken) -> Leadership {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let leads = match self.try_acquire_or_renew().await {
                    Ok(leads) => leads,
                    Err(error) => {
                        tracing::warn!(%error, lease = %self.name, "leader election failed this round; not leading");
                        false
                    }
                };
                if *tx.borrow() != leads {
                    tracing::info!(identity = %self.identity, lease = %self.name, leads, "leadership changed");
                    let _ = tx.send(leads);
                }
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(self.renew) => {}
                }
            }
            if *tx.borrow() {
                let _ = tx.send(false);
                if let Err(error) = self.release().await {
                    tracing::warn!(%error, "could not release the Lease; it expires by itself");
                }
            }
        });
        Leadership(rx)
    }

    /// Runs `job` while holding the Lease: waits until it is free (or expired), renews it
    /// while `job` runs, releases it after. Errors talking to the API are retried.
    pub async fn hold<F: Future>(&self, job: F) -> F::Output {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {
                    tracing::info!(lease = %self.name, "waiting for another replica to release the Lease")
                }
                Err(error) => {
                    tracing::warn!(%error, lease = %self.name, "cannot take the Lease yet")
                }
            }
            tokio::time::sleep(self.renew).await;
        }
        tokio::pin!(job);
        let mut renew =
            tokio::time::interval_at(tokio::time::Instant::now() + self.renew, self.renew);
        let output = loop {
            tokio::select! {
                output = &mut job => break output,
                _ = renew.tick() => {
                    if let Err(error) = self.try_acquire_or_renew().await {
                        tracing::warn!(%error, lease = %self.name, "could not renew the Lease");
                    }
                }
            }
        };
        if let Err(error) = self.release().await {
            tracing::warn!(%error, lease = %self.name, "could not release the Lease; it expires by itself");
        }
        output
    }

    /// Gives the Lease up (on shutdown), if this candidate holds it.
    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.call(self.api.get_opt(&self.name)).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        self.call(self.api.replace(&self.name, &PostParams::default(), &lease))
            .await
            .map(|_| ())
    }
}

/// This replica's candidate for the leader Lease if the settings and environment ask for an
/// election (in-cluster config: the pod's service account, namespace and `HOSTNAME` as
/// identity); `None` when it always leads. [`Elector::for_schema`] gives the same candidate
/// for the schema Lease.
pub async fn candidate(settings: &LeaderSettings) -> anyhow::Result<Option<Elector>> {
    if !settings.elects() {
        return Ok(None);
    }
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("leader.mode: cannot reach the Kubernetes API: {e}"))?;
    let identity =
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("ingest-{}", uuid::Uuid::now_v7()));
    let api: Api<Lease> = Api::default_namespaced(client);
    tracing::info!(%identity, lease = %settings.lease_name, "electing a leader");
    Ok(Some(Elector::new(api, settings, identity)))
}

/// Campaigns with `candidate` until `cancel` fires, or always leads without one.
pub fn lead(candidate: Option<Elector>, cancel: CancellationToken) -> Leadership {
    candidate.map_or_else(Leadership::always, |elector| elector.spawn(cancel))
}

/// The store's schema work (migrations, TTL) runs under the schema Lease.
impl sightline_store::SchemaLock for Elector {
    fn hold<F>(&self, work: F) -> impl Future<Output = F::Output> + Send
    where
        F: Future + Send,
        F::Output: Send,
    {
        Elector::hold(self, work)
    }
}
