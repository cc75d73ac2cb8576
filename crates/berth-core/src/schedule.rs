//! When a job runs: an ISO 8601 repeating interval, as Chronos writes it (`R[n]/start/period`),
//! or a 5-field cron expression (croner), each in a time zone. Pure: parsing with errors that
//! say what is wrong, and the first scheduled time after a moment.

use std::str::FromStr;

use chrono::{DateTime, Days, Months, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// A job's schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    Repeating(Repeating),
    Cron { expression: String, cron: Box<croner::Cron>, zone: Tz },
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Schedule::Repeating(a), Schedule::Repeating(b)) => a == b,
            (Schedule::Cron { expression: a, zone: za, .. }, Schedule::Cron { expression: b, zone: zb, .. }) => {
                a == b && za == zb
            }
            _ => false,
        }
    }
}

/// `R[n]/start/period`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repeating {
    /// How many runs in all (`R5`: five); none: for ever (`R`).
    pub runs: Option<u64>,
    /// The first run; none (`R//PT1H`): when the job was deployed.
    pub start: Option<DateTime<Utc>>,
    pub period: Period,
    /// Where calendar steps (days, weeks, months, years) are counted: `P1D` at 09:00 stays at
    /// 09:00 on the wall clock across a DST change; hours, minutes and seconds are elapsed time.
    pub zone: Tz,
}

/// An ISO 8601 duration, `PnYnMnWnDTnHnMnS`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Period {
    pub years: u32,
    pub months: u32,
    pub weeks: u32,
    pub days: u32,
    pub hours: u32,
    pub minutes: u32,
    pub seconds: u32,
}

impl Period {
    fn calendar_months(&self) -> u64 {
        u64::from(self.years) * 12 + u64::from(self.months)
    }
    fn calendar_days(&self) -> u64 {
        u64::from(self.weeks) * 7 + u64::from(self.days)
    }
    fn elapsed_seconds(&self) -> i64 {
        i64::from(self.hours) * 3600 + i64::from(self.minutes) * 60 + i64::from(self.seconds)
    }
    fn is_zero(&self) -> bool {
        self.calendar_months() == 0 && self.calendar_days() == 0 && self.elapsed_seconds() == 0
    }
    /// Roughly how long it lasts, to skip ahead before stepping.
    fn approximate_seconds(&self) -> i64 {
        let days = self.calendar_months() as f64 * 30.436_875 + self.calendar_days() as f64;
        (days * 86_400.0) as i64 + self.elapsed_seconds()
    }
}

impl FromStr for Period {
    type Err = String;

    fn from_str(text: &str) -> Result<Period, String> {
        let upper = text.trim().to_ascii_uppercase();
        let rest = upper
            .strip_prefix('P')
            .ok_or_else(|| format!("period `{text}` must start with P, as in PT2H (two hours) or P1D (a day)"))?;
        let mut period = Period::default();
        let mut in_time = false;
        let mut number = String::new();
        // Designators must come in this order; each at most once.
        let mut last_rank = 0;
        for c in rest.chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            if c == 'T' {
                if in_time || !number.is_empty() {
                    return Err(format!("period `{text}`: T comes once, before the hours, minutes and seconds"));
                }
                in_time = true;
                continue;
            }
            let (rank, field) = match (in_time, c) {
                (false, 'Y') => (1, &mut period.years),
                (false, 'M') => (2, &mut period.months),
                (false, 'W') => (3, &mut period.weeks),
                (false, 'D') => (4, &mut period.days),
                (true, 'H') => (5, &mut period.hours),
                (true, 'M') => (6, &mut period.minutes),
                (true, 'S') => (7, &mut period.seconds),
                (false, 'H' | 'S') => {
                    return Err(format!("period `{text}`: {c} belongs after T (PT{}{c})", number));
                }
                _ => {
                    return Err(format!("period `{text}`: `{c}` is not a designator (Y, M, W, D, then T and H, M, S)"));
                }
            };
            if number.is_empty() {
                return Err(format!("period `{text}`: {c} has no number before it"));
            }
            if rank <= last_rank {
                return Err(format!("period `{text}`: designators go in the order Y M W D T H M S, each once"));
            }
            last_rank = rank;
            *field = number.parse().map_err(|_| format!("period `{text}`: {number} is too large"))?;
            number.clear();
        }
        if !number.is_empty() {
            return Err(format!("period `{text}`: {number} has no designator after it"));
        }
        if in_time && last_rank < 5 {
            return Err(format!("period `{text}`: T with nothing after it (PT1H, PT30M, PT10S)"));
        }
        if period.is_zero() {
            return Err(format!("period `{text}` is empty: a job must repeat after some time, as in PT1H"));
        }
        Ok(period)
    }
}

