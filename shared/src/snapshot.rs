//! A snapshot's upload: what travels with a JPEG from an edge to the cloud (issue 17).
//!
//! One JetStream message per picture, on `sightline.snapshots.<edge_id>.<camera_id>`
//! ([`crate::subjects::snapshot_subject`]), the JPEG's bytes as the payload, with headers:
//!
//! | header | value |
//! |---|---|
//! | `Nats-Msg-Id` | the snapshot id (JetStream's duplicate window drops a re-send) |
//! | `Content-Type` | `image/jpeg` |
//! | `Sightline-Snapshot-Id` | the snapshot id: a UUID the edge made (v7, so ids sort by when they were made) |
//! | `Sightline-Snapshot-Of` | what it shows: `event:<event id>` or `track:<track id>` (the track's edge is the subject's) |
//! | `Sightline-Captured-At` | when the frame was captured, milliseconds since the epoch (UTC) |
//! | `Sightline-Sha256` | the payload's SHA-256, lowercase hex |
//! | `Sightline-Size` | the payload's length in bytes |
//!
//! The cloud checks each of them ([`SnapshotHeader::parse`], [`crate::jpeg::check`]) and
//! that the event or track it names came from the subject's edge and camera, before it
//! stores anything.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;
use uuid::Uuid;

use crate::{EventId, Timestamp};

/// The content type of every snapshot.
pub const CONTENT_TYPE: &str = "image/jpeg";
/// Header: the snapshot id.
pub const ID_HEADER: &str = "Sightline-Snapshot-Id";
/// Header: what the snapshot shows ([`Owner`]).
pub const OF_HEADER: &str = "Sightline-Snapshot-Of";
/// Header: capture time, milliseconds since the epoch.
pub const CAPTURED_AT_HEADER: &str = "Sightline-Captured-At";
/// Header: the payload's SHA-256, hex.
pub const SHA256_HEADER: &str = "Sightline-Sha256";
/// Header: the payload's length.
pub const SIZE_HEADER: &str = "Sightline-Size";

/// The largest snapshot an edge sends and the cloud accepts by default: under NATS's
/// default 1 MiB message limit with room for the headers. A 1280x720 JPEG at the edge's
/// quality is 100 to 250 kB.
pub const MAX_BYTES: usize = 1_000_000;

/// What a snapshot shows: one event's frame, or a track's best frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    Event(EventId),
    /// A track of the edge that sent the snapshot (track ids are unique per edge).
    Track(u64),
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Event(id) => write!(f, "event:{id}"),
            Self::Track(id) => write!(f, "track:{id}"),
        }
    }
}

