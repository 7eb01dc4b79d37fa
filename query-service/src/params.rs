//! Query-string parsing: strict, typed, and every mistake names the parameter.

use std::collections::HashSet;

use sightline_shared::Timestamp;
use sightline_shared::validate::is_identifier;
use thiserror::Error;

/// A parameter the caller got wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{parameter}: {message}")]
pub struct ParamError {
    pub parameter: String,
    pub message: String,
}

impl ParamError {
    fn new(parameter: &str, message: impl Into<String>) -> Self {
        Self {
            parameter: parameter.into(),
            message: message.into(),
        }
    }
}

/// The filter of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this camera.
    pub camera: Option<String>,
    /// Captured at or after (inclusive).
    pub since: Option<Timestamp>,
    /// Captured before (exclusive).
    pub until: Option<Timestamp>,
    /// Most events to return, newest first.
    pub limit: u32,
}

/// Splits a raw query string into pairs, rejecting parameters not in `allowed` and
/// parameters given twice.
pub fn pairs(raw: Option<&str>, allowed: &[&str]) -> Result<Vec<(String, String)>, ParamError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if !allowed.contains(&key.as_ref()) {
            let shown: String = key.chars().take(64).collect();
            let expected = if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            };
            return Err(ParamError::new(
                &shown,
                format!("unknown parameter (expected: {expected})"),
            ));
        }
        if !seen.insert(key.clone()) {
            return Err(ParamError::new(&key, "given more than once"));
        }
        out.push((key.into_owned(), value.into_owned()));
    }
    Ok(out)
}

/// Parses `camera`, `since`, `until` and `limit`.
pub fn event_filter(
    raw: Option<&str>,
    default_limit: u32,
    max_limit: u32,
) -> Result<EventFilter, ParamError> {
    let mut filter = EventFilter {
        camera: None,
        since: None,
        until: None,
        limit: default_limit,
    };
    for (key, value) in pairs(raw, &["camera", "since", "until", "limit"])? {
        match key.as_str() {
            "camera" => {
                if !is_identifier(&value) {
                    return Err(ParamError::new(
                        "camera",
                        "must be 1-64 characters of A-Z a-z 0-9 _ -",
                    ));
                }
                filter.camera = Some(value);
            }
            "since" => filter.since = Some(timestamp("since", &value)?),
            "until" => filter.until = Some(timestamp("until", &value)?),
            "limit" => {
                filter.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=max_limit).contains(n))
                    .ok_or_else(|| {
                        ParamError::new(
                            "limit",
                            format!("must be an integer from 1 to {max_limit}"),
                        )
                    })?;
            }
            _ => unreachable!("pairs() only yields allowed keys"),
        }
    }
    if let (Some(since), Some(until)) = (filter.since, filter.until)
        && since >= until
    {
        return Err(ParamError::new("until", "must be later than since"));
    }
    Ok(filter)
}

/// An RFC 3339 timestamp or integer epoch milliseconds, between 1970 and 2105 (the range a
/// ClickHouse `DateTime` holds).
fn timestamp(parameter: &str, value: &str) -> Result<Timestamp, ParamError> {
    let parsed = match value.parse::<i64>() {
        Ok(millis) => Some(Timestamp::from_millis(millis)),
        Err(_) => Timestamp::parse_rfc3339(value).ok(),
    };
    parsed.filter(|t| (0..=4_294_967_295_000).contains(&t.as_millis())).ok_or_else(|| {
        ParamError::new(
            parameter,
            "must be an RFC 3339 time such as 2026-11-22T03:00:00Z, or epoch milliseconds, between 1970 and 2105",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_filter() {
        let f = event_filter(
            Some("camera=gate-1&since=2026-11-22T00:00:00Z&until=1800000000000&limit=5"),
            100,
            1000,
        )
        .unwrap();
        assert_eq!(f.camera.as_deref(), Some("gate-1"));
        assert_eq!(f.since.unwrap().to_rfc3339(), "2026-11-22T00:00:00.000Z");
        assert_eq!(f.until.unwrap().as_millis(), 1_800_000_000_000);
        assert_eq!(f.limit, 5);
        assert_eq!(event_filter(None, 100, 1000).unwrap().limit, 100);
    }

    #[test]
    fn every_mistake_names_its_parameter() {
        for (query, parameter) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=ten", "limit"),
            ("limit=99999999999999999999", "limit"),
            ("camera=a%27%3B%20DROP%20TABLE%20events", "camera"),
            ("camera=", "camera"),
            ("since=yesterday", "since"),
            ("until=-5", "until"),
            (
                "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
                "until",
            ),
            ("cameras=x", "cameras"),
            ("limit=1&limit=2", "limit"),
        ] {
            let err = event_filter(Some(query), 100, 1000).unwrap_err();
            assert_eq!(err.parameter, parameter, "{query}: {err}");
        }
    }
}
