//! Timestamps: airlock stores Unix milliseconds and shows RFC 3339 UTC.

/// Formats Unix milliseconds as RFC 3339 UTC with millisecond precision.
pub fn rfc3339(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parses an RFC 3339 time (`2026-11-30T12:00:00Z`, `2026-11-30T14:00:00.5+02:00`) or a date
/// (`2026-11-30`, midnight UTC) into milliseconds since the epoch.
pub fn parse_rfc3339_ms(s: &str) -> Result<i64, String> {
    let bad = || {
        format!("invalid time {s:?}: expected RFC 3339, e.g. 2026-11-30T12:00:00Z or 2026-11-30")
    };
    let s = s.trim();
    let (date, rest) = s.split_at(s.len().min(10));
    let num = |x: Option<&str>| x.and_then(|x| x.parse::<i64>().ok()).ok_or_else(bad);
    let mut d = date.split('-');
    let (y, m, day) = (num(d.next())?, num(d.next())?, num(d.next())?);
    if date.len() != 10 || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return Err(bad());
    }
    let days = days_from_civil(y, m, day);
    if rest.is_empty() {
        return Ok(days * 86_400_000);
    }
    let rest = rest.strip_prefix(['T', 't', ' ']).ok_or_else(bad)?;
    let (clock, offset_ms) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else {
        let at = rest.rfind(['+', '-']).ok_or_else(bad)?;
        let (c, off) = rest.split_at(at);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let mut hm = off.get(1..).ok_or_else(bad)?.split(':');
        let (oh, om) = (num(hm.next())?, num(hm.next())?);
        (c, sign * (oh * 3_600_000 + om * 60_000))
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut t = hms.split(':');
    let (h, mi, sec) = (num(t.next())?, num(t.next())?, num(t.next())?);
    if hms.len() != 8 || h > 23 || mi > 59 || sec > 60 || !frac.chars().all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    let ms: i64 = format!("{:0<3}", frac)
        .get(..3)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    Ok(days * 86_400_000 + ((h * 60 + mi) * 60 + sec) * 1000 + ms - offset_ms)
}

// Howard Hinnant's days-from-civil algorithm, the inverse of `civil_from_days`.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a duration such as `30m`, `12h`, `7d`, `90s` into milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 90s, 30m, 12h, 7d"))?;
    let mult = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("invalid duration {s:?}: unit must be s, m, h or d")),
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0 && *v <= 3650 * 86_400_000)
        .ok_or_else(|| format!("invalid duration {s:?}: must be between 1s and 3650d"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
    }

    #[test]
    fn parses_rfc3339() {
        for ms in [0, 1_795_000_000_123, 951_782_400_000, -86_400_000] {
            assert_eq!(parse_rfc3339_ms(&rfc3339(ms)), Ok(ms));
        }
        assert_eq!(
            parse_rfc3339_ms("2026-11-18T13:06:40.123+02:00"),
            Ok(1_795_000_000_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-18"),
            Ok(1_795_000_000_123 - 11 * 3_600_000 - 6 * 60_000 - 40_123)
        );
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-11-18T25:00:00Z",
            "2026-11-18T10:00Z",
            "2026-11-18T10:00:00",
        ] {
            assert!(parse_rfc3339_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("7d"), Ok(7 * 86_400_000));
        for bad in ["", "7", "d", "-1h", "1y", "0s", "99999999999d"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
    }
}
