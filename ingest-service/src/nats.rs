//! Declaring the JetStream streams and the durable consumer.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{self, consumer, stream};
use sightline_shared::subjects;

use crate::config::IngestConfig;

/// The events stream's configuration.
pub fn events_stream_config(config: &IngestConfig) -> stream::Config {
    stream::Config {
        name: subjects::EVENTS_STREAM.into(),
        description: Some("Sightline detection events from edge agents".into()),
        subjects: vec![subjects::EVENTS_SUBJECTS.into()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(config.stream.max_age_hours * 3600),
        max_bytes: config.stream.max_bytes,
        max_message_size: sightline_shared::codec::MAX_PAYLOAD_BYTES as i32,
        discard: stream::DiscardPolicy::Old,
        duplicate_window: Duration::from_secs(config.stream.duplicate_window_secs),
        num_replicas: config.stream.replicas,
        ..Default::default()
    }
}

/// Creates or updates the events, dead-letter and heartbeat streams and returns the durable
/// pull consumer of events.
///
/// An existing durable keeps its deliver policy (the server cannot change it in place, and
/// one declared again after a loss, or created by an operator to replay from a point in
/// time, has its own); a new one gets `new_from`: [`DeliverPolicy::All`] at a start,
/// [`resume_from`] the last known ack floor when the durable vanished under a running
/// service.
pub async fn declare(
    js: &jetstream::Context,
    config: &IngestConfig,
    new_from: DeliverPolicy,
) -> anyhow::Result<consumer::PullConsumer> {
    let replicas = config.stream.replicas;
    let duplicate_window = Duration::from_secs(config.stream.duplicate_window_secs);
    let streams = [
        events_stream_config(config),
        stream::Config {
            name: subjects::DEADLETTER_STREAM.into(),
            description: Some("Messages Sightline ingest could not store, with the reason".into()),
            subjects: vec![subjects::DEADLETTER_SUBJECTS.into()],
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(config.stream.deadletter_max_age_days * 86_400),
            duplicate_window,
            num_replicas: replicas,
            ..Default::default()
        },
        // Heartbeats are status snapshots: kept as long as events, oldest dropped first.
        stream::Config {
            name: subjects::HEARTBEATS_STREAM.into(),
            description: Some("Sightline edge agents' heartbeats".into()),
            subjects: vec![subjects::HEARTBEATS_SUBJECTS.into()],
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(config.stream.max_age_hours * 3600),
            duplicate_window,
            num_replicas: replicas,
            ..Default::default()
        },
    ];
    for stream in streams {
        let name = stream.name.clone();
        js.create_or_update_stream(stream)
            .await
            .with_context(|| format!("failed to create or update stream {name}"))?;
    }
    let stream = js.get_stream(subjects::EVENTS_STREAM).await?;
    let name = &config.consumer.durable_name;
    let deliver_policy = match stream.consumer_info(name).await {
        Ok(existing) => existing.config.deliver_policy,
        Err(error) if error.kind() == ConsumerInfoErrorKind::NotFound => new_from,
        Err(error) => {
            return Err(error).with_context(|| format!("failed to read consumer {name}"));
        }
    };
    let consumer_config = consumer::pull::Config {
        durable_name: Some(name.clone()),
        description: Some("Sightline ingest into ClickHouse".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(config.consumer.ack_wait_secs),
        max_ack_pending: config.consumer.max_ack_pending,
        deliver_policy,
        filter_subject: subjects::EVENTS_SUBJECTS.into(),
        ..Default::default()
    };
    // Creating a durable that exists updates its editable fields (ack wait, ack window),
    // so a config change takes effect at the next start; a change the server cannot make
    // in place (say, the filter) is an error that names the consumer.
    stream
        .create_consumer(consumer_config)
        .await
        .with_context(|| format!("failed to create or update consumer {name}"))
}

/// Where a durable declared again resumes: just past `ack_floor`, the highest stream
/// sequence below which everything was acknowledged (stored), as last read; from the
/// stream's start when none was read. Messages acknowledged above the floor come again and
/// collapse in ClickHouse (the hourly rollup counts those few twice); nothing unstored is
/// skipped.
pub fn resume_from(ack_floor: u64) -> DeliverPolicy {
    match ack_floor {
        0 => DeliverPolicy::All,
        floor => DeliverPolicy::ByStartSequence {
            start_sequence: floor + 1,
        },
    }
}
