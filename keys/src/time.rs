//! Unix seconds shown as UTC calendar time, for error messages people read.
//!
//! Only formatting: no clock is read here (callers pass `now_unix`), and no time zone other
//! than UTC is known.

use std::fmt;

/// Unix seconds that print as `2026-11-26 14:21:47 UTC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc(pub u64);

impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0 / 86_400;
        let seconds = self.0 % 86_400;
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60
        )
    }
}

/// Howard Hinnant's `civil_from_days`, for days since 1970-01-01 (never negative here).
/// Every intermediate stays far below `u64::MAX` even for `u64::MAX` seconds.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(Utc(0).to_string(), "1970-01-01 00:00:00 UTC");
        assert_eq!(Utc(951_782_400).to_string(), "2000-02-29 00:00:00 UTC");
        assert_eq!(Utc(1_700_000_000).to_string(), "2023-11-14 22:13:20 UTC");
        assert_eq!(Utc(4_102_444_799).to_string(), "2099-12-31 23:59:59 UTC");
        // No overflow at the far end.
        assert!(Utc(u64::MAX).to_string().ends_with(" UTC"));
    }
}
