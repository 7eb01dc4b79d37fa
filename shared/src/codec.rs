//! The versioned wire format.
//!
//! Every event or track message carries a `Content-Type` header that names its kind, its
//! schema version and its encoding:
//!
//! | header value                                  | payload                         |
//! |-----------------------------------------------|---------------------------------|
//! | `application/vnd.sightline.event.v2+bincode`  | bincode 2, standard config      |
//! | `application/vnd.sightline.event.v2+json`     | UTF-8 JSON object (see README)  |
//! | `application/vnd.sightline.event.v1+bincode`  | a v1 event ([`crate::event::v1`]) |
//! | `application/vnd.sightline.event.v1+json`     | a v1 event, JSON                |
//! | `application/vnd.sightline.track.v1+bincode`  | a [`TrackRecord`], bincode      |
//! | `application/vnd.sightline.track.v1+json`     | a [`TrackRecord`], JSON         |
//!
//! Bincode is the default: compact and fast. JSON is there for people publishing with other
//! tools (`nats pub -H 'Content-Type: application/vnd.sightline.event.v1+json' ...`).
//! Decoding never panics: a missing or unknown header, an unknown version, garbage, an
//! oversized payload or trailing bytes each come back as a [`CodecError`].

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::event::{DetectionEvent, EventId, OLDEST_SCHEMA_VERSION, SCHEMA_VERSION, v1};
use crate::track::{TRACK_SCHEMA_VERSION, TrackRecord};

/// The NATS header that carries the [`ContentType`].
pub const CONTENT_TYPE_HEADER: &str = "Content-Type";

/// The largest payload the decoder accepts, matching NATS' default `max_payload` (1 MiB).
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

const MEDIA_TYPE_PREFIX: &str = "application/vnd.sightline.";

/// What a message holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Kind {
    /// A [`DetectionEvent`].
    #[default]
    Event,
    /// A [`TrackRecord`].
    Track,
}

impl Kind {
    /// The name in the content type.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::Track => "track",
        }
    }

    /// The schema version of this kind that this crate writes.
    pub const fn current_version(self) -> u16 {
        match self {
            Self::Event => SCHEMA_VERSION,
            Self::Track => TRACK_SCHEMA_VERSION,
        }
    }

    /// The oldest schema version of this kind that this crate reads (it reads every one up
    /// to the current).
    pub const fn oldest_version(self) -> u16 {
        match self {
            Self::Event => OLDEST_SCHEMA_VERSION,
            Self::Track => TRACK_SCHEMA_VERSION,
        }
    }

    /// The versions this crate reads, in words: `version 1`, `versions 1 to 2`.
    pub fn versions_read(self) -> String {
        let (oldest, current) = (self.oldest_version(), self.current_version());
        if oldest == current {
            format!("version {current}")
        } else {
            format!("versions {oldest} to {current}")
        }
    }

    /// Whether this crate reads `version` of this kind.
    pub const fn reads(self, version: u16) -> bool {
        version >= self.oldest_version() && version <= self.current_version()
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an event is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// bincode 2 with its standard configuration (varint integers, little endian).
    #[default]
    Bincode,
    /// JSON, one object per message.
    Json,
}

impl Encoding {
    /// The suffix used in the content type and in configuration files.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Bincode => "bincode",
            Self::Json => "json",
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Encoding {
    type Err = CodecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bincode" => Ok(Self::Bincode),
            "json" => Ok(Self::Json),
            _ => Err(CodecError::UnsupportedContentType(s.to_owned())),
        }
    }
}

/// The value of the `Content-Type` header: kind, schema version and encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentType {
    pub kind: Kind,
    pub encoding: Encoding,
    pub schema_version: u16,
}

impl ContentType {
    /// The content type of an event of the current schema version in `encoding`.
    pub const fn current(encoding: Encoding) -> Self {
        Self::current_of(Kind::Event, encoding)
    }

    /// The content type of `event` in `encoding`: its own schema version's.
    pub const fn of_event(event: &DetectionEvent, encoding: Encoding) -> Self {
        Self {
            kind: Kind::Event,
            encoding,
            schema_version: event.schema_version,
        }
    }

