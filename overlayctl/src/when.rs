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

/// `2026-11-26 14:21:47 UTC`.
pub fn utc(unix: u64) -> String {
    let (year, month, day) = date_from_days(unix / 86_400);
    let seconds = unix % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// Year, month (1–12) and day (1–31) of a count of days since 1970-01-01, by the
/// proleptic Gregorian calendar counted in 400-year cycles from 0000-03-01 (so the leap
/// day falls at the end of each counted year).
fn date_from_days(days: u64) -> (u64, u64, u64) {
    const DAYS_PER_400_YEARS: u64 = 146_097;
    // Days from 0000-03-01 to 1970-01-01.
    const EPOCH_OFFSET: u64 = 719_468;
    let shifted = days + EPOCH_OFFSET;
    let cycle = shifted / DAYS_PER_400_YEARS;
    let day_of_cycle = shifted % DAYS_PER_400_YEARS;
    // Years into the cycle, minding the 4-, 100- and 400-year leap rules.
    let year_of_cycle = (day_of_cycle - day_of_cycle / 1460 + day_of_cycle / 36_524
        - day_of_cycle / (DAYS_PER_400_YEARS - 1))
        / 365;
    let day_of_year =
        day_of_cycle - (365 * year_of_cycle + year_of_cycle / 4 - year_of_cycle / 100);
    // Months from March, by the 153-days-per-5-months pattern.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = (month_from_march + 2) % 12 + 1;
    let year = cycle * 400 + year_of_cycle + u64::from(month <= 2);
    (year, month, day)
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
