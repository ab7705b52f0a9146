//! Schedules in, ticks out: every field syntax, the shortcuts, month ends, leap days, the
//! daylight-saving changes of Europe/Berlin and America/New_York, and the catch-up policies.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::*;

fn schedule(expr: &str) -> Schedule {
    Schedule::parse(expr, None).unwrap_or_else(|err| panic!("{err}"))
}

fn zoned(expr: &str, zone: &str) -> Schedule {
    Schedule::parse(expr, Some(zone)).unwrap_or_else(|err| panic!("{err}"))
}

/// The tick at an RFC 3339 time.
fn at(text: &str) -> Tick {
    Tick::from_utc(
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc),
    )
}

/// The next `count` ticks after `from`, as UTC times.
fn ticks(schedule: &Schedule, from: &str, count: usize) -> Vec<String> {
    let mut tick = at(from);
    (0..count)
        .map(|_| {
            tick = schedule.next_after(tick).expect("schedule fires");
            tick.to_string()
        })
        .collect()
}

/// The next `count` ticks after `from`, as wall-clock times in the schedule's zone.
fn local_ticks(schedule: &Schedule, from: &str, count: usize) -> Vec<String> {
    let zone: Tz = schedule.timezone().parse().unwrap();
    let mut tick = at(from);
    (0..count)
        .map(|_| {
            tick = schedule.next_after(tick).expect("schedule fires");
            let time = tick.to_utc().unwrap().with_timezone(&zone);
            time.format("%Y-%m-%d %H:%M:%S %Z").to_string()
        })
        .collect()
}

/// The gaps, in seconds, between the ticks from `from` to `until`.
fn intervals(schedule: &Schedule, from: &str, until: &str) -> Vec<i64> {
    let (mut tick, until) = (at(from), at(until));
    let mut gaps = Vec::new();
    while let Some(next) = schedule.next_after(tick).filter(|next| *next <= until) {
        gaps.push(next.unix_seconds() - tick.unix_seconds());
        tick = next;
    }
    gaps
}

fn parse_error(expr: &str) -> String {
    Schedule::parse(expr, None).unwrap_err().to_string()
}

// Field syntax.

#[test]
fn star_fires_every_minute_on_the_minute() {
    assert_eq!(
        ticks(&schedule("* * * * *"), "2026-01-01T10:00:30Z", 3),
        [
            "2026-01-01T10:01:00Z",
            "2026-01-01T10:02:00Z",
            "2026-01-01T10:03:00Z"
        ]
    );
}

#[test]
fn step_over_star_counts_from_the_field_start() {
    assert_eq!(
        ticks(&schedule("*/15 * * * *"), "2026-01-01T10:00:00Z", 4),
        [
            "2026-01-01T10:15:00Z",
            "2026-01-01T10:30:00Z",
            "2026-01-01T10:45:00Z",
            "2026-01-01T11:00:00Z"
        ]
    );
}

#[test]
fn range_fires_on_each_value_in_it() {
    assert_eq!(
        ticks(&schedule("0 9-11 * * *"), "2026-01-01T00:00:00Z", 4),
        [
            "2026-01-01T09:00:00Z",
            "2026-01-01T10:00:00Z",
            "2026-01-01T11:00:00Z",
            "2026-01-02T09:00:00Z"
        ]
    );
}

#[test]
fn range_with_step_and_value_with_step() {
    assert_eq!(
        ticks(&schedule("10-40/15 * * * *"), "2026-01-01T10:00:00Z", 4),
        [
            "2026-01-01T10:10:00Z",
            "2026-01-01T10:25:00Z",
            "2026-01-01T10:40:00Z",
            "2026-01-01T11:10:00Z"
        ]
    );
    // `5/20` runs from 5 to the end of the field.
    assert_eq!(
        ticks(&schedule("5/20 * * * *"), "2026-01-01T10:00:00Z", 4),
        [
            "2026-01-01T10:05:00Z",
            "2026-01-01T10:25:00Z",
            "2026-01-01T10:45:00Z",
            "2026-01-01T11:05:00Z"
        ]
    );
}

#[test]
fn lists_mix_values_ranges_and_steps() {
    assert_eq!(
        ticks(&schedule("0,30 * * * *"), "2026-01-01T10:00:00Z", 3),
        [
            "2026-01-01T10:30:00Z",
            "2026-01-01T11:00:00Z",
            "2026-01-01T11:30:00Z"
        ]
    );
    assert_eq!(
        ticks(&schedule("1,10-12,*/25 * * * *"), "2026-01-01T10:00:00Z", 7),
        [
            "2026-01-01T10:01:00Z",
            "2026-01-01T10:10:00Z",
            "2026-01-01T10:11:00Z",
            "2026-01-01T10:12:00Z",
            "2026-01-01T10:25:00Z",
            "2026-01-01T10:50:00Z",
            "2026-01-01T11:00:00Z",
        ]
    );
}

#[test]
fn month_names_in_any_case() {
    assert_eq!(
        ticks(&schedule("0 12 1 JAN,jul *"), "2026-01-01T12:00:00Z", 3),
        [
            "2026-07-01T12:00:00Z",
            "2027-01-01T12:00:00Z",
            "2027-07-01T12:00:00Z"
        ]
    );
    assert_eq!(
        ticks(&schedule("0 0 1 Oct-DEC *"), "2026-01-01T00:00:00Z", 4),
        [
            "2026-10-01T00:00:00Z",
            "2026-11-01T00:00:00Z",
            "2026-12-01T00:00:00Z",
            "2027-10-01T00:00:00Z"
        ]
    );
}