/// A time zone by its IANA name (`Europe/Berlin`), with the nearest names when it is not one.
pub fn parse_zone(name: &str) -> Result<Tz, String> {
    Tz::from_str(name.trim()).map_err(|_| {
        let wanted = name.trim().to_ascii_lowercase();
        let mut scored: Vec<(f64, &str)> = chrono_tz::TZ_VARIANTS
            .iter()
            .map(|z| (strsim::jaro_winkler(&z.name().to_ascii_lowercase(), &wanted), z.name()))
            .filter(|(score, _)| *score > 0.9)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        let near: Vec<&str> = scored.into_iter().take(2).map(|(_, z)| z).collect();
        match near.as_slice() {
            [] => format!("`{name}` is not an IANA time zone (such as UTC or Europe/Berlin)"),
            near => format!("`{name}` is not an IANA time zone; did you mean {}?", near.join(" or ")),
        }
    })
}

impl Schedule {
    /// `R[n]/start/period` or a 5-field cron expression, in `zone` (none: UTC).
    pub fn parse(text: &str, zone: Option<&str>) -> Result<Schedule, String> {
        let zone = zone.map(parse_zone).transpose()?.unwrap_or(Tz::UTC);
        let trimmed = text.trim();
        if trimmed.starts_with(['R', 'r']) && trimmed.contains('/') {
            return Ok(Schedule::Repeating(parse_repeating(trimmed, zone)?));
        }
        if trimmed.contains('/') && trimmed.contains(['P', 'p']) && !trimmed.contains(' ') {
            return Err(format!("`{text}`: a repeating interval starts with R, as in R/2024-01-01T06:00:00Z/PT2H"));
        }
        let fields = trimmed.split_whitespace().count();
        if fields != 5 {
            return Err(format!(
                "`{text}`: a cron schedule has 5 fields (minute hour day-of-month month day-of-week), not {fields}; \
                 or write a repeating interval, as in R/2024-01-01T06:00:00Z/PT2H"
            ));
        }
        let parser = croner::parser::CronParser::builder().seconds(croner::parser::Seconds::Disallowed).build();
        let cron = parser.parse(trimmed).map_err(|e| format!("cron `{text}`: {e}"))?;
        Ok(Schedule::Cron { expression: trimmed.to_string(), cron: Box::new(cron), zone })
    }

    /// The first scheduled time strictly after `after`; none when the schedule has no more runs.
    /// `deployed` anchors a repeating interval written without a start.
    pub fn next_after(&self, after: DateTime<Utc>, deployed: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Repeating(r) => r.next_after(after, deployed),
            Schedule::Cron { cron, zone, .. } => {
                cron.find_next_occurrence(&after.with_timezone(zone), false).ok().map(|t| t.with_timezone(&Utc))
            }
        }
    }
}

fn parse_repeating(text: &str, zone: Tz) -> Result<Repeating, String> {
    let parts: Vec<&str> = text.split('/').collect();
    let [count, start, period] = parts.as_slice() else {
        return Err(format!("`{text}`: a repeating interval has three parts, R[n]/start/period"));
    };
    let runs = match &count[1..] {
        "" => None,
        n => match n.parse::<u64>() {
            Ok(0) => return Err(format!("`{text}`: R0 would never run; write R for ever, or R1 and up")),
            Ok(n) => Some(n),
            Err(_) => return Err(format!("`{text}`: after R comes a number of runs or nothing, not `{n}`")),
        },
    };
    let start = match start.trim() {
        "" => None,
        s => Some(parse_start(s, zone).map_err(|why| format!("`{text}`: {why}"))?),
    };
    let period = period.parse().map_err(|why| format!("`{text}`: {why}"))?;
    Ok(Repeating { runs, start, period, zone })
}

