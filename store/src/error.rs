//! What a ClickHouse error means, decided once for every caller: the writer (retry or
//! dead-letter), the migrations (retry or stop) and the query service (503, 422 or 400).

use clickhouse::error::Error;

/// The kinds of ClickHouse failure the services act on differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server could not be reached, or did not answer in time: worth retrying later.
    Unavailable,
    /// The data is wrong: the same rows can never be stored (`code` 0: our own rows failed
    /// to serialize before they were sent). See [`BAD_DATA_CODES`].
    BadData { code: u32 },
    /// A query ran past the time or memory limits it was given.
    /// See [`OVER_LIMIT_CODES`].
    OverLimit { code: u32 },
    /// The answer had more rows than `max_result_rows` allows.
    /// See [`RESULT_TOO_LARGE_CODES`].
    ResultTooLarge { code: u32 },
    /// The server refused a value the caller gave, such as an unknown time zone.
    /// See [`BAD_ARGUMENT_CODES`].
    BadArgument { code: u32 },
    /// A table, column or database is missing: the schema is not what this build expects
    /// (a migration not applied yet, or a table changed by hand). See [`SCHEMA_DRIFT_CODES`].
    SchemaDrift { code: u32 },
    /// Anything else the server said (too many parts, a replica busy, ...), with its code
    /// when it gave one.
    Other { code: Option<u32> },
}

/// Codes that mean "this data is wrong" rather than "try again later": retrying the same
/// rows can never succeed, so a writer isolates and dead-letters them.
/// (6 CANNOT_PARSE_TEXT, 26 CANNOT_PARSE_QUOTED_STRING, 27 CANNOT_PARSE_INPUT_ASSERTION_FAILED,
/// 33 CANNOT_READ_ALL_DATA, 38 CANNOT_PARSE_DATE, 41 CANNOT_PARSE_DATETIME, 53 TYPE_MISMATCH,
/// 69 ARGUMENT_OUT_OF_BOUND, 70 CANNOT_CONVERT_TYPE, 72 CANNOT_PARSE_NUMBER,
/// 117 INCORRECT_DATA, 131 TOO_LARGE_STRING_SIZE, 190 SIZES_OF_ARRAYS_DOESNT_MATCH.)
pub const BAD_DATA_CODES: &[u32] = &[6, 26, 27, 33, 38, 41, 53, 69, 70, 72, 117, 131, 190];

/// A query stopped by its time or memory limits: TIMEOUT_EXCEEDED, TOO_SLOW,
/// MEMORY_LIMIT_EXCEEDED.
pub const OVER_LIMIT_CODES: &[u32] = &[159, 160, 241];

/// An answer larger than `max_result_rows` with `result_overflow_mode = 'throw'`:
/// TOO_MANY_ROWS (158) on 18.16, TOO_MANY_ROWS_OR_BYTES (396) on modern servers (both
/// tested). Nobody sets `max_rows_to_read`, the other source of 158.
pub const RESULT_TOO_LARGE_CODES: &[u32] = &[158, 396];

/// A value the caller gave was refused. An unknown time zone is 1000 (POCO_EXCEPTION,
/// Poco's exception let through) on 18.16 and 36 (BAD_ARGUMENTS, "Cannot load time zone")
/// on modern servers (tested on 26.9). Both codes are broad: they mean a bad argument only
/// in a query whose one value from the caller is that argument.
pub const BAD_ARGUMENT_CODES: &[u32] = &[1000, 36];

/// The schema is not what this build expects: UNKNOWN_TABLE (60), NO_SUCH_COLUMN_IN_TABLE
/// (16), UNKNOWN_IDENTIFIER (47), UNKNOWN_DATABASE (81).
pub const SCHEMA_DRIFT_CODES: &[u32] = &[60, 16, 47, 81];

/// Sorts a client error into the kinds above.
pub fn classify(error: &Error) -> ErrorKind {
    match error {
        Error::Network(_) | Error::TimedOut => ErrorKind::Unavailable,
        Error::BadResponse(text) => match server_code(text) {
            Some(code) if BAD_DATA_CODES.contains(&code) => ErrorKind::BadData { code },
            Some(code) if OVER_LIMIT_CODES.contains(&code) => ErrorKind::OverLimit { code },
            Some(code) if RESULT_TOO_LARGE_CODES.contains(&code) => {
                ErrorKind::ResultTooLarge { code }
            }
            Some(code) if BAD_ARGUMENT_CODES.contains(&code) => ErrorKind::BadArgument { code },
            Some(code) if SCHEMA_DRIFT_CODES.contains(&code) => ErrorKind::SchemaDrift { code },
            code => ErrorKind::Other { code },
        },
        // Our own rows failed to serialize: sending them again cannot help.
        Error::Custom(_) | Error::DataFormat(_) | Error::SequenceMustHaveLength => {
            ErrorKind::BadData { code: 0 }
        }
        _ => ErrorKind::Other { code: None },
    }
}

/// Whether the error is the network's (unreachable, timed out): worth retrying.
pub fn is_unavailable(error: &Error) -> bool {
    classify(error) == ErrorKind::Unavailable
}

/// Extracts `N` from a ClickHouse error text such as `Code: 117. DB::Exception: ...`.
pub fn server_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + "Code: ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(text: &str) -> Error {
        Error::BadResponse(text.into())
    }

    #[test]
    fn reads_server_codes() {
        assert_eq!(
            server_code("Code: 117, e.displayText() = DB::Exception: bad"),
            Some(117)
        );
        assert_eq!(
            server_code("bad response: Code: 53. DB::Exception: Type mismatch"),
            Some(53)
        );
        assert_eq!(server_code("connection refused"), None);
    }

    #[test]
    fn classifies_each_kind() {
        assert_eq!(
            classify(&server("Code: 117. DB::Exception: x")),
            ErrorKind::BadData { code: 117 }
        );
        assert_eq!(
            classify(&server("Code: 159. Timeout exceeded")),
            ErrorKind::OverLimit { code: 159 }
        );
        assert_eq!(
            classify(&server("Code: 36. Cannot load time zone Mars/Base")),
            ErrorKind::BadArgument { code: 36 }
        );
        assert_eq!(
            classify(&server("Code: 60. Table sightline.events doesn't exist")),
            ErrorKind::SchemaDrift { code: 60 }
        );
        assert_eq!(
            classify(&server("Code: 252. Too many parts")),
            ErrorKind::Other { code: Some(252) }
        );
        assert_eq!(
            classify(&server("no code")),
            ErrorKind::Other { code: None }
        );
        assert_eq!(classify(&Error::TimedOut), ErrorKind::Unavailable);
        assert!(is_unavailable(&Error::TimedOut));
        assert_eq!(
            classify(&Error::Custom("row".into())),
            ErrorKind::BadData { code: 0 }
        );
    }

    #[test]
    fn the_code_lists_do_not_overlap() {
        let lists = [
            BAD_DATA_CODES,
            OVER_LIMIT_CODES,
            BAD_ARGUMENT_CODES,
            SCHEMA_DRIFT_CODES,
        ];
        for (i, a) in lists.iter().enumerate() {
            for b in &lists[i + 1..] {
                assert!(a.iter().all(|c| !b.contains(c)), "{a:?} and {b:?} overlap");
            }
        }
    }
}
