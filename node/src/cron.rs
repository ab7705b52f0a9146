//! Cron schedules, due ticks and the pure settings of a cron job (DESIGN.md §7, §8).
//!
//! Everything here is a pure function of its arguments: no clock is read, nothing is random,
//! and no hash map is iterated. The orchestrator passes the current time in as a [`Tick`] (a
//! UTC instant in whole seconds), asks [`due`] which tick to fire, commits `Fire { job, tick }`
//! through raft, and sleeps until [`next_due`]. Any node evaluating the same inputs reaches the
//! same answer, so a failover neither repeats nor invents a tick.
//!
//! # Schedules
//!
//! [`Schedule::parse`] takes a cron expression and an optional IANA time zone (UTC by default):
//! - five fields, `minute hour day-of-month month day-of-week`, or six with `second` first;
//! - in each field: `*`, a value, a range `1-5`, a step `*/15`, `1-30/10` or `5/15` (from 5 to
//!   the field's end), and comma lists of these: `0,30`, `1,10-12,*/20`;
//! - month names `JAN`-`DEC` and day names `SUN`-`SAT`, in any case; day-of-week takes `0`-`7`
//!   with both `0` and `7` meaning Sunday, and a range ending on Sunday (`FRI-SUN`) runs to the
//!   end of the week;
//! - the shortcuts `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`) and
//!   `@hourly`.
//!
//! Day-of-month and day-of-week follow Vixie cron: when both are restricted, a day matches if
//! **either** matches (`0 0 13 * FRI` fires on every 13th and on every Friday); when either field
//! starts with `*` (`*`, `*/2`), a day must match **both** (`0 0 */2 * MON` fires on Mondays
//! that fall on an odd day of the month).
//!
//! A schedule whose day fields can never meet (`0 0 30 2 *`) parses, but
//! [`Schedule::next_after`] returns `None` for it. The search looks [`HORIZON_YEARS`] ahead, one
//! full 400-year cycle of the Gregorian calendar (weekdays included), so `None` means "never",
//! not "not soon"; it steps a day at a time through the allowed months only, so even a schedule
//! that never fires is settled in milliseconds.
//! Callers validating user input should reject a schedule with no next tick.
//!
//! # Daylight saving
//!
//! A schedule is read on the wall clock of its time zone, and falls in one of two kinds:
//!
//! - **Hourly schedules**, whose hour field covers all 24 hours (`*/5 * * * *`, `0 * * * *`,
//!   `*/30 * * * MON-FRI`), fire at every instant whose wall-clock reading matches. They keep
//!   their real-time cadence across a change. Spring forward: the skipped readings never occur,
//!   and because the clock jumps a whole hour the same minutes come round again at once:
//!   `*/5` in Europe/Berlin on 2026-03-29 fires at 01:55 CET and then 03:00 CEST, five real
//!   minutes later. Fall back: the repeated hour is another real hour, and it fires again:
//!   `*/30` on 2026-10-25 fires at 02:00 CEST, 02:30 CEST, 02:00 CET, 02:30 CET, 03:00 CET,
//!   every 30 real minutes. Ticks are instants, so nothing ever fires twice at one instant.
//!   (Where an offset moves by less than an hour, as Australia/Lord_Howe's 30 minutes, the
//!   skipped readings are still skipped, and that one interval is longer.)
//! - **Wall-clock schedules**, any other hour field (`30 2 * * *`, `0 */2 * * *`), fire once per
//!   matching wall-clock reading. A reading that does not exist on the change day fires once at
//!   the first instant after the gap: `30 2 * * *` in Berlin fires on 2026-03-29 at 03:00 CEST
//!   (01:00 UTC), and several skipped readings (`0,30 2 * * *`) collapse into that one tick. A
//!   reading that occurs twice fires once, at its first occurrence: 02:30 CEST on 2026-10-25,
//!   not 02:30 CET.
//!
//! # Due ticks and catch-up
//!
//! The ticks due at `now` are those after `last_fired` (or at or after `created` when the job
//! never fired) and at or before `now`. [`due`] fires at most one of them, the latest: after an
//! outage a job runs once, not once per missed tick. [`CatchUp::Latest`] (the default) fires it
//! however late it is; [`CatchUp::None`] fires it only if it is on time, `now - tick <= grace`
//! ([`DEFAULT_GRACE`] is one minute), so a job that must not run late never does. Every other
//! due tick is skipped and counted for the report.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Timelike,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// How far ahead [`Schedule::next_after`] looks: one whole cycle of the Gregorian calendar.
pub const HORIZON_YEARS: i32 = 400;