/// `2016-11-07T06:00:00Z`, with an offset, or without one (then a wall-clock time in `zone`).
fn parse_start(text: &str, zone: Tz) -> Result<DateTime<Utc>, String> {
    let upper = text.to_ascii_uppercase();
    if let Ok(t) = DateTime::parse_from_rfc3339(&upper) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(local) = NaiveDateTime::parse_from_str(&upper, format) {
            return resolve(zone, local).ok_or_else(|| format!("{text} does not exist in {zone}"));
        }
    }
    Err(format!("start `{text}` is not a date and time such as 2016-11-07T06:00:00Z"))
}

/// A wall-clock time in `zone`: the earlier of two when the clocks went back; when they went
/// forward over it, the same time after the jump.
fn resolve(zone: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    if let Some(t) = zone.from_local_datetime(&local).earliest() {
        return Some(t.with_timezone(&Utc));
    }
    // In a gap (the clocks jumped forward over it): every gap on earth is at most an hour.
    let later = local.checked_add_signed(chrono::Duration::hours(1))?;
    zone.from_local_datetime(&later).earliest().map(|t| t.with_timezone(&Utc))
}

impl Repeating {
    /// Run `k` (from 0): calendar steps on the zone's wall clock, then elapsed time.
    fn occurrence(&self, start: DateTime<Utc>, k: u64) -> Option<DateTime<Utc>> {
        let p = &self.period;
        let stepped = if p.calendar_months() == 0 && p.calendar_days() == 0 {
            start
        } else {
            let local = start.with_timezone(&self.zone).naive_local();
            let months = u32::try_from(p.calendar_months().checked_mul(k)?).ok()?;
            let local = local.checked_add_months(Months::new(months))?;
            let local = local.checked_add_days(Days::new(p.calendar_days().checked_mul(k)?))?;
            resolve(self.zone, local)?
        };
        let elapsed = p.elapsed_seconds().checked_mul(i64::try_from(k).ok()?)?;
        stepped.checked_add_signed(chrono::Duration::seconds(elapsed))
    }

