-- Edge agents' heartbeats (shared/src/heartbeat.rs): one row per heartbeat, for "which
-- sites are offline, how old is their backlog, how full are their disks". Keyed by edge and
-- send time, so a redelivered heartbeat collapses with its copy on merge. Retained for
-- `retention.heartbeats_days`.
CREATE TABLE IF NOT EXISTS {db}.edge_heartbeats (
    edge_id String,
    sent_at DateTime('UTC'),
    sent_at_ms Int64,
    agent_version String,
    uptime_secs UInt64,
    cameras UInt32,
    fps Float64,
    events_created UInt64,
    events_sent UInt64,
    events_dropped UInt64,
    backlog UInt64,
    oldest_unsent_at_ms Nullable(Int64),
    storage_used_bytes UInt64,
    storage_limit_bytes UInt64,
    cpu_percent Float64,
    rss_bytes UInt64,
    received_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(sent_at)
ORDER BY (edge_id, sent_at_ms);