/// How late a tick may fire under [`CatchUp::None`] unless the job says otherwise.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

/// [`Due::skipped`] counts up to this many ticks; past it, the count stays here.
pub const SKIPPED_COUNT_LIMIT: u32 = 1000;

/// The longest delay between two tries of a run, whatever the base backoff.
pub const RETRY_DELAY_CAP: Duration = Duration::from_secs(3600);

/// The base delay before the first retry, when the job sets none.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(10);

/// One instant at which a schedule fires: whole seconds since the Unix epoch, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Tick(i64);

impl Tick {
    /// The tick `seconds` after the Unix epoch.
    pub const fn from_unix_seconds(seconds: i64) -> Self {
        Self(seconds)
    }

    /// Seconds since the Unix epoch.
    pub const fn unix_seconds(self) -> i64 {
        self.0
    }

    /// The tick at `time`, fractions of a second dropped.
    pub fn from_utc(time: DateTime<chrono::Utc>) -> Self {
        Self(time.timestamp())
    }

    /// The tick at `time` (read by the caller), fractions of a second dropped.
    pub fn from_system_time(time: SystemTime) -> Self {
        match time.duration_since(UNIX_EPOCH) {
            Ok(since) => Self(i64::try_from(since.as_secs()).unwrap_or(i64::MAX)),
            Err(before) => {
                let before = before.duration();
                let whole = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
                Self(-whole - i64::from(before.subsec_nanos() > 0))
            }
        }
    }

    /// This tick as a chrono time, if chrono can represent it.
    pub fn to_utc(self) -> Option<DateTime<chrono::Utc>> {
        DateTime::from_timestamp(self.0, 0)
    }
}

impl fmt::Display for Tick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_utc() {
            Some(time) => write!(f, "{}", time.format("%Y-%m-%dT%H:%M:%SZ")),
            None => write!(f, "@{}", self.0),
        }
    }
}

/// Why a schedule or its time zone was refused; each reads as one sentence.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Nothing but blanks.
    #[error(
        "schedule is empty: write five fields (minute hour day-of-month month day-of-week) \
         or a shortcut such as `@daily`"
    )]
    Empty,
    /// Neither five nor six fields.
    #[error(
        "schedule `{expr}`: expected 5 fields (minute hour day-of-month month day-of-week) \
         or 6 with seconds first, found {found}"
    )]
    FieldCount { expr: String, found: usize },
    /// An `@` shortcut that does not exist or is followed by fields.
    #[error("schedule `{expr}`: {reason}")]
    Shortcut { expr: String, reason: String },
    /// One field is malformed or out of range.
    #[error("schedule `{expr}`: {field} field `{text}`: {reason}")]
    Field {
        expr: String,
        field: &'static str,
        text: String,
        reason: String,
    },
    /// A time zone name that is not in the IANA database.
    #[error(
        "unknown time zone `{name}`: use an IANA name such as `Europe/Berlin` or \
         `America/New_York`, or leave it out for UTC"
    )]
    UnknownTimeZone { name: String },
}

/// A parsed cron schedule in one time zone. Serialized as its text and zone, and parsed again
/// when read back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ScheduleText", into = "ScheduleText")]
pub struct Schedule {
    expr: String,
    zone: Tz,
    fields: Fields,
}

/// The serialized form of a [`Schedule`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleText {
    expr: String,
    #[serde(default)]
    timezone: Option<String>,
}

