//! Wall-clock time as the contract writes it: RFC 3339, UTC, `Z`, whole seconds.

use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Seconds since the Unix epoch, now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `2026-11-27T10:15:30Z` for a Unix time (whole seconds, so no fraction is written).
pub fn rfc3339(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// Parses an RFC 3339 time with a `Z` or a numeric offset; fractions of a second are dropped.
/// `None` for anything else, including impossible dates and the space that RFC 3339 lets
/// readers accept in place of the `T` (the contract writes the `T`).
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    if !matches!(text.as_bytes().get(10), Some(b'T' | b't')) {
        return None;
    }
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_774_530), "2026-11-27T10:15:30Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(parse_rfc3339("2026-11-27T10:15:30Z"), Some(1_795_774_530));
        assert_eq!(
            parse_rfc3339("2026-11-27T11:15:30.123+01:00"),
            Some(1_795_774_530)
        );
        for bad in [
            "2026-02-30T00:00:00Z",
            "2026-11-27 10:15:30Z",
            "2026-11-27T10:15:30",
            "2026-13-01T00:00:00Z",
            "2026-11-27T10:15:30+1:00",
            "",
            "2026-11-27T10:15:30.Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        for t in [0, 1, 86_399, 4_102_444_800, 1_795_774_530] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        }
    }
}