    fn next_after(&self, after: DateTime<Utc>, deployed: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = self.start.unwrap_or(deployed);
        let within = |k: u64| self.runs.is_none_or(|n| k < n);
        // Skip ahead to just before `after`, then step: months have no fixed length.
        let from = if after < start {
            0
        } else {
            let approx = self.period.approximate_seconds().max(1);
            u64::try_from(((after - start).num_seconds() / approx - 2).max(0)).unwrap_or(0)
        };
        // Calendar steps vary by a few days a month at most; ten thousand is a bound never met.
        for k in from..from.saturating_add(10_000) {
            if !within(k) {
                return None;
            }
            let at = self.occurrence(start, k)?;
            if at > after {
                return Some(at);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn next(schedule: &str, zone: Option<&str>, after: &str) -> Option<String> {
        let s = Schedule::parse(schedule, zone).unwrap();
        s.next_after(utc(after), utc("2000-01-01T00:00:00Z")).map(|t| t.to_rfc3339())
    }

    #[test]
    fn chronos_forms_parse() {
        let Schedule::Repeating(r) = Schedule::parse("R/2016-11-07T06:00:00Z/PT2H", None).unwrap() else { panic!() };
        assert_eq!((r.runs, r.start, r.period.hours), (None, Some(utc("2016-11-07T06:00:00Z")), 2));
        let Schedule::Repeating(r) = Schedule::parse("R10/2012-10-01T05:52:00Z/PT2S", None).unwrap() else { panic!() };
        assert_eq!((r.runs, r.period.seconds), (Some(10), 2));
        let Schedule::Repeating(r) = Schedule::parse("r/2016-11-07t06:00:00z/pt2h", None).unwrap() else { panic!() };
        assert_eq!(r.start, Some(utc("2016-11-07T06:00:00Z")), "any case");
        let Schedule::Repeating(r) = Schedule::parse("R//P1D", None).unwrap() else { panic!() };
        assert_eq!(r.start, None, "no start: from the deploy");
        let Schedule::Repeating(r) = Schedule::parse("R/2016-11-07T06:00:00+02:00/PT1H", None).unwrap() else {
            panic!()
        };
        assert_eq!(r.start, Some(utc("2016-11-07T04:00:00Z")), "an offset");
        let local = Schedule::parse("R/2016-11-07T06:00:00/PT1H", Some("Europe/Berlin")).unwrap();
        let Schedule::Repeating(r) = local else { panic!() };
        assert_eq!(r.start, Some(utc("2016-11-07T05:00:00Z")), "no offset: the zone's wall clock");
    }

    #[test]
    fn every_designator_and_the_errors() {
        let p: Period = "P1Y2M3W4DT5H6M7S".parse().unwrap();
        assert_eq!(p, Period { years: 1, months: 2, weeks: 3, days: 4, hours: 5, minutes: 6, seconds: 7 });
        let p: Period = "PT90M".parse().unwrap();
        assert_eq!((p.minutes, p.months), (90, 0), "M after T is minutes");
        let p: Period = "P2M".parse().unwrap();
        assert_eq!((p.minutes, p.months), (0, 2), "M before T is months");
        for (bad, says) in [
            ("P", "empty"),
            ("PT", "nothing after it"),
            ("P0D", "empty"),
            ("P1X", "not a designator"),
            ("P1H", "after T"),
            ("PD", "no number"),
            ("P1D1Y", "order"),
            ("P1DT", "nothing after it"),
            ("1D", "start with P"),
            ("PT5", "no designator"),
        ] {
            let err = bad.parse::<Period>().map(|_| ()).expect_err(bad);
            assert!(err.contains(says) || (says == "empty" && err.contains("T comes")), "{bad}: {err}");
        }
        for (bad, says) in [
            ("R0/2016-11-07T06:00:00Z/PT2H", "never run"),
            ("R-1/2016-11-07T06:00:00Z/PT2H", "number of runs"),
            ("R/2016-13-07T06:00:00Z/PT2H", "not a date"),
            ("R/2016-11-07T06:00:00Z", "three parts"),
            ("2016-11-07T06:00:00Z/PT2H", "starts with R"),
            ("* * * *", "5 fields"),
            ("0 * * * * *", "5 fields"),
            ("61 * * * *", "cron"),
        ] {
            let err = Schedule::parse(bad, None).map(|_| ()).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
        let err = Schedule::parse("0 * * * *", Some("Europe/Berln")).map(|_| ()).unwrap_err();
        assert!(err.contains("did you mean Europe/Berlin"), "{err}");
    }

    #[test]
    fn the_next_run_of_a_repeating_interval() {
        let every2h = "R/2016-11-07T06:00:00Z/PT2H";
        assert_eq!(
            next(every2h, None, "2016-11-01T00:00:00Z").as_deref(),
            Some("2016-11-07T06:00:00+00:00"),
            "before the start"
        );
        assert_eq!(next(every2h, None, "2016-11-07T07:00:00Z").as_deref(), Some("2016-11-07T08:00:00+00:00"));
        assert_eq!(
            next(every2h, None, "2016-11-07T08:00:00Z").as_deref(),
            Some("2016-11-07T10:00:00+00:00"),
            "strictly after"
        );
        assert_eq!(
            next(every2h, None, "2026-12-07T13:59:59Z").as_deref(),
            Some("2026-12-07T14:00:00+00:00"),
            "years on"
        );
        // R2: two runs, then none.
        let twice = "R2/2016-11-07T06:00:00Z/PT2H";
        assert_eq!(next(twice, None, "2016-11-07T06:00:00Z").as_deref(), Some("2016-11-07T08:00:00+00:00"));
        assert_eq!(next(twice, None, "2016-11-07T08:00:00Z"), None);
        // Monthly from the 31st: shorter months run on their last day.
        let monthly = "R/2024-01-31T00:00:00Z/P1M";
        assert_eq!(next(monthly, None, "2024-02-01T00:00:00Z").as_deref(), Some("2024-02-29T00:00:00+00:00"));
        // No start: from the deploy.
        let s = Schedule::parse("R//PT1H", None).unwrap();
        let deployed = utc("2024-05-01T10:30:00Z");
        assert_eq!(s.next_after(utc("2024-05-01T12:00:00Z"), deployed), Some(utc("2024-05-01T12:30:00Z")));
    }

    #[test]
    fn days_keep_the_wall_clock_across_dst_and_hours_are_elapsed() {
        let berlin = Some("Europe/Berlin");
        // 09:00 in Berlin every day: 08:00 UTC in winter, 07:00 UTC from 31 March 2024.
        let daily = "R/2024-03-29T09:00:00/P1D";
        assert_eq!(next(daily, berlin, "2024-03-29T12:00:00Z").as_deref(), Some("2024-03-30T08:00:00+00:00"));
        assert_eq!(next(daily, berlin, "2024-03-30T12:00:00Z").as_deref(), Some("2024-03-31T07:00:00+00:00"));
        // 24 hours is 24 hours: 10:00 local after the jump.
        let hours = "R/2024-03-30T09:00:00/PT24H";
        assert_eq!(next(hours, berlin, "2024-03-30T12:00:00Z").as_deref(), Some("2024-03-31T08:00:00+00:00"));
        // 02:30 does not exist on 31 March in Berlin: 03:30 that day.
        let in_gap = "R/2024-03-30T02:30:00/P1D";
        assert_eq!(next(in_gap, berlin, "2024-03-30T12:00:00Z").as_deref(), Some("2024-03-31T01:30:00+00:00"));
        // 02:30 happens twice on 27 October: the first.
        let twice = "R/2024-10-26T02:30:00/P1D";
        assert_eq!(next(twice, berlin, "2024-10-26T12:00:00Z").as_deref(), Some("2024-10-27T00:30:00+00:00"));
    }

    #[test]
    fn the_next_run_of_a_cron_schedule_in_its_zone() {
        assert_eq!(next("*/5 * * * *", None, "2024-05-01T10:02:00Z").as_deref(), Some("2024-05-01T10:05:00+00:00"));
        assert_eq!(next("0 6 * * MON", None, "2024-05-01T10:00:00Z").as_deref(), Some("2024-05-06T06:00:00+00:00"));
        let berlin = Some("Europe/Berlin");
        assert_eq!(next("0 9 * * *", berlin, "2024-03-30T12:00:00Z").as_deref(), Some("2024-03-31T07:00:00+00:00"));
        assert_eq!(next("0 9 * * *", berlin, "2024-03-29T12:00:00Z").as_deref(), Some("2024-03-30T08:00:00+00:00"));
    }

    proptest::proptest! {
        /// The next run is after the moment asked about, on the schedule, and no run between
        /// them was skipped.
        #[test]
        fn the_next_run_is_the_first_after(
            start in 0i64..2_000_000_000,
            seconds in 1u32..200_000,
            days in 0u32..3,
            offset in 0i64..100_000_000,
        ) {
            let period = Period { days, seconds, ..Period::default() };
            let start = DateTime::from_timestamp(start, 0).unwrap();
            let r = Repeating { runs: None, start: Some(start), period, zone: Tz::Europe__Berlin };
            let after = start + chrono::Duration::seconds(offset);
            let next = r.next_after(after, start).unwrap();
            proptest::prop_assert!(next > after);
            // Which run it is: near offset / period (days on the wall clock vary by an hour).
            let estimate = (offset / period.approximate_seconds()) as u64;
            let k = (estimate.saturating_sub(3)..estimate + 5).find(|k| r.occurrence(start, *k).unwrap() == next);
            proptest::prop_assert!(k.is_some(), "the next run is on the schedule");
            let k = k.unwrap_or_default();
            if k > 0 {
                proptest::prop_assert!(r.occurrence(start, k - 1).unwrap() <= after);
            }
        }
    }
}