impl TryFrom<ScheduleText> for Schedule {
    type Error = ScheduleError;

    fn try_from(text: ScheduleText) -> Result<Self, ScheduleError> {
        Schedule::parse(&text.expr, text.timezone.as_deref())
    }
}

impl From<Schedule> for ScheduleText {
    fn from(schedule: Schedule) -> Self {
        Self {
            timezone: Some(schedule.zone.name().to_owned()),
            expr: schedule.expr,
        }
    }
}

/// The values each field matches, one bit per value.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fields {
    seconds: Bits,
    minutes: Bits,
    hours: Bits,
    days_of_month: Bits,
    months: Bits,
    days_of_week: Bits,
    /// The day-of-month field starts with `*` (Vixie's rule: then both day fields must match).
    day_of_month_star: bool,
    /// The day-of-week field starts with `*`.
    day_of_week_star: bool,
}

/// A set of small numbers (0-63).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bits(u64);

impl Bits {
    fn contains(self, value: u32) -> bool {
        value < 64 && (self.0 >> value) & 1 == 1
    }

    fn first_at_or_after(self, value: u32) -> Option<u32> {
        if value >= 64 {
            return None;
        }
        let rest = self.0 & (u64::MAX << value);
        (rest != 0).then(|| rest.trailing_zeros())
    }
}

const ALL_HOURS: Bits = Bits((1 << 24) - 1);

impl Schedule {
    /// Parses a cron expression (see the module docs) read in `timezone`, an IANA name; `None`
    /// means UTC.
    pub fn parse(expr: &str, timezone: Option<&str>) -> Result<Self, ScheduleError> {
        let expr = expr.trim();
        let fields = parse_fields(expr)?;
        let zone = match timezone {
            None => Tz::UTC,
            Some(name) => name
                .parse::<Tz>()
                .map_err(|_| ScheduleError::UnknownTimeZone {
                    name: name.to_owned(),
                })?,
        };
        Ok(Self {
            expr: expr.to_owned(),
            zone,
            fields,
        })
    }

    /// The expression as written (trimmed).
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The IANA name of the time zone the schedule is read in.
    pub fn timezone(&self) -> &str {
        self.zone.name()
    }

    /// The first tick strictly after `tick`, or `None` if the schedule never fires again within
    /// [`HORIZON_YEARS`]. Daylight-saving changes are handled as the module docs say.
    pub fn next_after(&self, tick: Tick) -> Option<Tick> {
        let at = self.local(tick.0)?;
        let last_year = at.year().checked_add(HORIZON_YEARS)?;
        let next = if self.fields.hours == ALL_HOURS {
            self.next_hourly(tick.0, at, last_year)
        } else {
            self.next_wall_clock(tick.0, at, last_year)
        };
        next.map(Tick)
    }

    /// Hourly schedules: the first instant after `tick` whose wall-clock reading matches.
    fn next_hourly(&self, tick: i64, at: NaiveDateTime, last_year: i32) -> Option<i64> {
        let next = self.first_reading_after(tick, plus_seconds(at, 1)?, last_year);
        // In the first showing of a repeated stretch, the second showing of its readings up to
        // `at` comes before any reading after `at` that lies past the stretch.
        let LocalResult::Ambiguous(one, other) = self.zone.from_local_datetime(&at) else {
            return next;
        };
        let (first, second) = ordered(one.timestamp(), other.timestamp());
        if tick != first {
            return next;
        }
        let start = self.repeated_stretch_start(at, second - first)?;
        let repeated = self
            .next_match(start, last_year)
            .filter(|reading| *reading <= at);
        match repeated.map(|reading| self.zone.from_local_datetime(&reading)) {
            Some(LocalResult::Ambiguous(one, other)) => {
                let again = one.timestamp().max(other.timestamp());
                Some(next.map_or(again, |next| next.min(again)))
            }
            _ => next,
        }
    }