#[test]
fn weekday_names_and_ranges() {
    // 2026-01-02 is a Friday.
    assert_eq!(
        ticks(&schedule("0 8 * * MON-FRI"), "2026-01-02T09:00:00Z", 3),
        [
            "2026-01-05T08:00:00Z",
            "2026-01-06T08:00:00Z",
            "2026-01-07T08:00:00Z"
        ]
    );
    // A range ending on Sunday runs to the end of the week.
    assert_eq!(
        ticks(&schedule("0 8 * * fri-sun"), "2026-01-01T09:00:00Z", 4),
        [
            "2026-01-02T08:00:00Z",
            "2026-01-03T08:00:00Z",
            "2026-01-04T08:00:00Z",
            "2026-01-09T08:00:00Z"
        ]
    );
}

#[test]
fn sunday_is_both_zero_and_seven() {
    let sundays = ["2026-01-04T00:00:00Z", "2026-01-11T00:00:00Z"];
    assert_eq!(
        ticks(&schedule("0 0 * * 0"), "2026-01-01T00:00:00Z", 2),
        sundays
    );
    assert_eq!(
        ticks(&schedule("0 0 * * 7"), "2026-01-01T00:00:00Z", 2),
        sundays
    );
    assert_eq!(
        ticks(&schedule("0 0 * * SUN"), "2026-01-01T00:00:00Z", 2),
        sundays
    );
}

#[test]
fn both_day_fields_restricted_means_either_matches() {
    // 2026-01-13 is a Tuesday: it fires as the 13th; the Fridays fire as Fridays.
    assert_eq!(
        ticks(&schedule("0 0 13 * FRI"), "2026-01-10T00:00:00Z", 6),
        [
            "2026-01-13T00:00:00Z",
            "2026-01-16T00:00:00Z",
            "2026-01-23T00:00:00Z",
            "2026-01-30T00:00:00Z",
            "2026-02-06T00:00:00Z",
            "2026-02-13T00:00:00Z",
        ]
    );
}

#[test]
fn a_day_field_starting_with_star_means_both_must_match() {
    // Mondays on odd days of the month.
    assert_eq!(
        ticks(&schedule("0 0 */2 * MON"), "2026-01-01T00:00:00Z", 6),
        [
            "2026-01-05T00:00:00Z",
            "2026-01-19T00:00:00Z",
            "2026-02-09T00:00:00Z",
            "2026-02-23T00:00:00Z",
            "2026-03-09T00:00:00Z",
            "2026-03-23T00:00:00Z",
        ]
    );
    // Day-of-month alone, and day-of-week alone.
    assert_eq!(
        ticks(&schedule("0 0 1 * *"), "2026-01-01T00:00:00Z", 1),
        ["2026-02-01T00:00:00Z"]
    );
    assert_eq!(
        ticks(&schedule("0 0 * * MON"), "2026-02-01T00:00:00Z", 1),
        ["2026-02-02T00:00:00Z"]
    );
}

#[test]
fn six_fields_put_seconds_first() {
    assert_eq!(
        ticks(&schedule("*/15 * * * * *"), "2026-01-01T10:00:00Z", 4),
        [
            "2026-01-01T10:00:15Z",
            "2026-01-01T10:00:30Z",
            "2026-01-01T10:00:45Z",
            "2026-01-01T10:01:00Z"
        ]
    );
    assert_eq!(
        ticks(&schedule("30 0 12 * * *"), "2026-01-01T12:00:30Z", 2),
        ["2026-01-02T12:00:30Z", "2026-01-03T12:00:30Z"]
    );
    // Five fields fire on second 0.
    assert_eq!(
        ticks(&schedule("0 12 * * *"), "2026-01-01T11:59:59Z", 1),
        ["2026-01-01T12:00:00Z"]
    );
}

#[test]
fn every_shortcut_expands_to_its_fields() {
    let cases = [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("@DAILY", "0 0 * * *"),
    ];
    for (shortcut, fields) in cases {
        let from = "2026-06-01T00:00:00Z";
        assert_eq!(
            ticks(&schedule(shortcut), from, 3),
            ticks(&schedule(fields), from, 3),
            "{shortcut}"
        );
        assert_eq!(schedule(shortcut).expr(), shortcut);
    }
    // 2026-06-01 is a Monday.
    assert_eq!(
        ticks(&schedule("@yearly"), "2026-06-01T00:00:00Z", 1),
        ["2027-01-01T00:00:00Z"]
    );
    assert_eq!(
        ticks(&schedule("@monthly"), "2026-06-01T00:00:00Z", 1),
        ["2026-07-01T00:00:00Z"]
    );
    assert_eq!(
        ticks(&schedule("@weekly"), "2026-06-01T00:00:00Z", 1),
        ["2026-06-07T00:00:00Z"]
    );
    assert_eq!(
        ticks(&schedule("@daily"), "2026-06-01T00:00:00Z", 1),
        ["2026-06-02T00:00:00Z"]
    );
    assert_eq!(
        ticks(&schedule("@hourly"), "2026-06-01T00:00:00Z", 1),
        ["2026-06-01T01:00:00Z"]
    );
}

// Errors: each names the schedule, the field and what is wrong with it.

