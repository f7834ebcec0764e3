//! A time trigger's schedule: the cron forms Fission's timer accepts (robfig/cron
//! with optional seconds and descriptors: `*/5 * * * *`, `*/10 * * * * *`,
//! `@hourly`, `@every 1h30m`, a `CRON_TZ=Europe/Paris` prefix), in a time zone,
//! and the schedule math: the next tick after an instant, and the latest tick
//! at or before one. Pure: no clock, no I/O.

use std::str::FromStr;

use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

/// Why a cron expression or time zone was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("cron {cron:?} is not valid: {why}")]
    Cron { cron: String, why: String },
    #[error("timezone {0:?} is not an IANA time zone name (such as `Europe/Paris` or `UTC`)")]
    TimeZone(String),
}

/// When a trigger fires.
#[derive(Debug, Clone)]
pub struct Schedule {
    kind: Kind,
    tz: TimeZone,
}

#[derive(Debug, Clone)]
enum Kind {
    Cron(Box<Cron>),
    /// `@every D`: at every multiple of `D` seconds since the Unix epoch, so
    /// the ticks stay the same across restarts and updates.
    Every(i64),
}

impl Schedule {
    /// Parses `cron` in `timezone` (UTC when absent; a `CRON_TZ=`/`TZ=` prefix
    /// of the cron gives it too, as robfig/cron reads it).
    pub fn parse(cron: &str, timezone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let bad = |why: &str| ScheduleError::Cron {
            cron: cron.to_string(),
            why: why.to_string(),
        };
        // What a cron of the wrong shape is told.
        let forms = |why: &str| {
            bad(&format!(
                "{why}; use 5 fields (`*/5 * * * *`), 6 with seconds first (`*/10 * * * * *`), \
                 a descriptor (`@hourly`, `@daily`, ...) or `@every 1h30m`"
            ))
        };
        let mut text = cron.trim();
        let mut zone_name = timezone.map(str::to_string);
        // A zone the cron names is the cron's mistake, not the timezone field's.
        let mut zone_in_cron = false;
        for prefix in ["CRON_TZ=", "TZ="] {
            if let Some(rest) = text.strip_prefix(prefix) {
                let (name, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                if zone_name.as_deref().is_some_and(|z| z != name) {
                    return Err(bad(&format!(
                        "its {prefix}{name} differs from the timezone {:?}",
                        zone_name.unwrap_or_default()
                    )));
                }
                zone_in_cron = zone_name.is_none();
                zone_name = Some(name.to_string());
                text = rest.trim();
            }
        }
        let tz = match &zone_name {
            None => TimeZone::UTC,
            Some(name) => TimeZone::get(name).map_err(|_| match zone_in_cron {
                true => bad(&format!(
                    "its time zone {name:?} is not an IANA time zone name (such as `Europe/Paris` or `UTC`)"
                )),
                false => ScheduleError::TimeZone(name.clone()),
            })?,
        };
        if text.is_empty() {
            return Err(forms("it is empty"));
        }
        if let Some(rest) = text.strip_prefix("@every") {
            let secs = every_seconds(rest.trim()).map_err(|why| bad(&why))?;
            return Ok(Schedule {
                kind: Kind::Every(secs),
                tz,
            });
        }
        // robfig's `@midnight` is `@daily`; croner knows the others.
        let text = if text.eq_ignore_ascii_case("@midnight") {
            "@daily"
        } else {
            text
        };
        if text.starts_with('@') && !is_descriptor(text) {
            return Err(forms("unknown descriptor"));
        }
        let fields = text.split_whitespace().count();
        if !text.starts_with('@') && !(5..=6).contains(&fields) {
            let plural = if fields == 1 { "" } else { "s" };
            return Err(forms(&format!("it has {fields} field{plural}")));
        }
        let text = robfig_steps(text);
        let parsed = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(&text)
            .map_err(|e| {
                let said = e.to_string();
                let said = said.strip_prefix("Component error: ").unwrap_or(&said);
                bad(&out_of_range(&text).unwrap_or_else(|| said.trim_end_matches('.').to_string()))
            })?;
        let schedule = Schedule {
            kind: Kind::Cron(Box::new(parsed)),
            tz,
        };
        // A pattern that never matches (`0 0 30 2 *`) is refused now, not at run time.
        if schedule.next_after(Timestamp::UNIX_EPOCH).is_none() {
            return Err(bad("it never matches a date"));
        }
        Ok(schedule)
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        match &self.kind {
            Kind::Every(d) => {
                let s = t.as_second();
                Timestamp::from_second((s.div_euclid(*d) + 1) * d).ok()
            }
            Kind::Cron(c) => {
                let z = t.to_zoned(self.tz.clone());
                c.find_next_occurrence(&z, false)
                    .ok()
                    .map(|z: Zoned| z.timestamp())
            }
        }
    }

    /// The latest tick at or before `t`.
    pub fn latest_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        match &self.kind {
            Kind::Every(d) => Timestamp::from_second(t.as_second().div_euclid(*d) * d).ok(),
            Kind::Cron(c) => {
                let z = t.to_zoned(self.tz.clone());
                c.find_previous_occurrence(&z, true)
                    .ok()
                    .map(|z: Zoned| z.timestamp())
            }
        }
    }