    /// The content type of a `kind` message of its current schema version in `encoding`.
    pub const fn current_of(kind: Kind, encoding: Encoding) -> Self {
        Self {
            kind,
            encoding,
            schema_version: kind.current_version(),
        }
    }

    /// Whether this is the schema version of its kind that this crate writes.
    pub const fn is_current(&self) -> bool {
        self.schema_version == self.kind.current_version()
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{MEDIA_TYPE_PREFIX}{}.v{}+{}",
            self.kind, self.schema_version, self.encoding
        )
    }
}

impl FromStr for ContentType {
    type Err = CodecError;

    /// Parses `application/vnd.sightline.<kind>.v<N>+<encoding>`, case-insensitively and
    /// ignoring parameters after `;`. It does not check that the version is supported:
    /// [`decode`] does, so the two failures stay distinct.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unsupported = || CodecError::UnsupportedContentType(s.chars().take(200).collect());
        let media = s
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let rest = media
            .strip_prefix(MEDIA_TYPE_PREFIX)
            .ok_or_else(unsupported)?;
        let (kind, rest) = [Kind::Event, Kind::Track]
            .into_iter()
            .find_map(|k| Some((k, rest.strip_prefix(k.as_str())?.strip_prefix(".v")?)))
            .ok_or_else(unsupported)?;
        let (version, encoding) = rest.split_once('+').ok_or_else(unsupported)?;
        if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
            return Err(unsupported());
        }
        let schema_version = version.parse().map_err(|_| unsupported())?;
        let encoding = encoding.parse().map_err(|_| unsupported())?;
        Ok(Self {
            kind,
            encoding,
            schema_version,
        })
    }
}

/// Why a payload could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error(
        "missing {CONTENT_TYPE_HEADER} header (expected e.g. {})",
        ContentType::current(Encoding::Bincode)
    )]
    MissingContentType,
    #[error(
        "unsupported content type {0:?} (expected application/vnd.sightline.<event|track>.v<N>+bincode or +json)"
    )]
    UnsupportedContentType(String),
    #[error(
        "unsupported {kind} schema version {found} (this build reads {})",
        kind.versions_read()
    )]
    UnsupportedVersion { kind: Kind, found: u16 },
    #[error("the content type names the kind {found} where {expected} was expected")]
    WrongKind { expected: Kind, found: Kind },
    #[error("payload of {len} bytes exceeds the limit of {MAX_PAYLOAD_BYTES} bytes")]
    TooLarge { len: usize },
    #[error("malformed {encoding} payload: {reason}")]
    Malformed { encoding: Encoding, reason: String },
    #[error("{extra} unexpected bytes after the {encoding} message")]
    TrailingBytes { encoding: Encoding, extra: usize },
    #[error("payload says schema_version {payload} but the content type says {header}")]
    VersionMismatch { header: u16, payload: u16 },
    #[error("failed to encode the message as {encoding}: {reason}")]
    Encode { encoding: Encoding, reason: String },
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_PAYLOAD_BYTES>()
}

/// Encodes `event` in `encoding` in the layout of its own schema version (a v1 event read
/// from an old buffer or from storage goes out as v1, under [`ContentType::of_event`]).
pub fn encode(event: &DetectionEvent, encoding: Encoding) -> Result<Vec<u8>, CodecError> {
    match event.schema_version {
        SCHEMA_VERSION => encode_message(event, encoding),
        1 => {
            let old =
                v1::DetectionEvent::from_current(event).ok_or_else(|| CodecError::Encode {
                    encoding,
                    reason: "a schema version 1 event cannot carry zones".into(),
                })?;
            encode_message(&old, encoding)
        }
        found => Err(CodecError::UnsupportedVersion {
            kind: Kind::Event,
            found,
        }),
    }
}

/// Encodes a track record in `encoding` for the current track schema version.
pub fn encode_track(record: &TrackRecord, encoding: Encoding) -> Result<Vec<u8>, CodecError> {
    encode_message(record, encoding)
}