#[test]
fn field_errors_name_the_field_and_the_fault() {
    let cases = [
        ("*/61 * * * *", "minute field `*/61`: step 61 is out of range 1-59"),
        ("*/0 * * * *", "minute field `*/0`: step 0 is out of range 1-59"),
        ("*/ * * * *", "minute field `*/`: step `` is not a number"),
        ("60 * * * *", "minute field `60`: 60 is out of range 0-59"),
        ("x * * * *", "minute field `x`: `x` is not a number"),
        ("-1 * * * *", "minute field `-1`: a value is missing"),
        ("1, * * * *", "minute field `1,`: an item of the list is empty"),
        ("5-1 * * * *", "minute field `5-1`: range `5-1` runs backwards: write the smaller value first"),
        ("0 24 * * *", "hour field `24`: 24 is out of range 0-23"),
        ("0 */24 * * *", "hour field `*/24`: step 24 is out of range 1-23"),
        ("0 0 0 * *", "day-of-month field `0`: 0 is out of range 1-31"),
        ("0 0 32 * *", "day-of-month field `32`: 32 is out of range 1-31"),
        ("0 0 * 13 *", "month field `13`: 13 is out of range 1-12"),
        ("0 0 * FOO *", "month field `FOO`: `FOO` is not a month: use 1-12 or JAN-DEC"),
        ("0 0 * * 8", "day-of-week field `8`: 8 is out of range 0-7"),
        (
            "0 0 * * FUNDAY",
            "day-of-week field `FUNDAY`: `FUNDAY` is not a day of the week: use 0-7 (0 and 7 are Sunday) or SUN-SAT",
        ),
        ("0 0 * * */7", "day-of-week field `*/7`: step 7 is out of range 1-6"),
        ("61 0 0 * * *", "second field `61`: 61 is out of range 0-59"),
        ("99999999999 * * * *", "minute field `99999999999`: 99999999999 is out of range 0-59"),
    ];
    for (expr, reason) in cases {
        assert_eq!(parse_error(expr), format!("schedule `{expr}`: {reason}"));
    }
}

#[test]
fn shape_errors_say_what_was_expected() {
    assert_eq!(
        parse_error("* * *"),
        "schedule `* * *`: expected 5 fields (minute hour day-of-month month day-of-week) or 6 with \
         seconds first, found 3"
    );
    assert!(parse_error("* * * * * * *").ends_with("found 7"));
    assert_eq!(parse_error("   "), ScheduleError::Empty.to_string());
    assert!(parse_error("").starts_with("schedule is empty"));
    assert_eq!(
        parse_error("@every 5m"),
        "schedule `@every 5m`: unknown shortcut `@every`: use @yearly, @annually, @monthly, @weekly, \
         @daily, @midnight or @hourly"
    );
    assert_eq!(
        parse_error("@daily 5"),
        "schedule `@daily 5`: shortcut `@daily` takes no fields after it"
    );
}

#[test]
fn unknown_time_zone_is_named() {
    let err = Schedule::parse("0 0 * * *", Some("Mars/Base")).unwrap_err();
    assert_eq!(
        err,
        ScheduleError::UnknownTimeZone {
            name: "Mars/Base".to_owned()
        }
    );
    assert!(err
        .to_string()
        .starts_with("unknown time zone `Mars/Base`: use an IANA name"));
    assert_eq!(
        zoned("0 0 * * *", "Europe/Berlin").timezone(),
        "Europe/Berlin"
    );
    assert_eq!(schedule("0 0 * * *").timezone(), "UTC");
}

// Calendar edges.

#[test]
fn the_31st_skips_short_months() {
    assert_eq!(
        ticks(&schedule("0 0 31 * *"), "2026-01-31T00:00:00Z", 7),
        [
            "2026-03-31T00:00:00Z",
            "2026-05-31T00:00:00Z",
            "2026-07-31T00:00:00Z",
            "2026-08-31T00:00:00Z",
            "2026-10-31T00:00:00Z",
            "2026-12-31T00:00:00Z",
            "2027-01-31T00:00:00Z",
        ]
    );
    assert_eq!(
        ticks(&schedule("0 0 30 * *"), "2026-01-30T00:00:00Z", 1),
        ["2026-03-30T00:00:00Z"]
    );
}

#[test]
fn leap_day_fires_only_in_leap_years() {
    let leap_day = schedule("0 0 29 2 *");
    assert_eq!(
        ticks(&leap_day, "2027-01-01T00:00:00Z", 2),
        ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]
    );
    // 2100 is not a leap year: eight years pass between two leap days.
    assert_eq!(
        ticks(&leap_day, "2096-03-01T00:00:00Z", 1),
        ["2104-02-29T00:00:00Z"]
    );
}

#[test]
fn schedules_that_never_fire_end_the_search() {
    for expr in [
        "0 0 30 2 *",
        "0 0 30,31 2 *",
        "0 0 31 4,6,9,11 *",
        "0 0 0 30 FEB *",
    ] {
        let never = schedule(expr);
        assert_eq!(never.next_after(at("2026-01-01T00:00:00Z")), None, "{expr}");
        let now = at("2030-01-01T00:00:00Z");
        let created = at("2026-01-01T00:00:00Z");
        assert_eq!(
            due(&never, None, created, now, CatchUp::Latest, DEFAULT_GRACE),
            Due::NOTHING
        );
        assert_eq!(next_due(&never, None, created, now), None);
    }
    // With the day of the week restricted too, either day field may match: Mondays in February.
    assert_eq!(
        ticks(&schedule("0 0 30 2 MON"), "2026-02-01T00:00:00Z", 1),
        ["2026-02-02T00:00:00Z"]
    );
}

#[test]
fn ticks_beyond_the_calendar_give_none_without_panicking() {
    let every_minute = schedule("* * * * *");
    assert_eq!(
        every_minute.next_after(Tick::from_unix_seconds(i64::MAX)),
        None
    );
    assert_eq!(
        every_minute.next_after(Tick::from_unix_seconds(i64::MIN)),
        None
    );
}

// Daylight saving, Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST (01:00 UTC), and
// 2026-10-25 03:00 CEST -> 02:00 CET (01:00 UTC).