    /// The tick to fire when the clock reads `now` and every tick up to
    /// `taken` has been fired (or was before the trigger existed): the latest
    /// one due, once however many fell due since (missed ticks are not
    /// replayed one by one); none when nothing new is due.
    pub fn due(&self, taken: Timestamp, now: Timestamp) -> Option<Timestamp> {
        let first = self.next_after(taken)?;
        if first > now {
            return None;
        }
        // `first` is due, so the latest tick at or before `now` exists and is >= it.
        self.latest_at_or_before(now).filter(|t| *t > taken)
    }
}

fn is_descriptor(text: &str) -> bool {
    [
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@hourly",
    ]
    .iter()
    .any(|d| d.eq_ignore_ascii_case(text))
}

/// The whole seconds of a Go duration (`1h30m`, `10s`, `1.5h`, `90s`), as
/// robfig/cron's `@every` takes it: below a second is not a schedule.
fn every_seconds(text: &str) -> Result<i64, String> {
    if text.is_empty() {
        return Err("`@every` needs a duration, such as `@every 10s` or `@every 1h30m`".into());
    }
    let mut nanos: f64 = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..num_len];
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let value = f64::from_str(number).map_err(|_| {
            format!("{text:?} is not a duration (a number then a unit: 10s, 1h30m)")
        })?;
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => {
                return Err(format!(
                    "unknown unit {unit:?} in {text:?}: use h, m, s, ms, us or ns"
                ))
            }
        };
        nanos += value * scale;
    }
    let secs = (nanos / 1e9).floor();
    if secs < 1.0 {
        return Err(format!("`@every {text}` is under a second"));
    }
    if secs > 100.0 * 365.0 * 86400.0 {
        return Err(format!("`@every {text}` is over a hundred years"));
    }
    Ok(secs as i64)
}

