//! UTC timestamps with millisecond precision, the only time type on the wire.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// A UTC instant in whole milliseconds since the Unix epoch.
///
/// Human-readable encodings (JSON) carry it as an RFC 3339 string such as
/// `2026-11-22T03:55:00.123Z`; binary encodings (bincode) carry the integer. Input with a finer
/// precision than a millisecond is truncated towards the past, so the same instant always maps
/// to the same value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// Builds a timestamp from milliseconds since the Unix epoch.
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// Whole seconds since the Unix epoch (rounded towards the past).
    pub const fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// Converts from a `time` value, truncating below the millisecond.
    pub fn from_datetime(dt: OffsetDateTime) -> Self {
        let nanos = dt.unix_timestamp_nanos();
        Self(nanos.div_euclid(1_000_000) as i64)
    }

    /// Converts to a `time` value in UTC; `None` if out of `time`'s range.
    pub fn to_datetime(self) -> Option<OffsetDateTime> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000).ok()
    }

    /// Parses an RFC 3339 timestamp (any offset; stored in UTC).
    pub fn parse_rfc3339(s: &str) -> Result<Self, time::error::Parse> {
        OffsetDateTime::parse(s, &Rfc3339).map(Self::from_datetime)
    }

    /// Formats as RFC 3339 in UTC with exactly three fractional digits.
    pub fn to_rfc3339(self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_datetime() {
            Some(dt) => write!(
                f,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                dt.year(),
                u8::from(dt.month()),
                dt.day(),
                dt.hour(),
                dt.minute(),
                dt.second(),
                dt.millisecond()
            ),
            None => write!(f, "{}ms", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            deserializer.deserialize_any(HumanVisitor)
        } else {
            i64::deserialize(deserializer).map(Self)
        }
    }
}

/// Accepts an RFC 3339 string or an integer number of milliseconds since the epoch.
struct HumanVisitor;

impl de::Visitor<'_> for HumanVisitor {
    type Value = Timestamp;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "an RFC 3339 timestamp such as \"2026-11-22T03:55:00.123Z\" or epoch milliseconds",
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
        Timestamp::parse_rfc3339(v)
            .map_err(|e| E::custom(format_args!("invalid timestamp {v:?}: {e}")))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timestamp, E> {
        Ok(Timestamp(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timestamp, E> {
        i64::try_from(v)
            .map(Timestamp)
            .map_err(|_| E::custom("timestamp milliseconds out of range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_milliseconds_in_utc() {
        let ts = Timestamp::parse_rfc3339("2026-11-22T05:55:00.123456+02:00").unwrap();
        assert_eq!(ts.to_rfc3339(), "2026-11-22T03:55:00.123Z");
        assert_eq!(Timestamp::parse_rfc3339(&ts.to_rfc3339()).unwrap(), ts);
    }

    #[test]
    fn truncates_towards_the_past_before_the_epoch() {
        let ts = Timestamp::parse_rfc3339("1969-12-31T23:59:59.9999Z").unwrap();
        assert_eq!(ts.as_millis(), -1);
        assert_eq!(ts.as_secs(), -1);
    }

    #[test]
    fn json_accepts_strings_and_millis() {
        let a: Timestamp = serde_json::from_str("\"2026-01-01T00:00:00Z\"").unwrap();
        let b: Timestamp = serde_json::from_str("1767225600000").unwrap();
        assert_eq!(a, b);
        let err = serde_json::from_str::<Timestamp>("\"yesterday\"").unwrap_err();
        assert!(err.to_string().contains("invalid timestamp"), "{err}");
    }
}