#[test]
fn berlin_daily_time_in_the_spring_gap_fires_once_at_the_end_of_the_gap() {
    let daily = zoned("30 2 * * *", "Europe/Berlin");
    assert_eq!(
        local_ticks(&daily, "2026-03-27T12:00:00Z", 3),
        [
            "2026-03-28 02:30:00 CET",
            "2026-03-29 03:00:00 CEST",
            "2026-03-30 02:30:00 CEST"
        ]
    );
    assert_eq!(
        ticks(&daily, "2026-03-28T12:00:00Z", 1),
        ["2026-03-29T01:00:00Z"]
    );
}

#[test]
fn berlin_daily_time_in_the_repeated_hour_fires_at_its_first_occurrence_only() {
    let daily = zoned("30 2 * * *", "Europe/Berlin");
    assert_eq!(
        local_ticks(&daily, "2026-10-23T12:00:00Z", 3),
        [
            "2026-10-24 02:30:00 CEST",
            "2026-10-25 02:30:00 CEST",
            "2026-10-26 02:30:00 CET"
        ]
    );
    // From inside the repeated hour, first showing or second, the next tick is tomorrow's.
    for from in [
        "2026-10-25T00:45:00Z",
        "2026-10-25T01:15:00Z",
        "2026-10-25T01:30:00Z",
    ] {
        assert_eq!(
            local_ticks(&daily, from, 1),
            ["2026-10-26 02:30:00 CET"],
            "from {from}"
        );
    }
    // From the second showing, a reading after the repeated hour comes the same night.
    let at_three = zoned("0 3 * * *", "Europe/Berlin");
    assert_eq!(
        local_ticks(&at_three, "2026-10-25T01:30:00Z", 1),
        ["2026-10-25 03:00:00 CET"]
    );
}

#[test]
fn berlin_every_30_minutes_keeps_real_time_across_both_changes() {
    let half_hourly = zoned("*/30 * * * *", "Europe/Berlin");
    assert_eq!(
        local_ticks(&half_hourly, "2026-03-29T00:00:00Z", 3),
        [
            "2026-03-29 01:30:00 CET",
            "2026-03-29 03:00:00 CEST",
            "2026-03-29 03:30:00 CEST"
        ]
    );
    assert_eq!(
        local_ticks(&half_hourly, "2026-10-24T23:45:00Z", 5),
        [
            "2026-10-25 02:00:00 CEST",
            "2026-10-25 02:30:00 CEST",
            "2026-10-25 02:00:00 CET",
            "2026-10-25 02:30:00 CET",
            "2026-10-25 03:00:00 CET",
        ]
    );
    for (from, until) in [
        ("2026-03-28T20:00:00Z", "2026-03-29T06:00:00Z"),
        ("2026-10-24T20:00:00Z", "2026-10-25T06:00:00Z"),
    ] {
        let gaps = intervals(&half_hourly, from, until);
        assert_eq!(gaps.len(), 20);
        assert!(gaps.iter().all(|gap| *gap == 1800), "{gaps:?}");
    }
}

#[test]
fn berlin_hourly_from_inside_the_repeated_hour() {
    let hourly = zoned("0 * * * *", "Europe/Berlin");
    // At 02:50 CEST the next top of the hour is 02:00 CET, not 03:00 CET.
    assert_eq!(
        local_ticks(&hourly, "2026-10-25T00:50:00Z", 2),
        ["2026-10-25 02:00:00 CET", "2026-10-25 03:00:00 CET"]
    );
    assert_eq!(
        local_ticks(&hourly, "2026-10-25T01:10:00Z", 1),
        ["2026-10-25 03:00:00 CET"]
    );
    assert_eq!(
        ticks(
            &zoned("*/5 * * * *", "Europe/Berlin"),
            "2026-03-29T00:50:00Z",
            2
        ),
        ["2026-03-29T00:55:00Z", "2026-03-29T01:00:00Z"]
    );
}

#[test]
fn berlin_several_skipped_readings_collapse_into_one_tick() {
    let twice = zoned("0,30 2 * * *", "Europe/Berlin");
    assert_eq!(
        local_ticks(&twice, "2026-03-28T12:00:00Z", 3),
        [
            "2026-03-29 03:00:00 CEST",
            "2026-03-30 02:00:00 CEST",
            "2026-03-30 02:30:00 CEST"
        ]
    );
    // A skipped reading and a real one landing on the same instant fire once.
    assert_eq!(
        local_ticks(
            &zoned("0 2,3 * * *", "Europe/Berlin"),
            "2026-03-28T12:00:00Z",
            2
        ),
        ["2026-03-29 03:00:00 CEST", "2026-03-30 02:00:00 CEST"]
    );
    // Every two hours is a wall-clock schedule: the 02:00 tick moves to the end of the gap.
    assert_eq!(
        local_ticks(
            &zoned("0 */2 * * *", "Europe/Berlin"),
            "2026-03-28T22:30:00Z",
            3
        ),
        [
            "2026-03-29 00:00:00 CET",
            "2026-03-29 03:00:00 CEST",
            "2026-03-29 04:00:00 CEST"
        ]
    );
}

// Daylight saving, America/New_York: 2026-03-08 02:00 EST -> 03:00 EDT (07:00 UTC), and
// 2026-11-01 02:00 EDT -> 01:00 EST (06:00 UTC).

#[test]
fn new_york_daily_time_in_the_spring_gap_fires_once_at_the_end_of_the_gap() {
    let daily = zoned("30 2 * * *", "America/New_York");
    assert_eq!(
        local_ticks(&daily, "2026-03-06T12:00:00Z", 3),
        [
            "2026-03-07 02:30:00 EST",
            "2026-03-08 03:00:00 EDT",
            "2026-03-09 02:30:00 EDT"
        ]
    );
    assert_eq!(
        ticks(&daily, "2026-03-07T12:00:00Z", 1),
        ["2026-03-08T07:00:00Z"]
    );
}