    /// The earliest instant after `tick` among the matching readings from `from` on.
    fn first_reading_after(
        &self,
        tick: i64,
        mut from: NaiveDateTime,
        last_year: i32,
    ) -> Option<i64> {
        loop {
            let reading = self.next_match(from, last_year)?;
            match self.zone.from_local_datetime(&reading) {
                LocalResult::Single(instant) if instant.timestamp() > tick => {
                    return Some(instant.timestamp())
                }
                LocalResult::Ambiguous(one, other) => {
                    let (first, second) = ordered(one.timestamp(), other.timestamp());
                    if let Some(instant) = [first, second].into_iter().find(|i| *i > tick) {
                        return Some(instant);
                    }
                }
                LocalResult::None => {
                    // Skipped readings never occur: carry on from the end of the gap.
                    from = self.local(self.gap_end(reading)?)?;
                    continue;
                }
                LocalResult::Single(_) => {}
            }
            from = plus_seconds(reading, 1)?;
        }
    }

    /// Wall-clock schedules: the first matching reading after `tick`, fired once.
    fn next_wall_clock(&self, tick: i64, at: NaiveDateTime, last_year: i32) -> Option<i64> {
        let mut from = plus_seconds(at, 1)?;
        loop {
            let reading = self.next_match(from, last_year)?;
            let instant = match self.zone.from_local_datetime(&reading) {
                LocalResult::Single(instant) => instant.timestamp(),
                LocalResult::Ambiguous(one, other) => one.timestamp().min(other.timestamp()),
                LocalResult::None => self.gap_end(reading)?,
            };
            if instant > tick {
                return Some(instant);
            }
            // From the second showing of a repeated stretch, its later readings fired in the
            // first showing, before `tick`.
            from = plus_seconds(reading, 1)?;
        }
    }

    /// The first matching wall-clock reading at or after `from`, up to the end of `last_year`.
    fn next_match(&self, from: NaiveDateTime, last_year: i32) -> Option<NaiveDateTime> {
        let mut year = from.year();
        // Month, day, hour, minute, second. A unit may run past its end; the next pass carries it.
        let mut at = [
            from.month(),
            from.day(),
            from.hour(),
            from.minute(),
            from.second(),
        ];
        'search: while year <= last_year {
            for unit in 0..at.len() {
                match self.first_allowed(unit, year, at) {
                    Some(value) if value == at[unit] => {}
                    Some(value) => {
                        at[unit] = value;
                        restart_units(&mut at, unit + 1);
                    }
                    None => {
                        match unit {
                            0 => (year, at[0]) = (year + 1, 1),
                            _ => at[unit - 1] += 1,
                        }
                        restart_units(&mut at, unit.max(1));
                        continue 'search;
                    }
                }
            }
            let [month, day, hour, minute, second] = at;
            return NaiveDate::from_ymd_opt(year, month, day)?.and_hms_opt(hour, minute, second);
        }
        None
    }

    /// The first value of `unit` (an index into [`Schedule::next_match`]'s units) that the
    /// schedule allows, at or after the one in `at`.
    fn first_allowed(&self, unit: usize, year: i32, at: [u32; 5]) -> Option<u32> {
        let fields = &self.fields;
        match unit {
            0 => fields.months.first_at_or_after(at[0]),
            1 => {
                (at[1]..=days_in_month(year, at[0])).find(|&day| self.day_matches(year, at[0], day))
            }
            2 => fields.hours.first_at_or_after(at[2]),
            3 => fields.minutes.first_at_or_after(at[3]),
            _ => fields.seconds.first_at_or_after(at[4]),
        }
    }

    /// Vixie cron's day rule: either day field when both are restricted, else both.
    fn day_matches(&self, year: i32, month: u32, day: u32) -> bool {
        let fields = &self.fields;
        let by_month_day = fields.days_of_month.contains(day);
        let by_weekday = NaiveDate::from_ymd_opt(year, month, day).is_some_and(|date| {
            fields
                .days_of_week
                .contains(date.weekday().num_days_from_sunday())
        });
        if fields.day_of_month_star || fields.day_of_week_star {
            by_month_day && by_weekday
        } else {
            by_month_day || by_weekday
        }
    }

    /// The wall-clock reading at `instant`.
    fn local(&self, instant: i64) -> Option<NaiveDateTime> {
        Some(
            DateTime::from_timestamp(instant, 0)?
                .with_timezone(&self.zone)
                .naive_local(),
        )
    }

    /// The first instant whose reading is `reading` or later: for a reading that a spring-forward
    /// skips, the end of the gap.
    fn gap_end(&self, reading: NaiveDateTime) -> Option<i64> {
        // UTC offsets lie within -12h..+14h, so the reading 26 hours either side of `reading`
        // taken as UTC is certainly before and after it.
        let guess = reading.and_utc().timestamp();
        let (mut before, mut after) = (guess - 26 * 3600, guess + 26 * 3600);
        while after - before > 1 {
            let middle = before + (after - before) / 2;
            if self.local(middle)? >= reading {
                after = middle;
            } else {
                before = middle;
            }
        }
        Some(after)
    }

    /// Where the repeated stretch holding `at` starts: it is `length` seconds long, so it
    /// starts after `at - length`.
    fn repeated_stretch_start(&self, at: NaiveDateTime, length: i64) -> Option<NaiveDateTime> {
        let (mut before, mut inside) = (plus_seconds(at, -length)?, at);
        while (inside - before).num_seconds() > 1 {
            let middle = plus_seconds(before, (inside - before).num_seconds() / 2)?;
            if matches!(
                self.zone.from_local_datetime(&middle),
                LocalResult::Ambiguous(..)
            ) {
                inside = middle;
            } else {
                before = middle;
            }
        }
        Some(inside)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.zone == Tz::UTC {
            write!(f, "{}", self.expr)
        } else {
            write!(f, "{} ({})", self.expr, self.zone.name())
        }
    }
}