fn encode_message<T: serde::Serialize>(
    message: &T,
    encoding: Encoding,
) -> Result<Vec<u8>, CodecError> {
    let encode_err = |reason: String| CodecError::Encode { encoding, reason };
    let bytes = match encoding {
        Encoding::Bincode => bincode::serde::encode_to_vec(message, bincode_config())
            .map_err(|e| encode_err(e.to_string()))?,
        Encoding::Json => serde_json::to_vec(message).map_err(|e| encode_err(e.to_string()))?,
    };
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(encode_err(format!(
            "{} bytes exceeds the limit of {MAX_PAYLOAD_BYTES}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Decodes an event payload given the raw `Content-Type` header value, if there was one.
///
/// Validation of the contents (ranges, ids, clock) is separate:
/// [`DetectionEvent::validate`].
pub fn decode(content_type: Option<&str>, payload: &[u8]) -> Result<DetectionEvent, CodecError> {
    decode_as(parse_header(content_type)?, payload)
}

/// Decodes an event payload whose content type is already parsed.
pub fn decode_as(content_type: ContentType, payload: &[u8]) -> Result<DetectionEvent, CodecError> {
    let event: DetectionEvent = if content_type.schema_version == 1 {
        decode_message::<v1::DetectionEvent>(Kind::Event, content_type, payload)?.into()
    } else {
        decode_message(Kind::Event, content_type, payload)?
    };
    check_version(content_type, event.schema_version)?;
    Ok(event)
}

/// Decodes a track record payload given the raw `Content-Type` header value.
///
/// Validation of the contents is separate: [`TrackRecord::validate`].
pub fn decode_track(content_type: Option<&str>, payload: &[u8]) -> Result<TrackRecord, CodecError> {
    decode_track_as(parse_header(content_type)?, payload)
}

/// Decodes a track record payload whose content type is already parsed.
pub fn decode_track_as(
    content_type: ContentType,
    payload: &[u8],
) -> Result<TrackRecord, CodecError> {
    let record: TrackRecord = decode_message(Kind::Track, content_type, payload)?;
    check_version(content_type, record.schema_version)?;
    Ok(record)
}

/// Parses a raw `Content-Type` header value.
pub fn parse_header(content_type: Option<&str>) -> Result<ContentType, CodecError> {
    content_type.ok_or(CodecError::MissingContentType)?.parse()
}

/// Decodes a whole `kind` message of a version this crate reads: the kind and version the
/// content type names are checked first, then the payload's size, then that the decoder used every
/// byte.
fn decode_message<T: serde::de::DeserializeOwned>(
    kind: Kind,
    content_type: ContentType,
    payload: &[u8],
) -> Result<T, CodecError> {
    if content_type.kind != kind {
        return Err(CodecError::WrongKind {
            expected: kind,
            found: content_type.kind,
        });
    }
    if !kind.reads(content_type.schema_version) {
        return Err(CodecError::UnsupportedVersion {
            kind,
            found: content_type.schema_version,
        });
    }
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(CodecError::TooLarge { len: payload.len() });
    }
    let encoding = content_type.encoding;
    match encoding {
        Encoding::Bincode => {
            let (message, used) = bincode_prefix(payload)?;
            if used != payload.len() {
                return Err(CodecError::TrailingBytes {
                    encoding,
                    extra: payload.len() - used,
                });
            }
            Ok(message)
        }
        Encoding::Json => serde_json::from_slice(payload).map_err(|e| CodecError::Malformed {
            encoding,
            reason: e.to_string(),
        }),
    }
}

/// The version a payload says it is must be the one its content type names.
fn check_version(content_type: ContentType, payload: u16) -> Result<(), CodecError> {
    if payload != content_type.schema_version {
        return Err(CodecError::VersionMismatch {
            header: content_type.schema_version,
            payload,
        });
    }
    Ok(())
}

/// Decodes a `T` from the front of a bincode payload (its size checked by the caller) and
/// returns how many bytes it used.
fn bincode_prefix<T: serde::de::DeserializeOwned>(
    payload: &[u8],
) -> Result<(T, usize), CodecError> {
    bincode::serde::decode_from_slice(payload, bincode_config()).map_err(|e| {
        CodecError::Malformed {
            encoding: Encoding::Bincode,
            reason: e.to_string(),
        }
    })
}

/// What a publisher needs to route an encoded message (subject and `Nats-Msg-Id`), read
/// from the front of its payload without decoding the rest.
///
/// A contract across schema versions and kinds: every version of [`DetectionEvent`] and of
/// [`TrackRecord`] begins with these four fields, in this order (a track record's id is its
/// `record_id`), so the head of a payload any agent version wrote decodes with this one (an
/// upgraded agent publishes the rows an older one buffered as they are).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct EventHead {
    /// The message's id: an event's `event_id`, a track record's `record_id`.
    #[serde(alias = "record_id")]
    pub event_id: EventId,
    pub schema_version: u16,
    pub edge_id: String,
    pub camera_id: String,
}

impl From<&DetectionEvent> for EventHead {
    fn from(event: &DetectionEvent) -> Self {
        Self {
            event_id: event.event_id,
            schema_version: event.schema_version,
            edge_id: event.edge_id.clone(),
            camera_id: event.camera_id.clone(),
        }
    }
}

impl From<&TrackRecord> for EventHead {
    fn from(record: &TrackRecord) -> Self {
        Self {
            event_id: record.record_id,
            schema_version: record.schema_version,
            edge_id: record.edge_id.clone(),
            camera_id: record.camera_id.clone(),
        }
    }
}

/// Reads the [`EventHead`] of a payload of any schema version, checking that it is the
/// version `content_type` names. The rest of the payload is not checked: a consumer decodes
/// it whole (and dead-letters it if it is malformed or of a version it does not read).
pub fn decode_head(content_type: ContentType, payload: &[u8]) -> Result<EventHead, CodecError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(CodecError::TooLarge { len: payload.len() });
    }
    let head: EventHead = match content_type.encoding {
        Encoding::Bincode => bincode_prefix(payload)?.0,
        Encoding::Json => serde_json::from_slice(payload).map_err(|e| CodecError::Malformed {
            encoding: Encoding::Json,
            reason: e.to_string(),
        })?,
    };
    if head.schema_version != content_type.schema_version {
        return Err(CodecError::VersionMismatch {
            header: content_type.schema_version,
            payload: head.schema_version,
        });
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{BoundingBox, Detection, ModelInfo};
    use crate::timestamp::Timestamp;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn arb_text(max: usize) -> impl Strategy<Value = String> {
        proptest::string::string_regex(&format!("[ -~\\PC]{{0,{max}}}")).expect("valid regex")
    }

    fn arb_unit() -> impl Strategy<Value = f32> {
        0.0f32..=1.0
    }

    prop_compose! {
        fn arb_detection()(label in arb_text(20), class_id in any::<u32>(), confidence in arb_unit(),
                           a in arb_unit(), b in arb_unit(), c in arb_unit(), d in arb_unit(),
                           track_id in proptest::option::of(any::<u64>()),
                           zones in proptest::collection::vec("[A-Za-z0-9_-]{1,12}", 0..3)) -> Detection {
            Detection {
                label, class_id, confidence,
                bbox: BoundingBox { x_min: a.min(b), x_max: a.max(b), y_min: c.min(d), y_max: c.max(d) },
                track_id, zones,
            }
        }
    }

    prop_compose! {
        fn arb_event()(millis in 946_684_800_000i64..4_000_000_000_000, rand in any::<u128>(),
                       edge_id in "[A-Za-z0-9_-]{1,64}", camera_id in "[A-Za-z0-9_-]{1,64}",
                       frame_seq in any::<u64>(), motion_score in arb_unit(),
                       detections in proptest::collection::vec(arb_detection(), 0..8),
                       name in arb_text(16), version in arb_text(16), inference_ms in 0.0f32..10_000.0,
                       snapshot in proptest::option::of(arb_text(40)),
                       description in proptest::option::of(arb_text(80)),
                       attributes in proptest::collection::btree_map("[a-z_]{1,10}", arb_text(20), 0..5))
                       -> DetectionEvent {
            let mut id = *EventId::new_v7(Timestamp::from_millis(millis)).as_uuid().as_bytes();
            id[8..].copy_from_slice(&rand.to_le_bytes()[8..]);
            DetectionEvent {
                event_id: EventId::from_uuid(uuid::Uuid::from_bytes(id)),
                schema_version: SCHEMA_VERSION,
                edge_id, camera_id,
                captured_at: Timestamp::from_millis(millis),
                frame_seq, motion_score, detections,
                model: ModelInfo { name, version },
                inference_ms, snapshot, description, attributes,
            }
        }
    }

    proptest! {
        #[test]
        fn round_trips_in_both_encodings(event in arb_event()) {
            for encoding in [Encoding::Bincode, Encoding::Json] {
                let ct = ContentType::current(encoding).to_string();
                let bytes = encode(&event, encoding).unwrap();
                prop_assert_eq!(&decode(Some(&ct), &bytes).unwrap(), &event);
            }
        }

        #[test]
        fn version_1_events_round_trip_as_version_1(event in arb_event()) {
            // What an agent from before zones wrote: the same event without them.
            let mut old = event;
            old.schema_version = 1;
            for d in &mut old.detections {
                d.zones.clear();
            }
            for encoding in [Encoding::Bincode, Encoding::Json] {
                let wire = match encoding {
                    Encoding::Bincode => bincode::serde::encode_to_vec(
                        v1::DetectionEvent::from_current(&old).unwrap(), bincode_config()).unwrap(),
                    Encoding::Json => serde_json::to_vec(&v1::DetectionEvent::from_current(&old).unwrap()).unwrap(),
                };
                let ct = ContentType::of_event(&old, encoding);
                prop_assert_eq!(ct.to_string(), format!("application/vnd.sightline.event.v1+{encoding}"));
                prop_assert_eq!(&decode(Some(&ct.to_string()), &wire).unwrap(), &old);
                // Encoded again (a publisher re-encoding, a replay), it is the v1 wire.
                prop_assert_eq!(encode(&old, encoding).unwrap(), wire);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            for encoding in [Encoding::Bincode, Encoding::Json] {
                let _ = decode_as(ContentType::current(encoding), &bytes);
            }
        }

        #[test]
        fn corrupted_payloads_never_panic(event in arb_event(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
            for encoding in [Encoding::Bincode, Encoding::Json] {
                let mut bytes = encode(&event, encoding).unwrap();
                for (at, value) in &flips {
                    let i = at % bytes.len();
                    bytes[i] = *value;
                }
                let _ = decode_as(ContentType::current(encoding), &bytes);
                bytes.truncate(cut % (bytes.len() + 1));
                let _ = decode_as(ContentType::current(encoding), &bytes);
            }
        }

        #[test]
        fn arbitrary_content_types_never_panic(header in ".{0,80}") {
            let _ = decode(Some(&header), b"{}");
        }
    }

    fn sample() -> DetectionEvent {
        let at = Timestamp::from_millis(1_795_000_000_123);
        DetectionEvent {
            event_id: EventId::new_v7(at),
            schema_version: SCHEMA_VERSION,
            edge_id: "edge-1".into(),
            camera_id: "cam-1".into(),
            captured_at: at,
            frame_seq: 1,
            motion_score: 0.5,
            detections: vec![],
            model: ModelInfo {
                name: "nanodet".into(),
                version: "1".into(),
            },
            inference_ms: 1.0,
            snapshot: None,
            description: None,
            attributes: BTreeMap::new(),
        }
    }

    #[test]
    fn content_type_round_trips_and_is_lenient_on_case_and_parameters() {
        for encoding in [Encoding::Bincode, Encoding::Json] {
            let ct = ContentType::current(encoding);
            assert_eq!(ct.to_string().parse::<ContentType>().unwrap(), ct);
        }
        let ct: ContentType = "Application/VND.Sightline.Event.V2+JSON; charset=utf-8"
            .parse()
            .unwrap();
        assert_eq!(ct, ContentType::current(Encoding::Json));
    }

    #[test]
    fn typed_errors_for_each_failure() {
        let event = sample();
        let bin = encode(&event, Encoding::Bincode).unwrap();
        assert_eq!(decode(None, &bin), Err(CodecError::MissingContentType));
        assert!(matches!(
            decode(Some("text/plain"), &bin),
            Err(CodecError::UnsupportedContentType(_))
        ));
        assert!(matches!(
            decode(Some("application/vnd.sightline.event.v1+xml"), &bin),
            Err(CodecError::UnsupportedContentType(_))
        ));
        assert_eq!(
            decode(Some("application/vnd.sightline.event.v3+bincode"), &bin),
            Err(CodecError::UnsupportedVersion {
                kind: Kind::Event,
                found: 3
            })
        );
        assert_eq!(
            decode(Some("application/vnd.sightline.event.v0+bincode"), &bin),
            Err(CodecError::UnsupportedVersion {
                kind: Kind::Event,
                found: 0
            })
        );
        let mut long = bin;
        long.push(0);
        assert!(matches!(
            decode(Some("application/vnd.sightline.event.v2+bincode"), &long),
            Err(CodecError::TrailingBytes { extra: 1, .. })
        ));
        assert!(matches!(
            decode(Some("application/vnd.sightline.event.v2+json"), b"garbage"),
            Err(CodecError::Malformed {
                encoding: Encoding::Json,
                ..
            })
        ));
        let huge = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert!(matches!(
            decode(Some("application/vnd.sightline.event.v2+json"), &huge),
            Err(CodecError::TooLarge { .. })
        ));
        let mut json: serde_json::Value = serde_json::to_value(&event).unwrap();
        json["schema_version"] = 2.into();
        let bytes = serde_json::to_vec(&json).unwrap();
        assert_eq!(
            decode(Some("application/vnd.sightline.event.v1+json"), &bytes),
            Err(CodecError::VersionMismatch {
                header: 1,
                payload: 2
            })
        );
    }

    /// A v1 JSON event exactly as README showed third parties before zones: it decodes
    /// (zones empty, still version 1) and encodes back to the same fields, so a later edit of
    /// `event::v1` cannot pass unnoticed.
    #[test]
    fn a_version_1_json_event_as_published_before_zones_still_reads() {
        let text = r#"{"event_id":"0190b1d2-7c4e-7a31-9f00-2b1c3d4e5f60","schema_version":1,"edge_id":"my-edge","camera_id":"cam-1","captured_at":"2026-11-22T03:55:00.123Z","frame_seq":1,"motion_score":0.4,"detections":[{"label":"person","class_id":0,"confidence":0.8,"bbox":{"x_min":0.1,"y_min":0.2,"x_max":0.3,"y_max":0.9},"track_id":null}],"model":{"name":"my-model","version":"1"},"inference_ms":12.5,"snapshot":null,"description":null,"attributes":{}}"#;
        let event = decode(
            Some("application/vnd.sightline.event.v1+json"),
            text.as_bytes(),
        )
        .unwrap();
        assert_eq!(event.schema_version, 1);
        assert_eq!(event.detections[0].label, "person");
        assert!(event.detections[0].zones.is_empty());
        let again: serde_json::Value =
            serde_json::from_slice(&encode(&event, Encoding::Json).unwrap()).unwrap();
        assert_eq!(
            again,
            serde_json::from_str::<serde_json::Value>(text).unwrap()
        );
        // Under the v2 type, the payload's version must still match the header's.
        assert_eq!(
            decode(
                Some("application/vnd.sightline.event.v2+json"),
                text.as_bytes()
            ),
            Err(CodecError::VersionMismatch {
                header: 2,
                payload: 1
            })
        );
        // A v1 payload with zones is not v1.
        let zoned = text.replace(r#""track_id":null"#, r#""track_id":null,"zones":["a"]"#);
        assert!(matches!(
            decode(
                Some("application/vnd.sightline.event.v1+json"),
                zoned.as_bytes()
            ),
            Err(CodecError::Malformed { .. })
        ));
    }

    #[test]
    fn json_rejects_unknown_fields_and_names_them() {
        let mut json: serde_json::Value = serde_json::to_value(sample()).unwrap();
        json["colour"] = "red".into();
        let err = decode(
            Some("application/vnd.sightline.event.v1+json"),
            &serde_json::to_vec(&json).unwrap(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn json_is_readable() {
        let event = sample();
        let json = String::from_utf8(encode(&event, Encoding::Json).unwrap()).unwrap();
        assert!(json.contains("\"captured_at\":\"2026-11-18T"), "{json}");
        assert!(
            json.contains(&format!("\"event_id\":\"{}\"", event.event_id)),
            "{json}"
        );
    }

    #[test]
    fn the_head_decodes_from_the_front_of_a_payload_of_any_version() {
        let event = sample();
        let bincode = ContentType::current(Encoding::Bincode);
        let payload = encode(&event, Encoding::Bincode).unwrap();
        assert_eq!(
            decode_head(bincode, &payload).unwrap(),
            EventHead::from(&event)
        );
        // Only the front is read: a cut tail still routes, a cut head does not.
        assert_eq!(
            decode_head(bincode, &payload[..payload.len() / 2]).unwrap(),
            EventHead::from(&event)
        );
        assert!(matches!(
            decode_head(bincode, &payload[..10]),
            Err(CodecError::Malformed { .. })
        ));
        let json = encode(&event, Encoding::Json).unwrap();
        assert_eq!(
            decode_head(ContentType::current(Encoding::Json), &json).unwrap(),
            EventHead::from(&event)
        );
        // Another version routes under its own content type, and only under it.
        let mut newer = event;
        newer.schema_version = SCHEMA_VERSION + 1;
        let payload = bincode::serde::encode_to_vec(&newer, bincode_config()).unwrap();
        let its_own = ContentType {
            kind: Kind::Event,
            encoding: Encoding::Bincode,
            schema_version: SCHEMA_VERSION + 1,
        };
        assert_eq!(
            decode_head(its_own, &payload).unwrap(),
            EventHead::from(&newer)
        );
        assert!(matches!(
            decode_head(bincode, &payload),
            Err(CodecError::VersionMismatch { .. })
        ));
    }

    #[test]
    fn a_track_record_round_trips_and_routes_like_an_event() {
        let record = crate::track::tests::record();
        for encoding in [Encoding::Bincode, Encoding::Json] {
            let content_type = ContentType::current_of(Kind::Track, encoding);
            let header = content_type.to_string();
            assert_eq!(
                header,
                format!("application/vnd.sightline.track.v1+{encoding}")
            );
            assert_eq!(header.parse::<ContentType>().unwrap(), content_type);
            let payload = encode_track(&record, encoding).unwrap();
            assert_eq!(decode_track(Some(&header), &payload).unwrap(), record);
            // The head the publisher routes by: the record's id, version, edge and camera.
            let head = decode_head(content_type, &payload).unwrap();
            assert_eq!(
                head,
                EventHead {
                    event_id: record.record_id,
                    schema_version: 1,
                    edge_id: "edge-1".into(),
                    camera_id: "gate".into(),
                }
            );
            // A track is never read as an event, nor the reverse.
            assert_eq!(
                decode(Some(&header), &payload),
                Err(CodecError::WrongKind {
                    expected: Kind::Event,
                    found: Kind::Track
                })
            );
            let event_type = ContentType::current(encoding).to_string();
            let event = encode(&sample(), encoding).unwrap();
            assert_eq!(
                decode_track(Some(&event_type), &event),
                Err(CodecError::WrongKind {
                    expected: Kind::Track,
                    found: Kind::Event
                })
            );
        }
        assert_eq!(
            decode_track(Some("application/vnd.sightline.track.v9+json"), b"{}")
                .unwrap_err()
                .to_string(),
            "unsupported track schema version 9 (this build reads version 1)"
        );
        assert!(
            "application/vnd.sightline.tracks.v1+json"
                .parse::<ContentType>()
                .is_err()
        );
        // A third party's JSON names every field; an unknown one is refused.
        let mut json: serde_json::Value =
            serde_json::from_slice(&encode_track(&record, Encoding::Json).unwrap()).unwrap();
        json["colour"] = "red".into();
        let refused = decode_track(
            Some("application/vnd.sightline.track.v1+json"),
            &serde_json::to_vec(&json).unwrap(),
        )
        .unwrap_err();
        assert!(refused.to_string().contains("colour"), "{refused}");
    }

    #[test]
    fn bincode_is_compact() {
        let bin = encode(&sample(), Encoding::Bincode).unwrap();
        let json = encode(&sample(), Encoding::Json).unwrap();
        assert!(
            bin.len() * 3 < json.len(),
            "bincode {} bytes vs json {}",
            bin.len(),
            json.len()
        );
    }
}