#[test]
fn new_york_daily_time_in_the_repeated_hour_fires_at_its_first_occurrence_only() {
    // 02:30 is not repeated in New York (01:00-01:59 is): it fires once, in EST.
    assert_eq!(
        local_ticks(
            &zoned("30 2 * * *", "America/New_York"),
            "2026-10-30T12:00:00Z",
            3
        ),
        [
            "2026-10-31 02:30:00 EDT",
            "2026-11-01 02:30:00 EST",
            "2026-11-02 02:30:00 EST"
        ]
    );
    assert_eq!(
        local_ticks(
            &zoned("30 1 * * *", "America/New_York"),
            "2026-10-30T12:00:00Z",
            3
        ),
        [
            "2026-10-31 01:30:00 EDT",
            "2026-11-01 01:30:00 EDT",
            "2026-11-02 01:30:00 EST"
        ]
    );
}

#[test]
fn new_york_every_30_minutes_keeps_real_time_across_both_changes() {
    let half_hourly = zoned("*/30 * * * *", "America/New_York");
    assert_eq!(
        local_ticks(&half_hourly, "2026-03-08T06:15:00Z", 3),
        [
            "2026-03-08 01:30:00 EST",
            "2026-03-08 03:00:00 EDT",
            "2026-03-08 03:30:00 EDT"
        ]
    );
    assert_eq!(
        local_ticks(&half_hourly, "2026-11-01T04:15:00Z", 6),
        [
            "2026-11-01 00:30:00 EDT",
            "2026-11-01 01:00:00 EDT",
            "2026-11-01 01:30:00 EDT",
            "2026-11-01 01:00:00 EST",
            "2026-11-01 01:30:00 EST",
            "2026-11-01 02:00:00 EST",
        ]
    );
    for (from, until) in [
        ("2026-03-08T03:00:00Z", "2026-03-08T12:00:00Z"),
        ("2026-11-01T03:00:00Z", "2026-11-01T12:00:00Z"),
    ] {
        let gaps = intervals(&half_hourly, from, until);
        assert_eq!(gaps.len(), 18);
        assert!(gaps.iter().all(|gap| *gap == 1800), "{gaps:?}");
    }
}

#[test]
fn interval_schedules_keep_their_cadence_in_every_zone() {
    let windows = [
        ("UTC", "2026-03-28T00:00:00Z", "2026-03-30T00:00:00Z"),
        (
            "Europe/Berlin",
            "2026-03-28T00:00:00Z",
            "2026-03-30T00:00:00Z",
        ),
        (
            "Europe/Berlin",
            "2026-10-24T00:00:00Z",
            "2026-10-26T00:00:00Z",
        ),
        (
            "America/New_York",
            "2026-03-07T12:00:00Z",
            "2026-03-09T12:00:00Z",
        ),
        (
            "America/New_York",
            "2026-10-31T12:00:00Z",
            "2026-11-02T12:00:00Z",
        ),
    ];
    for (expr, interval) in [
        ("*/5 * * * *", 300),
        ("0 * * * *", 3600),
        ("0 */15 * * * *", 900),
    ] {
        for (zone, from, until) in windows {
            let gaps = intervals(&zoned(expr, zone), from, until);
            assert_eq!(
                gaps.len() as i64,
                2 * 86_400 / interval,
                "{expr} in {zone} from {from}"
            );
            assert!(
                gaps.iter().all(|gap| *gap == interval),
                "{expr} in {zone} from {from}: {gaps:?}"
            );
        }
    }
}

#[test]
fn daily_schedules_fire_once_on_every_day_of_a_year_with_both_changes() {
    for (expr, zone) in [
        ("30 2 * * *", "Europe/Berlin"),
        ("30 1 * * *", "America/New_York"),
        ("30 2 * * *", "America/New_York"),
    ] {
        let daily = zoned(expr, zone);
        let local_days: Vec<String> = local_ticks(&daily, "2025-12-31T23:00:00Z", 365)
            .into_iter()
            .map(|time| time[..10].to_owned())
            .collect();
        let mut expected = Vec::new();
        let mut day = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        while day.year() == 2026 {
            expected.push(day.to_string());
            day = day.succ_opt().unwrap();
        }
        assert_eq!(local_days, expected, "{expr} in {zone}");
    }
}

