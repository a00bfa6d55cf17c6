//! UTC timestamps: the one format the product sends
//! (`YYYY-MM-DDTHH:MM:SS.ffffffZ`), the ISO-8601 variants that field devices
//! put into forms (`2015-04-17T16:04:54.950-04`, `+05:30`, `+0530`, `Z`, no
//! fraction, no offset, date only) and HTTP dates (`Retry-After`). "Now" is
//! not read here: it comes from the [`Clock`](crate::clock::Clock).
//!
//! Calendar arithmetic is the proleptic Gregorian "days from civil" algorithm;
//! no time zones other than the fixed offsets written in the text. This stays
//! hand-written rather than on `jiff`, `time` or `httpdate` on purpose: the
//! device formats accepted here (two-digit offsets, a space for `T`, fractions
//! beyond microseconds, lowercase `z`) are CommCare's and not what those
//! crates' parsers accept as written, so a crate would add a dependency and
//! keep most of this code; `httpdate` alone would replace only the HTTP-date
//! reader and refuses dates before 1970, which `Retry-After` then reads as
//! garbage instead of "now". Every function here is total: no input panics.

const MICROS_PER_SECOND: i64 = 1_000_000;
const SECONDS_PER_DAY: i64 = 86_400;
const MICROS_PER_DAY: i64 = SECONDS_PER_DAY * MICROS_PER_SECOND;

/// Formats Unix microseconds as `YYYY-MM-DDTHH:MM:SS.ffffffZ`, always with six
/// fraction digits.
pub fn format_utc(micros: i64) -> String {
    let days_since_epoch = micros.div_euclid(MICROS_PER_DAY);
    let micros_of_day = micros.rem_euclid(MICROS_PER_DAY);
    let (year, month, day) = civil_from_days(days_since_epoch);
    let seconds_of_day = micros_of_day / MICROS_PER_SECOND;
    let fraction_micros = micros_of_day % MICROS_PER_SECOND;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction_micros:06}Z",
        seconds_of_day / 3600,
        seconds_of_day / 60 % 60,
        seconds_of_day % 60,
    )
}