/// Sets the units of [`Schedule::next_match`] from `first` on to their start: day 1, 00:00:00.
fn restart_units(at: &mut [u32; 5], first: usize) {
    for (unit, value) in at.iter_mut().enumerate().skip(first) {
        *value = if unit <= 1 { 1 } else { 0 };
    }
}

fn ordered(one: i64, other: i64) -> (i64, i64) {
    (one.min(other), one.max(other))
}

fn plus_seconds(at: NaiveDateTime, seconds: i64) -> Option<NaiveDateTime> {
    at.checked_add_signed(TimeDelta::try_seconds(seconds)?)
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

/// One field of a cron expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Second => "second",
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfMonth => "day-of-month",
            Field::Month => "month",
            Field::DayOfWeek => "day-of-week",
        }
    }

    /// The lowest and highest value that may be written (day-of-week allows 7 for Sunday).
    fn bounds(self) -> (u32, u32) {
        match self {
            Field::Second | Field::Minute => (0, 59),
            Field::Hour => (0, 23),
            Field::DayOfMonth => (1, 31),
            Field::Month => (1, 12),
            Field::DayOfWeek => (0, 7),
        }
    }

    /// The highest value `*` stands for.
    fn star_high(self) -> u32 {
        match self {
            Field::DayOfWeek => 6,
            _ => self.bounds().1,
        }
    }

    /// Parses one value: a number in bounds, or a month or day name.
    fn value(self, text: &str) -> Result<u32, String> {
        let (low, high) = self.bounds();
        if text.is_empty() {
            return Err("a value is missing".to_owned());
        }
        if text.bytes().all(|byte| byte.is_ascii_digit()) {
            return match text.parse::<u32>() {
                Ok(value) if (low..=high).contains(&value) => Ok(value),
                _ => Err(format!("{text} is out of range {low}-{high}")),
            };
        }
        let (names, first, hint) = match self {
            Field::Month => (&MONTH_NAMES[..], 1, "is not a month: use 1-12 or JAN-DEC"),
            Field::DayOfWeek => (
                &DAY_NAMES[..],
                0,
                "is not a day of the week: use 0-7 (0 and 7 are Sunday) or SUN-SAT",
            ),
            _ => (&[][..], 0, "is not a number"),
        };
        match names
            .iter()
            .position(|name| name.eq_ignore_ascii_case(text))
        {
            Some(index) => Ok(first + index as u32),
            None => Err(format!("`{text}` {hint}")),
        }
    }

    /// Parses a step: a number from 1 to the width of the field.
    fn step(self, text: &str) -> Result<u32, String> {
        let high = self.star_high() - self.bounds().0;
        if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(format!("step `{text}` is not a number"));
        }
        match text.parse::<u32>() {
            Ok(step) if (1..=high).contains(&step) => Ok(step),
            _ => Err(format!("step {text} is out of range 1-{high}")),
        }
    }

    /// Parses a whole field: a comma list of `*`, values, ranges and steps.
    fn parse(self, text: &str) -> Result<Bits, String> {
        let mut bits = 0u64;
        for item in text.split(',') {
            bits |= self.item(item)?;
        }
        if self == Field::DayOfWeek && bits & (1 << 7) != 0 {
            bits = (bits & !(1 << 7)) | 1;
        }
        Ok(Bits(bits))
    }

    fn item(self, item: &str) -> Result<u64, String> {
        if item.is_empty() {
            return Err("an item of the list is empty".to_owned());
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(self.step(step)?)),
            None => (item, None),
        };
        let (low, high) = if range == "*" {
            (self.bounds().0, self.star_high())
        } else if let Some((low, high)) = range.split_once('-') {
            let (low, mut high) = (self.value(low)?, self.value(high)?);
            if self == Field::DayOfWeek && high == 0 && low > 0 {
                high = 7;
            }
            if low > high {
                return Err(format!(
                    "range `{range}` runs backwards: write the smaller value first"
                ));
            }
            (low, high)
        } else {
            let value = self.value(range)?;
            let high = if step.is_some() {
                self.bounds().1
            } else {
                value
            };
            (value, high)
        };
        let step = step.unwrap_or(1) as usize;
        Ok((low..=high)
            .step_by(step)
            .fold(0, |bits, value| bits | 1 << value))
    }
}