/// The rules of the module docs applied minute by minute, the slow way: an hourly schedule
/// fires at every instant whose reading matches; any other fires, for each matching reading, at
/// the first instant whose reading is that late or later.
#[test]
fn next_after_agrees_with_the_rules_read_minute_by_minute() {
    let exprs = [
        "*/5 * * * *",
        "0 * * * *",
        "45 * * * *",
        "30 2 * * *",
        "0,30 2 * * *",
        "15 1-3 * * *",
        "*/20 2 * * *",
        "0 */2 * * *",
        "* 2 * * *",
        "59 1 * * *",
    ];
    let windows = [
        ("Europe/Berlin", "2026-03-28T12:00:00Z"),
        ("Europe/Berlin", "2026-10-24T12:00:00Z"),
        ("America/New_York", "2026-03-07T18:00:00Z"),
        ("America/New_York", "2026-10-31T18:00:00Z"),
    ];
    for (zone, start) in windows {
        let start = at(start).unix_seconds();
        let instants: Vec<i64> = (1..=36 * 60).map(|minute| start + minute * 60).collect();
        for expr in exprs {
            let schedule = zoned(expr, zone);
            let readings: Vec<NaiveDateTime> = instants
                .iter()
                .map(|i| schedule.local(*i).unwrap())
                .collect();
            let expected: Vec<i64> = if schedule.fields.hours == ALL_HOURS {
                let firing = instants
                    .iter()
                    .zip(&readings)
                    .filter(|(_, reading)| reading_matches(&schedule, reading));
                firing.map(|(instant, _)| *instant).collect()
            } else {
                let latest_so_far: Vec<NaiveDateTime> = readings
                    .iter()
                    .scan(readings[0], |latest, reading| {
                        *latest = (*latest).max(*reading);
                        Some(*latest)
                    })
                    .collect();
                let mut firing = std::collections::BTreeSet::new();
                let mut reading = schedule.local(start).unwrap() + TimeDelta::minutes(1);
                while reading <= latest_so_far[latest_so_far.len() - 1] {
                    if reading_matches(&schedule, &reading) {
                        firing.insert(
                            instants[latest_so_far.partition_point(|latest| *latest < reading)],
                        );
                    }
                    reading += TimeDelta::minutes(1);
                }
                firing.into_iter().collect()
            };
            assert!(!expected.is_empty());
            // From every minute of the window, the next tick is the next one the rules give.
            for from in std::iter::once(start).chain(instants.iter().copied()) {
                let Some(want) = expected.get(expected.partition_point(|tick| *tick <= from))
                else {
                    break;
                };
                let got = schedule
                    .next_after(Tick::from_unix_seconds(from))
                    .map(Tick::unix_seconds);
                assert_eq!(
                    got,
                    Some(*want),
                    "{expr} in {zone} after {}",
                    Tick::from_unix_seconds(from)
                );
            }
        }
    }
}

fn reading_matches(schedule: &Schedule, reading: &NaiveDateTime) -> bool {
    let fields = &schedule.fields;
    fields.seconds.contains(reading.second())
        && fields.minutes.contains(reading.minute())
        && fields.hours.contains(reading.hour())
        && fields.months.contains(reading.month())
        && schedule.day_matches(reading.year(), reading.month(), reading.day())
}

// Due ticks and catch-up.

const HOUR: i64 = 3600;

#[test]
fn nothing_is_due_between_ticks() {
    let hourly = schedule("0 * * * *");
    let created = at("2026-01-01T00:00:00Z");
    let fired = Some(at("2026-01-01T10:00:00Z"));
    for catch_up in [CatchUp::Latest, CatchUp::None] {
        let decided = due(
            &hourly,
            fired,
            created,
            at("2026-01-01T10:59:59Z"),
            catch_up,
            DEFAULT_GRACE,
        );
        assert_eq!(decided, Due::NOTHING);
    }
    assert_eq!(
        next_due(&hourly, fired, created, at("2026-01-01T10:30:00Z")),
        Some(at("2026-01-01T11:00:00Z"))
    );
}

#[test]
fn a_tick_on_time_fires_under_both_policies() {
    let hourly = schedule("0 * * * *");
    let created = at("2026-01-01T00:00:00Z");
    let fired = Some(at("2026-01-01T10:00:00Z"));
    let expected = Due {
        fire: Some(at("2026-01-01T11:00:00Z")),
        skipped: 0,
        latest: Some(at("2026-01-01T11:00:00Z")),
    };
    for catch_up in [CatchUp::Latest, CatchUp::None] {
        assert_eq!(
            due(
                &hourly,
                fired,
                created,
                at("2026-01-01T11:00:05Z"),
                catch_up,
                DEFAULT_GRACE
            ),
            expected
        );
    }
    // Once fired, it is settled; the next look is at the following tick.
    let now = at("2026-01-01T11:00:05Z");
    assert_eq!(
        due(
            &hourly,
            expected.fire,
            created,
            now,
            CatchUp::Latest,
            DEFAULT_GRACE
        ),
        Due::NOTHING
    );
    assert_eq!(
        next_due(&hourly, expected.fire, created, now),
        Some(at("2026-01-01T12:00:00Z"))
    );
}

#[test]
fn after_a_long_outage_latest_fires_once_and_reports_the_rest() {
    let hourly = schedule("0 * * * *");
    let created = at("2026-01-01T00:00:00Z");
    let fired = Some(at("2026-01-01T10:00:00Z"));
    // Down from 10:00 on the 1st to 15:20 on the 4th: 13 + 24 + 24 + 16 ticks came due.
    let now = at("2026-01-04T15:20:00Z");
    assert_eq!(
        due(&hourly, fired, created, now, CatchUp::Latest, DEFAULT_GRACE),
        Due {
            fire: Some(at("2026-01-04T15:00:00Z")),
            skipped: 76,
            latest: Some(at("2026-01-04T15:00:00Z")),
        }
    );
    assert_eq!(
        due(&hourly, fired, created, now, CatchUp::None, DEFAULT_GRACE),
        Due {
            fire: None,
            skipped: 77,
            latest: Some(at("2026-01-04T15:00:00Z")),
        }
    );
    // Under `none` the wait is for the next tick, not a replay of the missed ones.
    assert_eq!(
        next_due(&hourly, fired, created, now),
        Some(at("2026-01-04T16:00:00Z"))
    );
}

#[test]
fn none_fires_within_the_grace_and_not_a_second_later() {
    let hourly = schedule("0 * * * *");
    let created = at("2026-01-01T00:00:00Z");
    let fired = Some(at("2026-01-01T10:00:00Z"));
    let tick = at("2026-01-01T11:00:00Z");
    let after = |seconds: i64| Tick::from_unix_seconds(tick.unix_seconds() + seconds);
    let grace = Duration::from_secs(60);
    assert_eq!(
        due(&hourly, fired, created, after(60), CatchUp::None, grace).fire,
        Some(tick)
    );
    let late = due(&hourly, fired, created, after(61), CatchUp::None, grace);
    assert_eq!(
        (late.fire, late.skipped, late.latest),
        (None, 1, Some(tick))
    );
    assert_eq!(
        due(&hourly, fired, created, after(61), CatchUp::Latest, grace).fire,
        Some(tick)
    );
    assert_eq!(
        due(
            &hourly,
            fired,
            created,
            after(2 * HOUR - 1),
            CatchUp::None,
            Duration::from_secs(2 * 3600)
        )
        .fire,
        Some(at("2026-01-01T12:00:00Z"))
    );
}