/// The value to store for a time a device sent: the instant formatted in UTC
/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, as CommCare HQ stores it (`string_to_utc_datetime`
/// then `json_format_datetime`: a time without an offset is taken as UTC, a date
/// as its midnight UTC). Anything unparseable is kept as sent (trimmed).
pub fn normalize_device_time(raw: &str) -> String {
    match parse_timestamp(raw) {
        Some(micros) => format_utc(micros),
        None => raw.trim().to_owned(),
    }
}

/// Parses an HTTP date (RFC 9110 section 5.6.7) into Unix microseconds: the
/// preferred `Sun, 06 Nov 1994 08:49:37 GMT` and the obsolete forms that
/// recipients must still accept, `Sunday, 06-Nov-94 08:49:37 GMT` and
/// `Sun Nov  6 08:49:37 1994`. The weekday is not checked.
pub fn parse_http_date(raw: &str) -> Option<i64> {
    let tokens: Vec<&str> = raw.split_whitespace().collect();
    let (year, month, day, clock) = match tokens.as_slice() {
        [weekday, day, month, year, clock, "GMT"] if weekday.ends_with(',') => (
            parse_decimal(year, 4, 4)?,
            month_number(month)?,
            parse_decimal(day, 2, 2)?,
            *clock,
        ),
        [weekday, date, clock, "GMT"] if weekday.ends_with(',') => {
            let mut parts = date.split('-');
            let day = parse_decimal(parts.next()?, 2, 2)?;
            let month = month_number(parts.next()?)?;
            let two_digit_year = parse_decimal(parts.next()?, 2, 2)?;
            if parts.next().is_some() {
                return None;
            }
            // RFC 9110: a two-digit year more than 50 years ahead is in the past
            // century; with no clock at hand here, 70 is the usual pivot.
            let year = if two_digit_year < 70 {
                2000 + two_digit_year
            } else {
                1900 + two_digit_year
            };
            (year, month, day, *clock)
        }
        [_weekday, month, day, clock, year] => (
            parse_decimal(year, 4, 4)?,
            month_number(month)?,
            parse_decimal(day, 1, 2)?,
            *clock,
        ),
        _ => return None,
    };
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let mut clock_parts = clock.split(':');
    let hour = parse_decimal(clock_parts.next()?, 2, 2)?;
    let minute = parse_decimal(clock_parts.next()?, 2, 2)?;
    let second = parse_decimal(clock_parts.next()?, 2, 2)?;
    if clock_parts.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * SECONDS_PER_DAY
        + hour * 3600
        + minute * 60
        + second.min(59);
    Some(seconds * MICROS_PER_SECOND)
}

/// A run of `min_digits..=max_digits` ASCII digits as a number.
fn parse_decimal(text: &str, min_digits: usize, max_digits: usize) -> Option<i64> {
    if !(min_digits..=max_digits).contains(&text.len())
        || !text.bytes().all(|byte| byte.is_ascii_digit())
    {
        return None;
    }
    text.parse().ok()
}

/// `Jan` → 1 … `Dec` → 12, ignoring ASCII case.
fn month_number(name: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let position = MONTHS
        .iter()
        .position(|month| month.eq_ignore_ascii_case(name))?;
    i64::try_from(position).ok().map(|position| position + 1)
}

/// Parses an ISO-8601 timestamp as devices send it and returns Unix microseconds
/// (UTC). Accepted: a date (`2015-04-17`, taken as midnight UTC), or a date, `T` (or
/// a space), `HH:MM`, optional `:SS`, optional fraction (digits beyond microseconds
/// are dropped) and an optional offset `Z`, `±HH`, `±HHMM` or `±HH:MM`. Without an
/// offset the time is taken as UTC. Surrounding whitespace is ignored.
pub fn parse_timestamp(raw: &str) -> Option<i64> {
    let mut cursor = Cursor {
        bytes: raw.trim().as_bytes(),
        position: 0,
    };

    let year = cursor.digits(4)?;
    cursor.expect(b'-')?;
    let month = cursor.digits(2)?;
    cursor.expect(b'-')?;
    let day = cursor.digits(2)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let days_since_epoch = days_from_civil(year, month, day);
    if cursor.at_end() {
        return Some(days_since_epoch * MICROS_PER_DAY);
    }

    match cursor.next()? {
        b'T' | b't' | b' ' => {}
        _ => return None,
    }
    let hour = cursor.digits(2)?;
    cursor.expect(b':')?;
    let minute = cursor.digits(2)?;
    let mut second = 0;
    let mut fraction_micros = 0;
    if cursor.peek() == Some(b':') {
        cursor.position += 1;
        second = cursor.digits(2)?;
        if matches!(cursor.peek(), Some(b'.' | b',')) {
            cursor.position += 1;
            fraction_micros = cursor.fraction_as_micros()?;
        }
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }

    let offset_seconds = match cursor.peek() {
        None => None,
        Some(b'Z' | b'z') => {
            cursor.position += 1;
            Some(0)
        }
        Some(sign @ (b'+' | b'-')) => {
            cursor.position += 1;
            let offset_hours = cursor.digits(2)?;
            let offset_minutes = match cursor.peek() {
                None => 0,
                Some(b':') => {
                    cursor.position += 1;
                    cursor.digits(2)?
                }
                Some(_) => cursor.digits(2)?,
            };
            if offset_hours > 23 || offset_minutes > 59 {
                return None;
            }
            let magnitude = offset_hours * 3600 + offset_minutes * 60;
            Some(if sign == b'-' { -magnitude } else { magnitude })
        }
        Some(_) => return None,
    };
    if !cursor.at_end() {
        return None;
    }

    let local_seconds = days_since_epoch * SECONDS_PER_DAY + hour * 3600 + minute * 60 + second;
    let utc_seconds = local_seconds - offset_seconds.unwrap_or(0);
    Some(utc_seconds * MICROS_PER_SECOND + fraction_micros)
}

/// A read position in the ASCII text of a timestamp.
struct Cursor<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Cursor<'_> {
    fn at_end(&self) -> bool {
        self.position >= self.bytes.len()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.position).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.position += 1;
        Some(byte)
    }

    fn expect(&mut self, wanted: u8) -> Option<()> {
        (self.next()? == wanted).then_some(())
    }

    /// Exactly `count` ASCII digits as a number.
    fn digits(&mut self, count: usize) -> Option<i64> {
        let mut value = 0;
        for _ in 0..count {
            let byte = self.next()?;
            if !byte.is_ascii_digit() {
                return None;
            }
            value = value * 10 + i64::from(byte - b'0');
        }
        Some(value)
    }

    /// One or more digits after the decimal point, as microseconds (truncated).
    fn fraction_as_micros(&mut self) -> Option<i64> {
        let mut micros = 0;
        let mut n_digits = 0;
        while let Some(byte) = self.peek().filter(u8::is_ascii_digit) {
            self.position += 1;
            if n_digits < 6 {
                micros = micros * 10 + i64::from(byte - b'0');
            }
            n_digits += 1;
        }
        if n_digits == 0 {
            return None;
        }
        for _ in n_digits..6 {
            micros *= 10;
        }
        Some(micros)
    }
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1..=12, day 1..=31).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date (year, month, day) of a count of days since 1970-01-01.
fn civil_from_days(days_since_epoch: i64) -> (i64, i64, i64) {
    let shifted = days_since_epoch + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
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
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_form_time_with_short_offset_becomes_utc() {
        assert_eq!(
            normalize_device_time("2015-04-17T16:04:54.950-04"),
            "2015-04-17T20:04:54.950000Z"
        );
    }

    #[test]
    fn every_offset_spelling_gives_the_same_instant() {
        let expected = parse_timestamp("2012-05-25T10:01:38.109Z").unwrap();
        for spelling in [
            "2012-05-25T15:31:38.109+05:30",
            "2012-05-25T15:31:38.109+0530",
            "2012-05-25T10:31:38.109+00:30",
            "2012-05-25T05:01:38.109-05",
            "  2012-05-25T10:01:38.109z \n",
        ] {
            assert_eq!(parse_timestamp(spelling), Some(expected), "{spelling}");
        }
    }

    #[test]
    fn format_utc_writes_six_fraction_digits() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_utc(1), "1970-01-01T00:00:00.000001Z");
        assert_eq!(format_utc(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(
            format_utc(951_782_400_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn parse_known_instants() {
        assert_eq!(parse_timestamp("1970-01-01"), Some(0));
        assert_eq!(parse_timestamp("1970-01-01T00:00:01"), Some(1_000_000));
        assert_eq!(
            parse_timestamp("2000-02-29T00:00"),
            Some(951_782_400_000_000)
        );
        assert_eq!(
            parse_timestamp("2015-04-17 20:04:54.950Z"),
            Some(1_429_301_094_950_000)
        );
        assert_eq!(
            parse_timestamp("2015-04-17T20:04:54.9501239Z"),
            Some(1_429_301_094_950_123),
            "digits beyond microseconds are dropped"
        );
    }

    #[test]
    fn rejects_what_is_not_a_timestamp() {
        for bad in [
            "",
            "yesterday",
            "2015-4-17",
            "2015-02-29",
            "2015-13-01",
            "2015-04-31",
            "2015-04-17T24:00:00",
            "2015-04-17T16:60",
            "2015-04-17T16:04:54.",
            "2015-04-17T16:04:54.950-4",
            "2015-04-17T16:04:54.950+05:3",
            "2015-04-17T16:04:54.950Zjunk",
            "2015-04-17T",
            "２０15-04-17",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn values_without_offset_are_utc_and_unparseable_ones_kept_as_sent() {
        assert_eq!(
            normalize_device_time(" 2015-04-17 "),
            "2015-04-17T00:00:00.000000Z"
        );
        assert_eq!(
            normalize_device_time("2011-12-06T13:42:50"),
            "2011-12-06T13:42:50.000000Z"
        );
        assert_eq!(
            normalize_device_time("2010-06-29T13:42:50.137"),
            "2010-06-29T13:42:50.137000Z"
        );
        assert_eq!(normalize_device_time(" not a date\t"), "not a date");
        assert_eq!(
            normalize_device_time("2012-05-31T07:06:31.379Z"),
            "2012-05-31T07:06:31.379000Z"
        );
    }

    #[test]
    fn civil_round_trip_over_many_centuries() {
        for days_since_epoch in (-800_000..800_000).step_by(7) {
            let (year, month, day) = civil_from_days(days_since_epoch);
            assert!((1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month));
            assert_eq!(days_from_civil(year, month, day), days_since_epoch);
        }
    }

    #[test]
    fn format_then_parse_round_trips() {
        for micros in [
            0,
            1,
            -1,
            1_429_301_094_950_000,
            253_402_300_799_999_999, // 9999-12-31T23:59:59.999999Z
            -62_135_596_800_000_000, // 0001-01-01T00:00:00Z
        ] {
            assert_eq!(
                parse_timestamp(&format_utc(micros)),
                Some(micros),
                "{micros}"
            );
        }
    }

    #[test]
    fn http_dates_in_all_three_forms() {
        let expected = parse_timestamp("1994-11-06T08:49:37Z");
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), expected);
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), expected);
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), expected);
        assert_eq!(
            parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT"),
            parse_timestamp("2015-10-21T07:28:00Z")
        );
        for bad in [
            "",
            "120",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 8:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 06-Nov-1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad:?}");
        }
    }
}
