//! The cloud's clock, for edges to measure their own against: ingest answers a NATS request on
//! [`TIME_SUBJECT`] with a [`TimeReply`] (a JetStream publish ack carries no time). The edge
//! notes its clock when it asks and when the answer comes, and takes the server's time as
//! the middle of that round trip (as NTP does, with one sample): [`offset_ms`].

use serde::{Deserialize, Serialize};

/// Ingest answers requests on this subject with its clock (core NATS, a queue group: one
/// replica answers).
pub const TIME_SUBJECT: &str = "sightline.time";

/// Answers longer in coming than this say too little about the offset to be used.
pub const MAX_ROUND_TRIP_MS: i64 = 2_000;

/// Ingest's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeReply {
    /// The cloud's clock when it answered, in ms since the epoch.
    pub now_ms: i64,
}

/// The edge clock minus the cloud's, in milliseconds, from one exchange: the edge's clock
/// when it `asked` and when the answer was `answered`, and the cloud's time in the answer.
/// `None` when the round trip took longer than [`MAX_ROUND_TRIP_MS`] (or went backwards).
pub fn offset_ms(asked: i64, answered: i64, cloud: i64) -> Option<i64> {
    let round_trip = answered.checked_sub(asked)?;
    if !(0..=MAX_ROUND_TRIP_MS).contains(&round_trip) {
        return None;
    }
    Some(asked + round_trip / 2 - cloud)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_taken_at_the_middle_of_the_round_trip() {
        // Edge 90 s ahead, a 40 ms round trip: the cloud answered at the midpoint.
        let cloud = 1_795_000_000_000;
        let asked = cloud + 90_000 - 20;
        assert_eq!(offset_ms(asked, asked + 40, cloud), Some(90_000));
        // Behind.
        assert_eq!(offset_ms(cloud - 5_020, cloud - 4_980, cloud), Some(-5_000));
        // A slow answer or a clock that went backwards says nothing.
        assert_eq!(offset_ms(0, MAX_ROUND_TRIP_MS + 1, 0), None);
        assert_eq!(offset_ms(10, 5, 0), None);
    }
}