/// Expands a shortcut, checks the field count, and parses each field.
fn parse_fields(expr: &str) -> Result<Fields, ScheduleError> {
    if expr.is_empty() {
        return Err(ScheduleError::Empty);
    }
    let expanded = if expr.starts_with('@') {
        expand_shortcut(expr)?
    } else {
        expr
    };
    let parts: Vec<&str> = expanded.split_whitespace().collect();
    let (second, rest) = match parts.len() {
        5 => ("0", &parts[..]),
        6 => (parts[0], &parts[1..]),
        found => {
            return Err(ScheduleError::FieldCount {
                expr: expr.to_owned(),
                found,
            })
        }
    };
    let field = |field: Field, text: &str| {
        field.parse(text).map_err(|reason| ScheduleError::Field {
            expr: expr.to_owned(),
            field: field.name(),
            text: text.to_owned(),
            reason,
        })
    };
    Ok(Fields {
        seconds: field(Field::Second, second)?,
        minutes: field(Field::Minute, rest[0])?,
        hours: field(Field::Hour, rest[1])?,
        days_of_month: field(Field::DayOfMonth, rest[2])?,
        months: field(Field::Month, rest[3])?,
        days_of_week: field(Field::DayOfWeek, rest[4])?,
        day_of_month_star: rest[2].starts_with('*'),
        day_of_week_star: rest[4].starts_with('*'),
    })
}