impl FromStr for Owner {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is neither event:<uuid> nor track:<track id>");
        match s.split_once(':').ok_or_else(bad)? {
            ("event", id) => id.parse().map(Self::Event).map_err(|_| bad()),
            ("track", id) => match id.parse::<u64>() {
                Ok(track) if track > 0 && !id.starts_with(['+', '0']) => Ok(Self::Track(track)),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

/// What the headers of a snapshot message say about its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub id: Uuid,
    pub owner: Owner,
    pub captured_at: Timestamp,
    /// Lowercase hex.
    pub sha256: String,
    pub size: u64,
}

/// Why a snapshot message's headers cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderError {
    #[error("header {0} is missing")]
    Missing(&'static str),
    #[error("header {header} is {value:?}: {problem}")]
    Invalid {
        header: &'static str,
        value: String,
        problem: String,
    },
}

impl SnapshotHeader {
    /// The headers to send, in the order of the table above (`Nats-Msg-Id` is set apart,
    /// as the publish's message id).
    pub fn headers(&self) -> [(&'static str, String); 6] {
        [
            (crate::codec::CONTENT_TYPE_HEADER, CONTENT_TYPE.to_owned()),
            (ID_HEADER, self.id.to_string()),
            (OF_HEADER, self.owner.to_string()),
            (CAPTURED_AT_HEADER, self.captured_at.as_millis().to_string()),
            (SHA256_HEADER, self.sha256.clone()),
            (SIZE_HEADER, self.size.to_string()),
        ]
    }

    /// Reads the headers through `get` (a header's value by name), naming the first that is
    /// missing or wrong.
    pub fn parse<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Self, HeaderError> {
        let value = |header: &'static str| get(header).ok_or(HeaderError::Missing(header));
        let invalid = |header: &'static str, value: &str, problem: &str| HeaderError::Invalid {
            header,
            value: value.chars().take(80).collect(),
            problem: problem.to_owned(),
        };
        let content_type = value(crate::codec::CONTENT_TYPE_HEADER)?;
        if content_type != CONTENT_TYPE {
            return Err(invalid(
                crate::codec::CONTENT_TYPE_HEADER,
                content_type,
                "a snapshot is image/jpeg",
            ));
        }
        let id = value(ID_HEADER)?;
        let id = id
            .parse::<Uuid>()
            .map_err(|_| invalid(ID_HEADER, id, "not a UUID"))?;
        if id.is_nil() {
            return Err(invalid(ID_HEADER, &id.to_string(), "the nil UUID"));
        }
        let of = value(OF_HEADER)?;
        let owner = of
            .parse::<Owner>()
            .map_err(|problem| invalid(OF_HEADER, of, &problem))?;
        let at = value(CAPTURED_AT_HEADER)?;
        let captured_at = match at.parse::<i64>() {
            Ok(ms) if ms > 0 && !at.starts_with(['+', '0']) => Timestamp::from_millis(ms),
            _ => {
                return Err(invalid(
                    CAPTURED_AT_HEADER,
                    at,
                    "not milliseconds since the epoch",
                ));
            }
        };
        let sha256 = value(SHA256_HEADER)?;
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(SHA256_HEADER, sha256, "not 64 hex digits"));
        }
        let size = value(SIZE_HEADER)?;
        let size = size
            .parse::<u64>()
            .map_err(|_| invalid(SIZE_HEADER, size, "not a byte count"))?;
        Ok(Self {
            id,
            owner,
            captured_at,
            sha256: sha256.to_ascii_lowercase(),
            size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SnapshotHeader {
        SnapshotHeader {
            id: "0190b1d2-0000-7000-8000-000000000001".parse().unwrap(),
            owner: Owner::Event("0190b1d2-0000-7000-8000-000000000002".parse().unwrap()),
            captured_at: Timestamp::from_millis(1_795_000_000_123),
            sha256: "ab".repeat(32),
            size: 12_345,
        }
    }

    fn parse(headers: &[(&'static str, String)]) -> Result<SnapshotHeader, HeaderError> {
        SnapshotHeader::parse(|name| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        })
    }

    #[test]
    fn headers_round_trip() {
        let h = header();
        assert_eq!(parse(&h.headers()).unwrap(), h);
        let track = SnapshotHeader {
            owner: Owner::Track(42),
            ..header()
        };
        assert_eq!(track.headers()[2].1, "track:42");
        assert_eq!(parse(&track.headers()).unwrap(), track);
    }

    #[test]
    fn each_bad_header_is_named() {
        let cases: [(&str, &str, &str); 11] = [
            ("Content-Type", "image/png", "Content-Type"),
            (ID_HEADER, "nope", ID_HEADER),
            (ID_HEADER, "00000000-0000-0000-0000-000000000000", ID_HEADER),
            (OF_HEADER, "event:x", OF_HEADER),
            (OF_HEADER, "track:0", OF_HEADER),
            (OF_HEADER, "track:042", OF_HEADER),
            (OF_HEADER, "camera:1", OF_HEADER),
            (CAPTURED_AT_HEADER, "-5", CAPTURED_AT_HEADER),
            (SHA256_HEADER, "abc", SHA256_HEADER),
            (SHA256_HEADER, &"zz".repeat(32), SHA256_HEADER),
            (SIZE_HEADER, "-1", SIZE_HEADER),
        ];
        for (name, value, named) in cases {
            let mut headers = header().headers().to_vec();
            for (n, v) in &mut headers {
                if *n == name {
                    *v = value.to_owned();
                }
            }
            let error = parse(&headers).unwrap_err();
            assert!(
                matches!(&error, HeaderError::Invalid { header, .. } if *header == named),
                "{name}={value}: {error}"
            );
            assert!(error.to_string().contains(named), "{error}");
        }
        for missing in [ID_HEADER, OF_HEADER, SHA256_HEADER, SIZE_HEADER] {
            let headers: Vec<_> = header()
                .headers()
                .into_iter()
                .filter(|(n, _)| *n != missing)
                .collect();
            assert_eq!(parse(&headers), Err(HeaderError::Missing(missing)));
        }
    }

    #[test]
    fn an_uppercase_digest_is_read_as_lowercase() {
        let mut headers = header().headers();
        headers[4].1 = "AB".repeat(32);
        assert_eq!(parse(&headers).unwrap().sha256, "ab".repeat(32));
    }
}