#[test]
fn a_job_that_never_fired_starts_at_its_creation() {
    let hourly = schedule("0 * * * *");
    let exactly = at("2026-01-01T10:00:00Z");
    let decided = due(
        &hourly,
        None,
        exactly,
        exactly,
        CatchUp::Latest,
        DEFAULT_GRACE,
    );
    assert_eq!(decided.fire, Some(exactly));
    let created = at("2026-01-01T10:00:01Z");
    assert_eq!(
        due(
            &hourly,
            None,
            created,
            at("2026-01-01T10:30:00Z"),
            CatchUp::Latest,
            DEFAULT_GRACE
        ),
        Due::NOTHING
    );
    assert_eq!(
        next_due(&hourly, None, created, created),
        Some(at("2026-01-01T11:00:00Z"))
    );
    // A tick fired before the job was created again (a new schedule) does not pull in older ticks.
    let decided = due(
        &hourly,
        Some(at("2025-12-01T00:00:00Z")),
        created,
        at("2026-01-01T12:30:00Z"),
        CatchUp::Latest,
        DEFAULT_GRACE,
    );
    assert_eq!(
        (decided.fire, decided.skipped),
        (Some(at("2026-01-01T12:00:00Z")), 1)
    );
}

#[test]
fn a_clock_behind_the_last_fired_tick_fires_nothing() {
    let hourly = schedule("0 * * * *");
    let fired = Some(at("2026-01-01T12:00:00Z"));
    let now = at("2026-01-01T11:30:00Z");
    assert_eq!(
        due(
            &hourly,
            fired,
            at("2026-01-01T00:00:00Z"),
            now,
            CatchUp::Latest,
            DEFAULT_GRACE
        ),
        Due::NOTHING
    );
    assert_eq!(
        next_due(&hourly, fired, at("2026-01-01T00:00:00Z"), now),
        Some(at("2026-01-01T13:00:00Z"))
    );
}

#[test]
fn the_skipped_count_stops_at_its_limit_and_the_latest_tick_is_exact() {
    let every_second = schedule("* * * * * *");
    let fired = Some(at("2026-01-01T00:00:00Z"));
    let now = at("2026-01-08T07:06:05Z");
    let decided = due(
        &every_second,
        fired,
        at("2025-01-01T00:00:00Z"),
        now,
        CatchUp::Latest,
        DEFAULT_GRACE,
    );
    assert_eq!(
        decided,
        Due {
            fire: Some(now),
            skipped: SKIPPED_COUNT_LIMIT,
            latest: Some(now)
        }
    );
}

#[test]
fn the_latest_tick_is_found_across_a_daylight_saving_change() {
    let daily = zoned("30 2 * * *", "Europe/Berlin");
    let fired = Some(at("2026-03-25T01:30:00Z"));
    let decided = due(
        &daily,
        fired,
        at("2026-01-01T00:00:00Z"),
        at("2026-03-29T01:00:30Z"),
        CatchUp::Latest,
        DEFAULT_GRACE,
    );
    assert_eq!(
        decided,
        Due {
            fire: Some(at("2026-03-29T01:00:00Z")),
            skipped: 3,
            latest: Some(at("2026-03-29T01:00:00Z")),
        }
    );
    let half_hourly = zoned("*/30 * * * *", "Europe/Berlin");
    let decided = due(
        &half_hourly,
        Some(at("2026-10-24T23:30:00Z")),
        at("2026-01-01T00:00:00Z"),
        at("2026-10-25T01:40:00Z"),
        CatchUp::Latest,
        DEFAULT_GRACE,
    );
    assert_eq!(
        (decided.fire, decided.skipped),
        (Some(at("2026-10-25T01:30:00Z")), 3)
    );
}

#[test]
fn due_is_a_pure_function_of_its_inputs() {
    let cases = [
        (
            zoned("*/30 * * * *", "Europe/Berlin"),
            "2026-10-24T20:00:00Z",
            "2026-10-25T04:10:00Z",
        ),
        (
            zoned("30 2 * * *", "America/New_York"),
            "2026-03-01T07:30:00Z",
            "2026-03-09T12:00:00Z",
        ),
        (
            schedule("0 0 29 2 *"),
            "2024-02-29T00:00:00Z",
            "2031-01-01T00:00:00Z",
        ),
    ];
    for (schedule, fired, now) in cases {
        let (fired, now, created) = (Some(at(fired)), at(now), at("2020-01-01T00:00:00Z"));
        let read_back: Schedule =
            serde_json::from_str(&serde_json::to_string(&schedule).unwrap()).unwrap();
        for catch_up in [CatchUp::Latest, CatchUp::None] {
            let first = due(&schedule, fired, created, now, catch_up, DEFAULT_GRACE);
            assert_eq!(
                due(&schedule, fired, created, now, catch_up, DEFAULT_GRACE),
                first
            );
            assert_eq!(
                due(&read_back, fired, created, now, catch_up, DEFAULT_GRACE),
                first
            );
            assert_eq!(
                next_due(&schedule, fired, created, now),
                next_due(&read_back, fired, created, now)
            );
        }
    }
}