fn expand_shortcut(expr: &str) -> Result<&'static str, ScheduleError> {
    let mut words = expr.split_whitespace();
    let shortcut = words.next().unwrap_or_default();
    let expanded = match shortcut.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => {
            return Err(ScheduleError::Shortcut {
                expr: expr.to_owned(),
                reason: format!(
                    "unknown shortcut `{shortcut}`: use @yearly, @annually, @monthly, @weekly, \
                     @daily, @midnight or @hourly"
                ),
            })
        }
    };
    match words.next() {
        None => Ok(expanded),
        Some(_) => Err(ScheduleError::Shortcut {
            expr: expr.to_owned(),
            reason: format!("shortcut `{shortcut}` takes no fields after it"),
        }),
    }
}

/// What to do with ticks that came due while no orchestrator could fire them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Fire a tick only while it is on time (within the grace); skip late ones.
    None,
    /// Fire the latest due tick however late, and skip the earlier ones.
    #[default]
    Latest,
}

/// What [`due`] decided at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Due {
    /// The tick to fire now, if any.
    pub fire: Option<Tick>,
    /// Due ticks that will not fire, up to [`SKIPPED_COUNT_LIMIT`].
    pub skipped: u32,
    /// The latest due tick, fired or skipped. Passing it as `last_fired` next time (once the
    /// fire is committed, or to record the skip) keeps the skipped ticks from being reported
    /// again; passing the last fired tick instead reports them again, which is harmless.
    pub latest: Option<Tick>,
}

impl Due {
    /// Nothing due.
    pub const NOTHING: Due = Due {
        fire: None,
        skipped: 0,
        latest: None,
    };
}

/// Which tick of `schedule` fires at `now`, given the last tick fired (or settled) and when
/// the job was created. Due ticks are after `last_fired`, at or after `created`, and at or
/// before `now`; the latest fires under [`CatchUp::Latest`], and under [`CatchUp::None`] only if
/// `now - tick <= grace` (in whole seconds; see [`DEFAULT_GRACE`]). The rest are skipped.
pub fn due(
    schedule: &Schedule,
    last_fired: Option<Tick>,
    created: Tick,
    now: Tick,
    catch_up: CatchUp,
    grace: Duration,
) -> Due {
    let settled = settled_through(last_fired, created);
    let Some(first) = schedule.next_after(settled).filter(|first| *first <= now) else {
        return Due::NOTHING;
    };
    let latest = latest_at_or_before(schedule, first, now);
    let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    let fire = match catch_up {
        CatchUp::Latest => Some(latest),
        CatchUp::None => (now.0.saturating_sub(latest.0) <= grace).then_some(latest),
    };
    let due_count = count_ticks(schedule, first, latest, SKIPPED_COUNT_LIMIT + 1);
    Due {
        fire,
        skipped: (due_count - u32::from(fire.is_some())).min(SKIPPED_COUNT_LIMIT),
        latest: Some(latest),
    }
}

/// The first tick after `now` that is not yet settled: when the orchestrator should look at
/// the job again. Ticks at or before `now` are [`due`]'s business.
pub fn next_due(
    schedule: &Schedule,
    last_fired: Option<Tick>,
    created: Tick,
    now: Tick,
) -> Option<Tick> {
    schedule.next_after(settled_through(last_fired, created).max(now))
}

/// The instant after which ticks are still to be decided: the last fired tick, and never a
/// tick before `created`.
fn settled_through(last_fired: Option<Tick>, created: Tick) -> Tick {
    let before_created = Tick(created.0.saturating_sub(1));
    last_fired.map_or(before_created, |fired| fired.max(before_created))
}

/// The latest tick at or before `now`, given that `first` is one: a bisection over
/// "is there a tick in (x, now]", so a long outage costs a few dozen searches, not one per tick.
fn latest_at_or_before(schedule: &Schedule, first: Tick, now: Tick) -> Tick {
    let has_tick_after = |instant: i64| {
        schedule
            .next_after(Tick(instant))
            .is_some_and(|next| next <= now)
    };
    if !has_tick_after(first.0) {
        return first;
    }
    let (mut has, mut has_not) = (first.0, now.0);
    while has_not - has > 1 {
        let middle = has + (has_not - has) / 2;
        if has_tick_after(middle) {
            has = middle;
        } else {
            has_not = middle;
        }
    }
    Tick(has_not)
}

