//! Unix seconds shown as UTC calendar time and spans shown as `1h 30m`, for people.
//!
//! Pure: the current time comes in as `now_unix`; [`now_unix`] is the one clock read, by
//! the command handlers.

/// Seconds since the Unix epoch by the system clock (0 if the clock is before 1970).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `2026-11-26 14:21:47 UTC` (the keys crate's formatter).
pub fn utc(unix: u64) -> String {
    keys::Utc(unix).to_string()
}

/// A span as `45s` (under 2 minutes) or in whole minutes as `10m`, `1h`, `1h 30m`, `2d`,
/// `1d 2h 5m`.
pub fn span(seconds: u64) -> String {
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = (seconds + 30) / 60;
    let parts = [
        (minutes / 1440, "d"),
        (minutes % 1440 / 60, "h"),
        (minutes % 60, "m"),
    ];
    parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `12s ago`, `5m ago`, `2d 3h ago` (`just now` for a time not before `now_unix`).
pub fn ago(at_unix: u64, now_unix: u64) -> String {
    match now_unix.checked_sub(at_unix) {
        None | Some(0) => "just now".to_owned(),
        Some(n) => format!("{} ago", span(n)),
    }
}

/// `in 89 days`, `in 1 day`, `in 5h 10m` (under a day) or `expired`.
pub fn until(expires_unix: u64, now_unix: u64) -> String {
    match expires_unix.checked_sub(now_unix) {
        None | Some(0) => "expired".to_owned(),
        Some(left) if left < 86_400 => format!("in {}", span(left)),
        Some(left) if left < 2 * 86_400 => "in 1 day".to_owned(),
        Some(left) => format!("in {} days", left / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(951_868_800), "2000-03-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(1_767_225_599), "2025-12-31 23:59:59 UTC");
        assert_eq!(utc(4_102_444_800), "2100-01-01 00:00:00 UTC");
        assert_eq!(utc(4_107_456_000), "2100-02-28 00:00:00 UTC");
        assert_eq!(utc(4_107_542_400), "2100-03-01 00:00:00 UTC");
        assert!(utc(u64::MAX).ends_with(" UTC"));
    }

    #[test]
    fn spans() {
        assert_eq!(span(0), "0s");
        assert_eq!(span(90), "90s");
        assert_eq!(span(150), "3m");
        assert_eq!(span(600), "10m");
        assert_eq!(span(3599), "1h");
        assert_eq!(span(3600), "1h");
        assert_eq!(span(5400), "1h 30m");
        assert_eq!(span(172_800), "2d");
        assert_eq!(span(86_400 + 7200 + 300), "1d 2h 5m");
    }

    #[test]
    fn expiry() {
        let now = 1_700_000_000;
        assert_eq!(until(now - 1, now), "expired");
        assert_eq!(until(now, now), "expired");
        assert_eq!(until(now + 3600, now), "in 1h");
        assert_eq!(until(now + 86_400, now), "in 1 day");
        assert_eq!(until(now + 89 * 86_400 + 5, now), "in 89 days");
    }
}