/// robfig/cron's `N/STEP` (from N to the field's end, every STEP: `5/15`
/// minutes is 5, 20, 35, 50; `MON/2` is Monday, Wednesday, Friday), written
/// as croner reads it (`5-59/15`, `1-6/2`).
fn robfig_steps(text: &str) -> String {
    const ENDS: [u32; 6] = [59, 59, 23, 31, 12, 6];
    const MONTHS: [&str; 12] = [
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ];
    const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
    let parts: Vec<&str> = text.split_whitespace().collect();
    let ends = match parts.len() {
        6 => &ENDS[..],
        5 => &ENDS[1..],
        _ => return text.to_string(),
    };
    let last = parts.len() - 1;
    let start_number = |field: usize, start: &str| -> Option<u32> {
        let named = |names: &[&str], first: u32| {
            names
                .iter()
                .position(|n| n.eq_ignore_ascii_case(start))
                .map(|i| i as u32 + first)
        };
        match field {
            _ if start.parse::<u32>().is_ok() => start.parse().ok(),
            f if f == last => named(&DAYS, 0),
            f if f + 1 == last => named(&MONTHS, 1),
            _ => None,
        }
    };
    parts
        .iter()
        .zip(ends)
        .enumerate()
        .map(|(field, (part, end))| {
            part.split(',')
                .map(|item| match item.split_once('/') {
                    Some((start, step)) => match start_number(field, start) {
                        Some(n) => format!("{n}-{end}/{step}"),
                        None => item.to_string(),
                    },
                    None => item.to_string(),
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Which field of a cron holds a number outside its range, said as a user
/// reads the cron (croner's own error names no field).
fn out_of_range(text: &str) -> Option<String> {
    const FIELDS: [(&str, u32, u32); 6] = [
        ("second", 0, 59),
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day of the month", 1, 31),
        ("month", 1, 12),
        ("day of the week", 0, 7),
    ];
    let parts: Vec<&str> = text.split_whitespace().collect();
    let fields = match parts.len() {
        6 => &FIELDS[..],
        5 => &FIELDS[1..],
        _ => return None,
    };
    for (part, (name, low, high)) in parts.iter().zip(fields) {
        for item in part.split(',') {
            // A step (`*/5`) and an nth weekday (`5#3`) are not positions.
            let positions = item.split(['/', '#']).next().unwrap_or_default();
            for number in positions.split('-') {
                if let Ok(n) = number.parse::<u32>() {
                    if n < *low || n > *high {
                        return Some(format!("{name} {n} is not from {low} to {high}"));
                    }
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(cron: &str, tz: Option<&str>, after: &str) -> String {
        Schedule::parse(cron, tz)
            .unwrap()
            .next_after(ts(after))
            .unwrap()
            .to_string()
    }

    #[test]
    fn fissions_forms_parse_and_tick_where_robfig_would() {
        let at = "2026-03-10T10:07:13Z";
        assert_eq!(next("*/5 * * * *", None, at), "2026-03-10T10:10:00Z");
        assert_eq!(next("*/10 * * * * *", None, at), "2026-03-10T10:07:20Z");
        assert_eq!(next("0 30 * * * *", None, at), "2026-03-10T10:30:00Z");
        assert_eq!(next("@hourly", None, at), "2026-03-10T11:00:00Z");
        assert_eq!(next("@daily", None, at), "2026-03-11T00:00:00Z");
        assert_eq!(next("@midnight", None, at), "2026-03-11T00:00:00Z");
        assert_eq!(next("@every 10s", None, at), "2026-03-10T10:07:20Z");
        assert_eq!(next("@every 1h30m", None, at), "2026-03-10T10:30:00Z");
        assert_eq!(next("@every 1.5h", None, at), "2026-03-10T10:30:00Z");
        // Under a second is dropped, as robfig truncates to whole seconds.
        assert_eq!(next("@every 2500ms", None, at), "2026-03-10T10:07:14Z");
        assert_eq!(
            next("CRON_TZ=Europe/Paris 0 9 * * *", None, at),
            "2026-03-11T08:00:00Z"
        );
        // robfig's `N/STEP`: from N to the field's end, every STEP.
        assert_eq!(next("5/15 * * * *", None, at), "2026-03-10T10:20:00Z");
        assert_eq!(
            next("0 50/15 * * * *", None, "2026-03-10T10:51:00Z"),
            "2026-03-10T11:50:00Z"
        );
        assert_eq!(next("0 0 1,20/3 * *", None, at), "2026-03-20T00:00:00Z");
        // 2026-03-10 is a Tuesday: MON/2 is Monday, Wednesday, Friday.
        assert_eq!(next("0 0 * * MON/2", None, at), "2026-03-11T00:00:00Z");
        assert_eq!(next("0 0 1 OCT/3 *", None, at), "2026-10-01T00:00:00Z");
    }

    #[test]
    fn bad_crons_say_what_is_wrong() {
        let err = |c: &str| Schedule::parse(c, None).unwrap_err().to_string();
        // A number out of its field's range names the field.
        assert!(
            err("61 * * * *").contains("minute 61 is not from 0 to 59"),
            "{}",
            err("61 * * * *")
        );
        assert!(err("0 24 * * *").contains("hour 24 is not from 0 to 23"));
        assert!(err("0 0 0 * *").contains("day of the month 0 is not from 1 to 31"));
        assert!(err("0 0 * 1-13 *").contains("month 13 is not from 1 to 12"));
        assert!(err("0 0 * * 8").contains("day of the week 8 is not from 0 to 7"));
        assert!(err("70 0 0 * * *").contains("second 70 is not from 0 to 59"));
        // Steps and nth weekdays are not positions.
        assert_eq!(out_of_range("*/90 * * * *"), None);
        assert_eq!(out_of_range("0 0 * * 5#3"), None);
        // Other mistakes.
        assert!(
            err("* * *").contains("cron \"* * *\" is not valid"),
            "{}",
            err("* * *")
        );
        assert!(err("61 * * * *").contains("is not valid"));
        assert!(err("* * * * * * *").contains("it has 7 fields"));
        assert!(err("@every").contains("needs a duration"));
        assert!(err("@every 10x").contains("unknown unit \"x\""));
        assert!(err("@every 100ms").contains("under a second"));
        assert!(err("@fortnightly").contains("unknown descriptor"));
        assert!(err("0 0 30 2 *").contains("never matches"));
        assert!(err("").contains("empty"));
        assert_eq!(
            Schedule::parse("@hourly", Some("Mars/Olympus")).unwrap_err(),
            ScheduleError::TimeZone("Mars/Olympus".into())
        );
        // Named in the cron: the cron's error, not the timezone field's.
        assert!(matches!(
            Schedule::parse("CRON_TZ=Nowhere/Town @hourly", None),
            Err(ScheduleError::Cron { .. })
        ));
        assert!(err("CRON_TZ=Nowhere/Town @hourly").contains("Nowhere/Town"));
        let differs = Schedule::parse("TZ=UTC @hourly", Some("Europe/Paris"))
            .unwrap_err()
            .to_string();
        assert!(differs.contains("differs"), "{differs}");
        // The forms a cron takes are said where its shape is wrong, not here.
        assert!(!differs.contains("use 5 fields"), "{differs}");
        assert!(err("* * *").contains("use 5 fields"));
        // croner's own words, without its prefix.
        assert!(
            !err("*/0 * * * *").contains("Component error"),
            "{}",
            err("*/0 * * * *")
        );
    }

    #[test]
    fn missed_ticks_collapse_into_the_latest_one() {
        let s = Schedule::parse("*/5 * * * *", None).unwrap();
        let taken = ts("2026-03-10T10:00:00Z");
        // Nothing new before the next tick.
        assert_eq!(s.due(taken, ts("2026-03-10T10:04:59Z")), None);
        assert_eq!(
            s.due(taken, ts("2026-03-10T10:05:00Z")),
            Some(ts("2026-03-10T10:05:00Z"))
        );
        // Down for an hour and a half: one firing, for the latest tick.
        assert_eq!(
            s.due(taken, ts("2026-03-10T11:33:00Z")),
            Some(ts("2026-03-10T11:30:00Z"))
        );
        // Once taken, the same tick is never due again.
        assert_eq!(
            s.due(ts("2026-03-10T11:30:00Z"), ts("2026-03-10T11:34:59Z")),
            None
        );
        let every = Schedule::parse("@every 1s", None).unwrap();
        let t0 = ts("2026-03-10T10:00:00Z");
        assert_eq!(every.due(t0, ts("2026-03-10T10:00:00.999Z")), None);
        assert_eq!(
            every.due(t0, ts("2026-03-12T10:00:00.5Z")),
            Some(ts("2026-03-12T10:00:00Z"))
        );
    }

    #[test]
    fn a_time_zone_keeps_local_hours_across_daylight_saving() {
        let s = Schedule::parse("0 9 * * *", Some("Europe/Paris")).unwrap();
        // 09:00 in Paris is 08:00Z in winter and 07:00Z in summer (29 March 2026).
        let before = ts("2026-03-28T12:00:00Z");
        let first = s.next_after(before).unwrap();
        assert_eq!(first, ts("2026-03-29T07:00:00Z"));
        assert_eq!(
            s.next_after(ts("2026-03-27T12:00:00Z")).unwrap(),
            ts("2026-03-28T08:00:00Z")
        );
        // 02:30 does not exist on the day clocks go forward: not a missed day,
        // and the day after fires at 02:30 local again.
        let gap = Schedule::parse("30 2 * * *", Some("Europe/Paris")).unwrap();
        let ticks: Vec<Timestamp> =
            std::iter::successors(gap.next_after(ts("2026-03-27T12:00:00Z")), |t| {
                gap.next_after(*t)
            })
            .take(3)
            .collect();
        assert_eq!(ticks[0], ts("2026-03-28T01:30:00Z"));
        assert!(
            ticks[1] > ticks[0] && ticks[1] <= ts("2026-03-29T01:30:00Z"),
            "{ticks:?}"
        );
        assert_eq!(ticks[2], ts("2026-03-30T00:30:00Z"));
        // 02:30 happens twice when clocks go back (25 October 2026): fired once.
        let overlap: Vec<Timestamp> =
            std::iter::successors(gap.next_after(ts("2026-10-24T12:00:00Z")), |t| {
                gap.next_after(*t)
            })
            .take(2)
            .collect();
        assert_eq!(overlap[0], ts("2026-10-25T00:30:00Z"));
        assert_eq!(overlap[1], ts("2026-10-26T01:30:00Z"));
    }
}