// Job settings.

#[test]
fn overlap_and_catch_up_parse_with_defaults_and_clear_errors() {
    assert_eq!("forbid".parse(), Ok(Overlap::Forbid));
    assert_eq!("allow".parse(), Ok(Overlap::Allow));
    assert_eq!("replace".parse(), Ok(Overlap::Replace));
    assert_eq!(Overlap::default(), Overlap::Forbid);
    assert_eq!(
        "queue".parse::<Overlap>().unwrap_err().to_string(),
        "unknown overlap policy `queue`: use `forbid`, `allow` or `replace`"
    );
    assert_eq!("none".parse(), Ok(CatchUp::None));
    assert_eq!("latest".parse(), Ok(CatchUp::Latest));
    assert_eq!(CatchUp::default(), CatchUp::Latest);
    assert_eq!(
        "all".parse::<CatchUp>().unwrap_err().to_string(),
        "unknown catch-up policy `all`: use `latest` or `none`"
    );
}

#[test]
fn settings_serialize_as_their_names() {
    assert_eq!(
        serde_json::to_string(&Overlap::Replace).unwrap(),
        "\"replace\""
    );
    assert_eq!(serde_json::to_string(&CatchUp::None).unwrap(), "\"none\"");
    assert_eq!(
        serde_json::from_str::<CatchUp>("\"latest\"").unwrap(),
        CatchUp::Latest
    );
    let retry = Retry {
        retries: 3,
        backoff: Duration::from_secs(5),
    };
    assert_eq!(
        serde_json::from_str::<Retry>(&serde_json::to_string(&retry).unwrap()).unwrap(),
        retry
    );
    let decided = Due {
        fire: Some(at("2026-01-01T00:00:00Z")),
        skipped: 2,
        latest: Some(at("2026-01-01T00:00:00Z")),
    };
    assert_eq!(
        serde_json::from_str::<Due>(&serde_json::to_string(&decided).unwrap()).unwrap(),
        decided
    );
}

#[test]
fn retry_delay_doubles_from_the_base_up_to_the_cap() {
    let retry = Retry {
        retries: 5,
        backoff: Duration::from_secs(10),
    };
    let delays: Vec<u64> = (0..=5).map(|n| retry.delay(n).as_secs()).collect();
    assert_eq!(delays, [0, 10, 20, 40, 80, 160]);
    assert_eq!(retry.delay(10), RETRY_DELAY_CAP);
    assert_eq!(retry.delay(40), RETRY_DELAY_CAP);
    assert_eq!(retry.delay(u32::MAX), RETRY_DELAY_CAP);
    let above_cap = Retry {
        retries: 1,
        backoff: Duration::from_secs(7200),
    };
    assert_eq!(above_cap.delay(1), RETRY_DELAY_CAP);
    assert!(!retry.allows(0) && retry.allows(1) && retry.allows(5) && !retry.allows(6));
    assert!(!Retry::default().allows(1));
    assert_eq!(Retry::default().backoff, DEFAULT_BACKOFF);
}

#[test]
fn retry_parses_a_backoff_and_refuses_bad_ones() {
    assert_eq!(
        Retry::parse(3, "30s"),
        Ok(Retry {
            retries: 3,
            backoff: Duration::from_secs(30)
        })
    );
    assert_eq!(
        Retry::parse(1, "1m 30s").unwrap().backoff,
        Duration::from_secs(90)
    );
    assert_eq!(
        Retry::parse(1, "0s").unwrap_err().to_string(),
        "retry backoff `0s`: must be at least 1s"
    );
    assert_eq!(
        Retry::parse(1, "2h").unwrap_err().to_string(),
        "retry backoff `2h`: must be at most 1h, the longest delay between tries"
    );
    assert!(Retry::parse(1, "soon")
        .unwrap_err()
        .to_string()
        .starts_with("retry backoff `soon`: "));
}

// Values that go into raft commands.

#[test]
fn schedule_serializes_as_text_and_zone_and_is_parsed_again() {
    let berlin = zoned("30 2 * * *", "Europe/Berlin");
    let json = serde_json::to_string(&berlin).unwrap();
    assert_eq!(json, r#"{"expr":"30 2 * * *","timezone":"Europe/Berlin"}"#);
    assert_eq!(serde_json::from_str::<Schedule>(&json).unwrap(), berlin);
    let utc: Schedule = serde_json::from_str(r#"{"expr":"@daily"}"#).unwrap();
    assert_eq!(utc, schedule("@daily"));
    let err = serde_json::from_str::<Schedule>(r#"{"expr":"61 * * * *"}"#).unwrap_err();
    assert!(err.to_string().contains("minute field `61`"), "{err}");
    assert_eq!(berlin.to_string(), "30 2 * * * (Europe/Berlin)");
    assert_eq!(schedule(" @daily ").to_string(), "@daily");
}

#[test]
fn tick_is_unix_seconds_on_the_wire_and_rfc3339_in_text() {
    let tick = at("2026-03-29T01:00:00Z");
    assert_eq!(
        serde_json::to_string(&tick).unwrap(),
        tick.unix_seconds().to_string()
    );
    assert_eq!(tick.to_string(), "2026-03-29T01:00:00Z");
    assert_eq!(
        Tick::from_unix_seconds(i64::MAX).to_string(),
        format!("@{}", i64::MAX)
    );
    let system = SystemTime::UNIX_EPOCH + Duration::from_millis(1_500);
    assert_eq!(Tick::from_system_time(system), Tick::from_unix_seconds(1));
    let before = SystemTime::UNIX_EPOCH - Duration::from_millis(1_500);
    assert_eq!(Tick::from_system_time(before), Tick::from_unix_seconds(-2));
}
