//! Declaring the JetStream streams and the durable consumer.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::{DeliverPolicy, FromConsumer};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{self, consumer, stream};
use sightline_shared::subjects;
use time::OffsetDateTime;

use crate::backlog::Floor;
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

/// Creates or updates the events, tracks, snapshots, dead-letter and heartbeat streams and returns the durable
/// pull consumer of events.
///
/// An existing durable keeps its deliver policy (the server cannot change it in place, and
/// one declared again after a loss, or created by an operator to replay from a point, has
/// its own). A new one delivers the whole stream, or, given the ack floor of a durable that
/// vanished under a running service, resumes just past it ([`resume_policy`]).
pub async fn declare(
    js: &jetstream::Context,
    config: &IngestConfig,
    resume: Option<Floor>,
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
        // Track records: kept like events (a sibling stream, one kind per stream).
        stream::Config {
            name: subjects::TRACKS_STREAM.into(),
            description: Some("Sightline track records from edge agents".into()),
            subjects: vec![subjects::TRACKS_SUBJECTS.into()],
            ..events_stream_config(config)
        },
        // Snapshot uploads: kept like events until the writer took them; one JPEG per
        // message, as large as NATS lets through (the writer dead-letters what is over its
        // own limit, with the reason, rather than the stream refusing it unexplained).
        stream::Config {
            name: subjects::SNAPSHOTS_STREAM.into(),
            description: Some("Sightline snapshot uploads from edge agents".into()),
            subjects: vec![subjects::SNAPSHOTS_SUBJECTS.into()],
            max_message_size: -1,
            // Its own size: the events stream's byte limit, sized for small events, would
            // discard pictures the edges counted as sent. Its age limit bounds it.
            max_bytes: -1,
            ..events_stream_config(config)
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
        Ok(existing)
            if matches!(
                existing.config.deliver_policy,
                DeliverPolicy::ByStartTime { .. }
            ) =>
        {
            // nats-server 2.9 compares the start time by pointer when updating, so any
            // update of such a durable fails ("start time can not be updated"): use it as
            // it is.
            tracing::warn!(consumer = %name, "the durable starts at a point in time (made by hand to replay); using it as it is, without applying [consumer] settings to it");
            let config = consumer::pull::Config::try_from_consumer_config(existing.config.clone())
                .map_err(|e| anyhow::anyhow!("consumer {name} is not a pull consumer: {e}"))?;
            return Ok(consumer::PullConsumer::new(config, existing, js.clone()));
        }
        Ok(existing) => existing.config.deliver_policy,
        Err(error) if error.kind() == ConsumerInfoErrorKind::NotFound => {
            let policy = resume_policy(resume, stream.cached_info().created);
            tracing::info!(consumer = %name, ?policy, "declaring the durable consumer");
            policy
        }
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

/// Where a new durable starts: just past `resume`, the last ack floor read of a durable that
/// vanished, if it belongs to this stream (`stream_created`); else at the stream's start.
/// Messages acknowledged above the floor come again and collapse in ClickHouse (the hourly
/// rollup counts those few twice); nothing unstored is skipped.
fn resume_policy(resume: Option<Floor>, stream_created: OffsetDateTime) -> DeliverPolicy {
    match resume {
        Some(floor) if floor.sequence > 0 && floor.stream_created == stream_created => {
            DeliverPolicy::ByStartSequence {
                start_sequence: floor.sequence + 1,
            }
        }
        _ => DeliverPolicy::All,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_durable_resumes_past_the_floor_of_the_same_stream_only() {
        let created = OffsetDateTime::UNIX_EPOCH;
        let floor = |sequence, stream_created| Floor {
            stream_created,
            sequence,
        };
        assert_eq!(resume_policy(None, created), DeliverPolicy::All);
        assert_eq!(
            resume_policy(Some(floor(0, created)), created),
            DeliverPolicy::All
        );
        assert_eq!(
            resume_policy(Some(floor(41, created)), created),
            DeliverPolicy::ByStartSequence { start_sequence: 42 }
        );
        // The stream was deleted and made again: its sequences start over.
        let recreated = created + time::Duration::seconds(1);
        assert_eq!(
            resume_policy(Some(floor(41, created)), recreated),
            DeliverPolicy::All
        );
    }
}