/// How many ticks lie in `[first, latest]`, counting no further than `limit`.
fn count_ticks(schedule: &Schedule, first: Tick, latest: Tick, limit: u32) -> u32 {
    let (mut count, mut current) = (1, first);
    while current < latest && count < limit {
        match schedule.next_after(current) {
            Some(next) => {
                current = next;
                count += 1;
            }
            None => break,
        }
    }
    count
}

/// What happens when a tick fires while the job's previous run is still going.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// Skip the new tick.
    #[default]
    Forbid,
    /// Start the new run beside the old one.
    Allow,
    /// Stop the old run, then start the new one.
    Replace,
}

/// Why a job setting was refused; each reads as one sentence.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    /// Not `forbid`, `allow` or `replace`.
    #[error("unknown overlap policy `{0}`: use `forbid`, `allow` or `replace`")]
    UnknownOverlap(String),
    /// Not `latest` or `none`.
    #[error("unknown catch-up policy `{0}`: use `latest` or `none`")]
    UnknownCatchUp(String),
    /// A backoff that does not parse or lies outside one second to [`RETRY_DELAY_CAP`].
    #[error("retry backoff `{text}`: {reason}")]
    Backoff { text: String, reason: String },
}

impl FromStr for Overlap {
    type Err = SettingError;

    fn from_str(text: &str) -> Result<Self, SettingError> {
        match text {
            "forbid" => Ok(Overlap::Forbid),
            "allow" => Ok(Overlap::Allow),
            "replace" => Ok(Overlap::Replace),
            _ => Err(SettingError::UnknownOverlap(text.to_owned())),
        }
    }
}

impl FromStr for CatchUp {
    type Err = SettingError;

    fn from_str(text: &str) -> Result<Self, SettingError> {
        match text {
            "none" => Ok(CatchUp::None),
            "latest" => Ok(CatchUp::Latest),
            _ => Err(SettingError::UnknownCatchUp(text.to_owned())),
        }
    }
}

/// How often a failed run is tried again, and how long to wait in between.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// Tries after the first; 0 means a failed run stays failed.
    pub retries: u32,
    /// The delay before the first retry; it doubles for each later one.
    pub backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            retries: 0,
            backoff: DEFAULT_BACKOFF,
        }
    }
}

impl Retry {
    /// A policy from a retry count and a backoff written as `10s`, `1m 30s`...; the backoff
    /// must lie between one second and [`RETRY_DELAY_CAP`].
    pub fn parse(retries: u32, backoff: &str) -> Result<Self, SettingError> {
        let refuse = |reason: String| SettingError::Backoff {
            text: backoff.to_owned(),
            reason,
        };
        let base =
            humantime::parse_duration(backoff.trim()).map_err(|err| refuse(err.to_string()))?;
        if base < Duration::from_secs(1) {
            return Err(refuse("must be at least 1s".to_owned()));
        }
        if base > RETRY_DELAY_CAP {
            return Err(refuse(
                "must be at most 1h, the longest delay between tries".to_owned(),
            ));
        }
        Ok(Self {
            retries,
            backoff: base,
        })
    }

    /// Whether retry number `retry` (1 for the first retry) may happen.
    pub fn allows(&self, retry: u32) -> bool {
        (1..=self.retries).contains(&retry)
    }

    /// The wait before retry number `retry` (1 for the first): `backoff`, doubling for each
    /// later retry, capped at [`RETRY_DELAY_CAP`]. Retry 0 is the first run: no wait.
    pub fn delay(&self, retry: u32) -> Duration {
        if retry == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(retry - 1).unwrap_or(u32::MAX);
        self.backoff
            .checked_mul(factor)
            .map_or(RETRY_DELAY_CAP, |delay| delay.min(RETRY_DELAY_CAP))
    }
}

#[cfg(test)]
#[path = "cron_tests.rs"]
mod tests;
