//! `GET /v1/events/export`: NDJSON or CSV, streamed row by row from ClickHouse, so memory
//! stays flat however many events match.

use std::fmt::Write as _;

use bytes::Bytes;
use clickhouse::query::RowCursor;
use futures::Stream;
use prometheus_client::metrics::counter::Counter;
use sightline_shared::DetectionEvent;
use sightline_store::EventRow;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::model::Format;

/// Bytes gathered before a chunk goes out.
const CHUNK: usize = 64 * 1024;

/// The CSV header line.
pub const CSV_HEADER: &str = "event_id,captured_at,edge_id,camera_id,frame_seq,motion_score,labels,max_confidence,model_name,model_version,inference_ms,snapshot,description,detections,attributes\n";

/// The body of an export: `first` (already fetched, so a failing query became an error
/// status instead of a cut-off body) and then the rest of `cursor`. A failure mid-stream
/// ends the body early and is logged; the client sees a truncated transfer. So does
/// reaching `deadline` (ClickHouse ends an export at its own time limit before that, so
/// this stops one that stopped answering). `permit` (a place among the exports allowed at
/// once) is held until the body ends or is dropped.
pub fn body(
    format: Format,
    first: Option<EventRow>,
    cursor: RowCursor<EventRow>,
    returned: Counter,
    deadline: Instant,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let head = match format {
        Format::Csv => CSV_HEADER.to_owned(),
        Format::Ndjson => String::new(),
    };
    futures::stream::unfold(
        (Some(cursor), first, head),
        move |(cursor, mut pending, mut buf)| {
            let returned = returned.clone();
            // Held as long as the stream is.
            let _permit = &permit;
            async move {
                let mut cursor = cursor?;
                loop {
                    let row = match pending.take() {
                        Some(row) => Some(row),
                        None => match tokio::time::timeout_at(deadline, cursor.next()).await {
                            Ok(Ok(row)) => row,
                            Err(_) => {
                                tracing::error!(
                                    "export failed mid-stream: past its deadline, ClickHouse \
                                     stopped answering"
                                );
                                return Some((
                                    Err(std::io::Error::from(std::io::ErrorKind::TimedOut)),
                                    (None, None, String::new()),
                                ));
                            }
                            Ok(Err(error)) => {
                                tracing::error!(%error, "export failed mid-stream");
                                return Some((
                                    Err(std::io::Error::other(error)),
                                    (None, None, String::new()),
                                ));
                            }
                        },
                    };
                    match row {
                        Some(row) => {
                            write_event(format, &row.into_event(), &mut buf);
                            returned.inc();
                            if buf.len() >= CHUNK {
                                let chunk = Bytes::from(std::mem::take(&mut buf));
                                return Some((Ok(chunk), (Some(cursor), None, buf)));
                            }
                        }
                        None if buf.is_empty() => return None,
                        None => {
                            let chunk = Bytes::from(std::mem::take(&mut buf));
                            return Some((Ok(chunk), (None, None, buf)));
                        }
                    }
                }
            }
        },
    )
}

/// Appends one event as a line of `format`.
pub fn write_event(format: Format, event: &DetectionEvent, out: &mut String) {
    match format {
        Format::Ndjson => {
            // Serializing our own types to a String cannot fail.
            out.push_str(&serde_json::to_string(event).unwrap_or_default());
            out.push('\n');
        }
        Format::Csv => {
            let labels: Vec<&str> = event.detections.iter().map(|d| d.label.as_str()).collect();
            let max_confidence = event
                .detections
                .iter()
                .map(|d| d.confidence)
                .fold(None, |m: Option<f32>, c| Some(m.map_or(c, |m| m.max(c))));
            let fields = [
                event.event_id.to_string(),
                event.captured_at.to_rfc3339(),
                event.edge_id.clone(),
                event.camera_id.clone(),
                event.frame_seq.to_string(),
                event.motion_score.to_string(),
                labels.join(";"),
                max_confidence.map(|c| c.to_string()).unwrap_or_default(),
                event.model.name.clone(),
                event.model.version.clone(),
                event.inference_ms.to_string(),
                event.snapshot.clone().unwrap_or_default(),
                event.description.clone().unwrap_or_default(),
                serde_json::to_string(&event.detections).unwrap_or_default(),
                serde_json::to_string(&event.attributes).unwrap_or_default(),
            ];
            for (i, field) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                csv_field(field, out);
            }
            out.push('\n');
        }
    }
}

/// RFC 4180: quote a field holding a comma, quote, CR or LF, doubling its quotes.
fn csv_field(field: &str, out: &mut String) {
    if field.contains([',', '"', '\n', '\r']) {
        out.push('"');
        for c in field.chars() {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        }
        out.push('"');
    } else {
        let _ = write!(out, "{field}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let mut out = String::new();
        csv_field("plain", &mut out);
        out.push('|');
        csv_field("a,b", &mut out);
        out.push('|');
        csv_field("say \"hi\"\nbye", &mut out);
        assert_eq!(out, "plain|\"a,b\"|\"say \"\"hi\"\"\nbye\"");
    }
}
