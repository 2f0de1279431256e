//! Daylight saving cases shared by `dst.rs` (celeriac's slots) and `celery_differential.rs` (which
//! checks the `celery` column against real Celery).
//!
//! `ours` is what celeriac must return; `celery` is what Celery 5.7 returns, stepping
//! `remaining_estimate` from each previous slot as Beat does. Both are the first slots strictly
//! after `after`, as UTC instants; the comments give the same instants on the zone's clock.
//! `difference` names the item of the list in `src/crontab.rs`'s module docs that explains why the
//! two columns differ.

/// Why celeriac and Celery 5.7 disagree on a case (the numbered list in `crontab.rs`'s docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Difference {
    /// Both give the same slots.
    None,
    /// 1. A fixed time in a spring-forward gap: celeriac fires at the end of the gap, Celery at
    ///    the wall time read with the offset from before the change.
    SpringFixedTime,
    /// 2. A crontab that is not fixed-time fires on both passes of a repeated hour; Celery skips
    ///    the second pass.
    FallRepeatedHour,
    /// 3. Several slots in a spring-forward gap: celeriac skips them, Celery fires once.
    SpringSeveralSlotsInGap,
    /// 4. A 30-minute spring-forward: Celery fires the missing `0 * * * *` slot at 02:30.
    SpringHalfHourShift,
}

/// One crontab around one clock change.
#[derive(Debug, Clone, Copy)]
pub struct DstCase {
    /// IANA zone.
    pub zone: &'static str,
    /// `crontab.from_string` text.
    pub spec: &'static str,
    /// The slots are the first ones strictly after this instant.
    pub after: &'static str,
    /// celeriac's slots.
    pub ours: &'static [&'static str],
    /// Celery 5.7's slots.
    pub celery: &'static [&'static str],
    /// Why the columns differ.
    pub difference: Difference,
}

pub const DST_CASES: &[DstCase] = &[
    DstCase {
        zone: "America/New_York",
        spec: "30 2 * * *",
        after: "2025-03-08T12:00:00Z",
        // 09 03:00 EDT, 10 02:30 EDT, 11 02:30 EDT
        ours: &["2025-03-09T07:00:00Z", "2025-03-10T06:30:00Z", "2025-03-11T06:30:00Z"],
        // 09 03:30 EDT, 10 02:30 EDT, 11 02:30 EDT
        celery: &["2025-03-09T07:30:00Z", "2025-03-10T06:30:00Z", "2025-03-11T06:30:00Z"],
        difference: Difference::SpringFixedTime,
    },
    DstCase {
        zone: "America/New_York",
        spec: "30 1 * * *",
        after: "2025-03-08T12:00:00Z",
        // 09 01:30 EST, 10 01:30 EDT, 11 01:30 EDT
        ours: &["2025-03-09T06:30:00Z", "2025-03-10T05:30:00Z", "2025-03-11T05:30:00Z"],
        // 09 01:30 EST, 10 01:30 EDT, 11 01:30 EDT
        celery: &["2025-03-09T06:30:00Z", "2025-03-10T05:30:00Z", "2025-03-11T05:30:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "America/New_York",
        spec: "15,45 2 * * *",
        after: "2025-03-08T12:00:00Z",
        // 10 02:15 EDT, 10 02:45 EDT, 11 02:15 EDT
        ours: &["2025-03-10T06:15:00Z", "2025-03-10T06:45:00Z", "2025-03-11T06:15:00Z"],
        // 09 03:15 EDT, 10 02:15 EDT, 10 02:45 EDT
        celery: &["2025-03-09T07:15:00Z", "2025-03-10T06:15:00Z", "2025-03-10T06:45:00Z"],
        difference: Difference::SpringSeveralSlotsInGap,
    },
    DstCase {
        zone: "America/New_York",
        spec: "0 * * * *",
        after: "2025-03-09T04:30:00Z",
        // 09 00:00 EST, 09 01:00 EST, 09 03:00 EDT, 09 04:00 EDT, 09 05:00 EDT
        ours: &[
            "2025-03-09T05:00:00Z",
            "2025-03-09T06:00:00Z",
            "2025-03-09T07:00:00Z",
            "2025-03-09T08:00:00Z",
            "2025-03-09T09:00:00Z",
        ],
        // 09 00:00 EST, 09 01:00 EST, 09 03:00 EDT, 09 04:00 EDT, 09 05:00 EDT
        celery: &[
            "2025-03-09T05:00:00Z",
            "2025-03-09T06:00:00Z",
            "2025-03-09T07:00:00Z",
            "2025-03-09T08:00:00Z",
            "2025-03-09T09:00:00Z",
        ],
        difference: Difference::None,
    },
    DstCase {
        zone: "America/New_York",
        spec: "*/15 * * * *",
        after: "2025-03-09T06:10:00Z",
        // 09 01:15 EST, 09 01:30 EST, 09 01:45 EST, 09 03:00 EDT, 09 03:15 EDT, 09 03:30 EDT
        ours: &[
            "2025-03-09T06:15:00Z",
            "2025-03-09T06:30:00Z",
            "2025-03-09T06:45:00Z",
            "2025-03-09T07:00:00Z",
            "2025-03-09T07:15:00Z",
            "2025-03-09T07:30:00Z",
        ],
        // 09 01:15 EST, 09 01:30 EST, 09 01:45 EST, 09 03:00 EDT, 09 03:15 EDT, 09 03:30 EDT
        celery: &[
            "2025-03-09T06:15:00Z",
            "2025-03-09T06:30:00Z",
            "2025-03-09T06:45:00Z",
            "2025-03-09T07:00:00Z",
            "2025-03-09T07:15:00Z",
            "2025-03-09T07:30:00Z",
        ],
        difference: Difference::None,
    },
    DstCase {
        zone: "America/New_York",
        spec: "30 2 * * *",
        after: "2025-11-01T12:00:00Z",
        // 02 02:30 EST, 03 02:30 EST, 04 02:30 EST
        ours: &["2025-11-02T07:30:00Z", "2025-11-03T07:30:00Z", "2025-11-04T07:30:00Z"],
        // 02 02:30 EST, 03 02:30 EST, 04 02:30 EST
        celery: &["2025-11-02T07:30:00Z", "2025-11-03T07:30:00Z", "2025-11-04T07:30:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "America/New_York",
        spec: "30 1 * * *",
        after: "2025-11-01T12:00:00Z",
        // 02 01:30 EDT, 03 01:30 EST, 04 01:30 EST
        ours: &["2025-11-02T05:30:00Z", "2025-11-03T06:30:00Z", "2025-11-04T06:30:00Z"],
        // 02 01:30 EDT, 03 01:30 EST, 04 01:30 EST
        celery: &["2025-11-02T05:30:00Z", "2025-11-03T06:30:00Z", "2025-11-04T06:30:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "America/New_York",
        spec: "15,45 2 * * *",
        after: "2025-11-01T12:00:00Z",
        // 02 02:15 EST, 02 02:45 EST, 03 02:15 EST
        ours: &["2025-11-02T07:15:00Z", "2025-11-02T07:45:00Z", "2025-11-03T07:15:00Z"],
        // 02 02:15 EST, 02 02:45 EST, 03 02:15 EST
        celery: &["2025-11-02T07:15:00Z", "2025-11-02T07:45:00Z", "2025-11-03T07:15:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "America/New_York",
        spec: "0 * * * *",
        after: "2025-11-02T03:30:00Z",
        // 02 00:00 EDT, 02 01:00 EDT, 02 01:00 EST, 02 02:00 EST, 02 03:00 EST
        ours: &[
            "2025-11-02T04:00:00Z",
            "2025-11-02T05:00:00Z",
            "2025-11-02T06:00:00Z",
            "2025-11-02T07:00:00Z",
            "2025-11-02T08:00:00Z",
        ],
        // 02 00:00 EDT, 02 01:00 EDT, 02 02:00 EST, 02 03:00 EST, 02 04:00 EST
        celery: &[
            "2025-11-02T04:00:00Z",
            "2025-11-02T05:00:00Z",
            "2025-11-02T07:00:00Z",
            "2025-11-02T08:00:00Z",
            "2025-11-02T09:00:00Z",
        ],
        difference: Difference::FallRepeatedHour,
    },
    DstCase {
        zone: "America/New_York",
        spec: "*/15 * * * *",
        after: "2025-11-02T04:50:00Z",
        // 02 01:00 EDT, 02 01:15 EDT, 02 01:30 EDT, 02 01:45 EDT, 02 01:00 EST, 02 01:15 EST, 02 01:30 EST, 02 01:45 EST, 02 02:00 EST, 02 02:15 EST
        ours: &[
            "2025-11-02T05:00:00Z",
            "2025-11-02T05:15:00Z",
            "2025-11-02T05:30:00Z",
            "2025-11-02T05:45:00Z",
            "2025-11-02T06:00:00Z",
            "2025-11-02T06:15:00Z",
            "2025-11-02T06:30:00Z",
            "2025-11-02T06:45:00Z",
            "2025-11-02T07:00:00Z",
            "2025-11-02T07:15:00Z",
        ],
        // 02 01:00 EDT, 02 01:15 EDT, 02 01:30 EDT, 02 01:45 EDT, 02 02:00 EST, 02 02:15 EST, 02 02:30 EST, 02 02:45 EST, 02 03:00 EST, 02 03:15 EST
        celery: &[
            "2025-11-02T05:00:00Z",
            "2025-11-02T05:15:00Z",
            "2025-11-02T05:30:00Z",
            "2025-11-02T05:45:00Z",
            "2025-11-02T07:00:00Z",
            "2025-11-02T07:15:00Z",
            "2025-11-02T07:30:00Z",
            "2025-11-02T07:45:00Z",
            "2025-11-02T08:00:00Z",
            "2025-11-02T08:15:00Z",
        ],
        difference: Difference::FallRepeatedHour,
    },
    DstCase {
        zone: "Europe/London",
        spec: "30 2 * * *",
        after: "2025-03-29T12:00:00Z",
        // 30 02:30 BST, 31 02:30 BST, 01 02:30 BST
        ours: &["2025-03-30T01:30:00Z", "2025-03-31T01:30:00Z", "2025-04-01T01:30:00Z"],
        // 30 02:30 BST, 31 02:30 BST, 01 02:30 BST
        celery: &["2025-03-30T01:30:00Z", "2025-03-31T01:30:00Z", "2025-04-01T01:30:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "Europe/London",
        spec: "30 1 * * *",
        after: "2025-03-29T12:00:00Z",
        // 30 02:00 BST, 31 01:30 BST, 01 01:30 BST
        ours: &["2025-03-30T01:00:00Z", "2025-03-31T00:30:00Z", "2025-04-01T00:30:00Z"],
        // 30 02:30 BST, 31 01:30 BST, 01 01:30 BST
        celery: &["2025-03-30T01:30:00Z", "2025-03-31T00:30:00Z", "2025-04-01T00:30:00Z"],
        difference: Difference::SpringFixedTime,
    },
    DstCase {
        zone: "Europe/London",
        spec: "15,45 2 * * *",
        after: "2025-03-29T12:00:00Z",
        // 30 02:15 BST, 30 02:45 BST, 31 02:15 BST
        ours: &["2025-03-30T01:15:00Z", "2025-03-30T01:45:00Z", "2025-03-31T01:15:00Z"],
        // 30 02:15 BST, 30 02:45 BST, 31 02:15 BST
        celery: &["2025-03-30T01:15:00Z", "2025-03-30T01:45:00Z", "2025-03-31T01:15:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "Europe/London",
        spec: "15,45 1 * * *",
        after: "2025-03-29T12:00:00Z",
        // 31 01:15 BST, 31 01:45 BST, 01 01:15 BST
        ours: &["2025-03-31T00:15:00Z", "2025-03-31T00:45:00Z", "2025-04-01T00:15:00Z"],
        // 30 02:15 BST, 31 01:15 BST, 31 01:45 BST
        celery: &["2025-03-30T01:15:00Z", "2025-03-31T00:15:00Z", "2025-03-31T00:45:00Z"],
        difference: Difference::SpringSeveralSlotsInGap,
    },
    DstCase {
        zone: "Europe/London",
        spec: "0 * * * *",
        after: "2025-03-29T22:30:00Z",
        // 29 23:00 GMT, 30 00:00 GMT, 30 02:00 BST, 30 03:00 BST
        ours: &["2025-03-29T23:00:00Z", "2025-03-30T00:00:00Z", "2025-03-30T01:00:00Z", "2025-03-30T02:00:00Z"],
        // 29 23:00 GMT, 30 00:00 GMT, 30 02:00 BST, 30 03:00 BST
        celery: &["2025-03-29T23:00:00Z", "2025-03-30T00:00:00Z", "2025-03-30T01:00:00Z", "2025-03-30T02:00:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "Europe/London",
        spec: "*/15 * * * *",
        after: "2025-03-30T00:20:00Z",
        // 30 00:30 GMT, 30 00:45 GMT, 30 02:00 BST, 30 02:15 BST, 30 02:30 BST
        ours: &[
            "2025-03-30T00:30:00Z",
            "2025-03-30T00:45:00Z",
            "2025-03-30T01:00:00Z",
            "2025-03-30T01:15:00Z",
            "2025-03-30T01:30:00Z",
        ],
        // 30 00:30 GMT, 30 00:45 GMT, 30 02:00 BST, 30 02:15 BST, 30 02:30 BST
        celery: &[
            "2025-03-30T00:30:00Z",
            "2025-03-30T00:45:00Z",
            "2025-03-30T01:00:00Z",
            "2025-03-30T01:15:00Z",
            "2025-03-30T01:30:00Z",
        ],
        difference: Difference::None,
    },
    DstCase {
        zone: "Europe/London",
        spec: "30 2 * * *",
        after: "2025-10-25T12:00:00Z",
        // 26 02:30 GMT, 27 02:30 GMT, 28 02:30 GMT, 29 02:30 GMT
        ours: &["2025-10-26T02:30:00Z", "2025-10-27T02:30:00Z", "2025-10-28T02:30:00Z", "2025-10-29T02:30:00Z"],
        // 26 02:30 GMT, 27 02:30 GMT, 28 02:30 GMT, 29 02:30 GMT
        celery: &["2025-10-26T02:30:00Z", "2025-10-27T02:30:00Z", "2025-10-28T02:30:00Z", "2025-10-29T02:30:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "Europe/London",
        spec: "30 1 * * *",
        after: "2025-10-25T12:00:00Z",
        // 26 01:30 BST, 27 01:30 GMT, 28 01:30 GMT, 29 01:30 GMT
        ours: &["2025-10-26T00:30:00Z", "2025-10-27T01:30:00Z", "2025-10-28T01:30:00Z", "2025-10-29T01:30:00Z"],
        // 26 01:30 BST, 27 01:30 GMT, 28 01:30 GMT, 29 01:30 GMT
        celery: &["2025-10-26T00:30:00Z", "2025-10-27T01:30:00Z", "2025-10-28T01:30:00Z", "2025-10-29T01:30:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "Europe/London",
        spec: "15,45 2 * * *",
        after: "2025-10-25T12:00:00Z",
        // 26 02:15 GMT, 26 02:45 GMT, 27 02:15 GMT, 27 02:45 GMT
        ours: &["2025-10-26T02:15:00Z", "2025-10-26T02:45:00Z", "2025-10-27T02:15:00Z", "2025-10-27T02:45:00Z"],
        // 26 02:15 GMT, 26 02:45 GMT, 27 02:15 GMT, 27 02:45 GMT
        celery: &["2025-10-26T02:15:00Z", "2025-10-26T02:45:00Z", "2025-10-27T02:15:00Z", "2025-10-27T02:45:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "Europe/London",
        spec: "15,45 1 * * *",
        after: "2025-10-25T12:00:00Z",
        // 26 01:15 BST, 26 01:45 BST, 26 01:15 GMT, 26 01:45 GMT
        ours: &["2025-10-26T00:15:00Z", "2025-10-26T00:45:00Z", "2025-10-26T01:15:00Z", "2025-10-26T01:45:00Z"],
        // 26 01:15 BST, 26 01:45 BST, 27 01:15 GMT, 27 01:45 GMT
        celery: &["2025-10-26T00:15:00Z", "2025-10-26T00:45:00Z", "2025-10-27T01:15:00Z", "2025-10-27T01:45:00Z"],
        difference: Difference::FallRepeatedHour,
    },
    DstCase {
        zone: "Europe/London",
        spec: "0 * * * *",
        after: "2025-10-25T22:30:00Z",
        // 26 00:00 BST, 26 01:00 BST, 26 01:00 GMT, 26 02:00 GMT, 26 03:00 GMT
        ours: &[
            "2025-10-25T23:00:00Z",
            "2025-10-26T00:00:00Z",
            "2025-10-26T01:00:00Z",
            "2025-10-26T02:00:00Z",
            "2025-10-26T03:00:00Z",
        ],
        // 26 00:00 BST, 26 01:00 BST, 26 02:00 GMT, 26 03:00 GMT, 26 04:00 GMT
        celery: &[
            "2025-10-25T23:00:00Z",
            "2025-10-26T00:00:00Z",
            "2025-10-26T02:00:00Z",
            "2025-10-26T03:00:00Z",
            "2025-10-26T04:00:00Z",
        ],
        difference: Difference::FallRepeatedHour,
    },
    DstCase {
        zone: "Europe/London",
        spec: "*/15 * * * *",
        after: "2025-10-25T23:50:00Z",
        // 26 01:00 BST, 26 01:15 BST, 26 01:30 BST, 26 01:45 BST, 26 01:00 GMT, 26 01:15 GMT, 26 01:30 GMT, 26 01:45 GMT, 26 02:00 GMT, 26 02:15 GMT
        ours: &[
            "2025-10-26T00:00:00Z",
            "2025-10-26T00:15:00Z",
            "2025-10-26T00:30:00Z",
            "2025-10-26T00:45:00Z",
            "2025-10-26T01:00:00Z",
            "2025-10-26T01:15:00Z",
            "2025-10-26T01:30:00Z",
            "2025-10-26T01:45:00Z",
            "2025-10-26T02:00:00Z",
            "2025-10-26T02:15:00Z",
        ],
        // 26 01:00 BST, 26 01:15 BST, 26 01:30 BST, 26 01:45 BST, 26 02:00 GMT, 26 02:15 GMT, 26 02:30 GMT, 26 02:45 GMT, 26 03:00 GMT, 26 03:15 GMT
        celery: &[
            "2025-10-26T00:00:00Z",
            "2025-10-26T00:15:00Z",
            "2025-10-26T00:30:00Z",
            "2025-10-26T00:45:00Z",
            "2025-10-26T02:00:00Z",
            "2025-10-26T02:15:00Z",
            "2025-10-26T02:30:00Z",
            "2025-10-26T02:45:00Z",
            "2025-10-26T03:00:00Z",
            "2025-10-26T03:15:00Z",
        ],
        difference: Difference::FallRepeatedHour,
    },
    DstCase {
        zone: "Australia/Lord_Howe",
        spec: "30 2 * * *",
        after: "2025-10-04T00:00:00Z",
        // 05 02:30 UTC+11, 06 02:30 UTC+11, 07 02:30 UTC+11
        ours: &["2025-10-04T15:30:00Z", "2025-10-05T15:30:00Z", "2025-10-06T15:30:00Z"],
        // 05 02:30 UTC+11, 06 02:30 UTC+11, 07 02:30 UTC+11
        celery: &["2025-10-04T15:30:00Z", "2025-10-05T15:30:00Z", "2025-10-06T15:30:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "Australia/Lord_Howe",
        spec: "30 1 * * *",
        after: "2025-10-04T00:00:00Z",
        // 05 01:30 UTC+1030, 06 01:30 UTC+11, 07 01:30 UTC+11
        ours: &["2025-10-04T15:00:00Z", "2025-10-05T14:30:00Z", "2025-10-06T14:30:00Z"],
        // 05 01:30 UTC+1030, 06 01:30 UTC+11, 07 01:30 UTC+11
        celery: &["2025-10-04T15:00:00Z", "2025-10-05T14:30:00Z", "2025-10-06T14:30:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "Australia/Lord_Howe",
        spec: "15,45 2 * * *",
        after: "2025-10-04T00:00:00Z",
        // 05 02:45 UTC+11, 06 02:15 UTC+11, 06 02:45 UTC+11
        ours: &["2025-10-04T15:45:00Z", "2025-10-05T15:15:00Z", "2025-10-05T15:45:00Z"],
        // 05 02:45 UTC+11, 06 02:15 UTC+11, 06 02:45 UTC+11
        celery: &["2025-10-04T15:45:00Z", "2025-10-05T15:15:00Z", "2025-10-05T15:45:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "Australia/Lord_Howe",
        spec: "15 2 * * *",
        after: "2025-10-04T00:00:00Z",
        // 05 02:30 UTC+11, 06 02:15 UTC+11, 07 02:15 UTC+11
        ours: &["2025-10-04T15:30:00Z", "2025-10-05T15:15:00Z", "2025-10-06T15:15:00Z"],
        // 05 02:45 UTC+11, 06 02:15 UTC+11, 07 02:15 UTC+11
        celery: &["2025-10-04T15:45:00Z", "2025-10-05T15:15:00Z", "2025-10-06T15:15:00Z"],
        difference: Difference::SpringFixedTime,
    },
    DstCase {
        zone: "Australia/Lord_Howe",
        spec: "0 * * * *",
        after: "2025-10-04T13:10:00Z",
        // 05 00:00 UTC+1030, 05 01:00 UTC+1030, 05 03:00 UTC+11, 05 04:00 UTC+11
        ours: &["2025-10-04T13:30:00Z", "2025-10-04T14:30:00Z", "2025-10-04T16:00:00Z", "2025-10-04T17:00:00Z"],
        // 05 00:00 UTC+1030, 05 01:00 UTC+1030, 05 02:30 UTC+11, 05 03:00 UTC+11
        celery: &["2025-10-04T13:30:00Z", "2025-10-04T14:30:00Z", "2025-10-04T15:30:00Z", "2025-10-04T16:00:00Z"],
        difference: Difference::SpringHalfHourShift,
    },
    DstCase {
        zone: "Australia/Lord_Howe",
        spec: "*/15 * * * *",
        after: "2025-10-04T14:50:00Z",
        // 05 01:30 UTC+1030, 05 01:45 UTC+1030, 05 02:30 UTC+11, 05 02:45 UTC+11, 05 03:00 UTC+11, 05 03:15 UTC+11
        ours: &[
            "2025-10-04T15:00:00Z",
            "2025-10-04T15:15:00Z",
            "2025-10-04T15:30:00Z",
            "2025-10-04T15:45:00Z",
            "2025-10-04T16:00:00Z",
            "2025-10-04T16:15:00Z",
        ],
        // 05 01:30 UTC+1030, 05 01:45 UTC+1030, 05 02:30 UTC+11, 05 02:45 UTC+11, 05 03:00 UTC+11, 05 03:15 UTC+11
        celery: &[
            "2025-10-04T15:00:00Z",
            "2025-10-04T15:15:00Z",
            "2025-10-04T15:30:00Z",
            "2025-10-04T15:45:00Z",
            "2025-10-04T16:00:00Z",
            "2025-10-04T16:15:00Z",
        ],
        difference: Difference::None,
    },
    DstCase {
        zone: "Australia/Lord_Howe",
        spec: "30 2 * * *",
        after: "2025-04-05T00:00:00Z",
        // 06 02:30 UTC+1030, 07 02:30 UTC+1030, 08 02:30 UTC+1030, 09 02:30 UTC+1030
        ours: &["2025-04-05T16:00:00Z", "2025-04-06T16:00:00Z", "2025-04-07T16:00:00Z", "2025-04-08T16:00:00Z"],
        // 06 02:30 UTC+1030, 07 02:30 UTC+1030, 08 02:30 UTC+1030, 09 02:30 UTC+1030
        celery: &["2025-04-05T16:00:00Z", "2025-04-06T16:00:00Z", "2025-04-07T16:00:00Z", "2025-04-08T16:00:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "Australia/Lord_Howe",
        spec: "30 1 * * *",
        after: "2025-04-05T00:00:00Z",
        // 06 01:30 UTC+11, 07 01:30 UTC+1030, 08 01:30 UTC+1030, 09 01:30 UTC+1030
        ours: &["2025-04-05T14:30:00Z", "2025-04-06T15:00:00Z", "2025-04-07T15:00:00Z", "2025-04-08T15:00:00Z"],
        // 06 01:30 UTC+11, 07 01:30 UTC+1030, 08 01:30 UTC+1030, 09 01:30 UTC+1030
        celery: &["2025-04-05T14:30:00Z", "2025-04-06T15:00:00Z", "2025-04-07T15:00:00Z", "2025-04-08T15:00:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "Australia/Lord_Howe",
        spec: "15,45 2 * * *",
        after: "2025-04-05T00:00:00Z",
        // 06 02:15 UTC+1030, 06 02:45 UTC+1030, 07 02:15 UTC+1030, 07 02:45 UTC+1030
        ours: &["2025-04-05T15:45:00Z", "2025-04-05T16:15:00Z", "2025-04-06T15:45:00Z", "2025-04-06T16:15:00Z"],
        // 06 02:15 UTC+1030, 06 02:45 UTC+1030, 07 02:15 UTC+1030, 07 02:45 UTC+1030
        celery: &["2025-04-05T15:45:00Z", "2025-04-05T16:15:00Z", "2025-04-06T15:45:00Z", "2025-04-06T16:15:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "Australia/Lord_Howe",
        spec: "45 1 * * *",
        after: "2025-04-05T00:00:00Z",
        // 06 01:45 UTC+11, 07 01:45 UTC+1030, 08 01:45 UTC+1030, 09 01:45 UTC+1030
        ours: &["2025-04-05T14:45:00Z", "2025-04-06T15:15:00Z", "2025-04-07T15:15:00Z", "2025-04-08T15:15:00Z"],
        // 06 01:45 UTC+11, 07 01:45 UTC+1030, 08 01:45 UTC+1030, 09 01:45 UTC+1030
        celery: &["2025-04-05T14:45:00Z", "2025-04-06T15:15:00Z", "2025-04-07T15:15:00Z", "2025-04-08T15:15:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "Australia/Lord_Howe",
        spec: "15,45 1 * * *",
        after: "2025-04-05T00:00:00Z",
        // 06 01:15 UTC+11, 06 01:45 UTC+11, 06 01:45 UTC+1030, 07 01:15 UTC+1030
        ours: &["2025-04-05T14:15:00Z", "2025-04-05T14:45:00Z", "2025-04-05T15:15:00Z", "2025-04-06T14:45:00Z"],
        // 06 01:15 UTC+11, 06 01:45 UTC+11, 07 01:15 UTC+1030, 07 01:45 UTC+1030
        celery: &["2025-04-05T14:15:00Z", "2025-04-05T14:45:00Z", "2025-04-06T14:45:00Z", "2025-04-06T15:15:00Z"],
        difference: Difference::FallRepeatedHour,
    },
    DstCase {
        zone: "Australia/Lord_Howe",
        spec: "0 * * * *",
        after: "2025-04-05T12:10:00Z",
        // 06 00:00 UTC+11, 06 01:00 UTC+11, 06 02:00 UTC+1030, 06 03:00 UTC+1030
        ours: &["2025-04-05T13:00:00Z", "2025-04-05T14:00:00Z", "2025-04-05T15:30:00Z", "2025-04-05T16:30:00Z"],
        // 06 00:00 UTC+11, 06 01:00 UTC+11, 06 02:00 UTC+1030, 06 03:00 UTC+1030
        celery: &["2025-04-05T13:00:00Z", "2025-04-05T14:00:00Z", "2025-04-05T15:30:00Z", "2025-04-05T16:30:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "Australia/Lord_Howe",
        spec: "*/15 * * * *",
        after: "2025-04-05T14:10:00Z",
        // 06 01:15 UTC+11, 06 01:30 UTC+11, 06 01:45 UTC+11, 06 01:30 UTC+1030, 06 01:45 UTC+1030, 06 02:00 UTC+1030, 06 02:15 UTC+1030
        ours: &[
            "2025-04-05T14:15:00Z",
            "2025-04-05T14:30:00Z",
            "2025-04-05T14:45:00Z",
            "2025-04-05T15:00:00Z",
            "2025-04-05T15:15:00Z",
            "2025-04-05T15:30:00Z",
            "2025-04-05T15:45:00Z",
        ],
        // 06 01:15 UTC+11, 06 01:30 UTC+11, 06 01:45 UTC+11, 06 02:00 UTC+1030, 06 02:15 UTC+1030, 06 02:30 UTC+1030, 06 02:45 UTC+1030
        celery: &[
            "2025-04-05T14:15:00Z",
            "2025-04-05T14:30:00Z",
            "2025-04-05T14:45:00Z",
            "2025-04-05T15:30:00Z",
            "2025-04-05T15:45:00Z",
            "2025-04-05T16:00:00Z",
            "2025-04-05T16:15:00Z",
        ],
        difference: Difference::FallRepeatedHour,
    },
    DstCase {
        zone: "America/Santiago",
        spec: "0 0 * * *",
        after: "2025-09-05T12:00:00Z",
        // 06 00:00 UTC-04, 07 01:00 UTC-03, 08 00:00 UTC-03
        ours: &["2025-09-06T04:00:00Z", "2025-09-07T04:00:00Z", "2025-09-08T03:00:00Z"],
        // 06 00:00 UTC-04, 07 01:00 UTC-03, 08 00:00 UTC-03
        celery: &["2025-09-06T04:00:00Z", "2025-09-07T04:00:00Z", "2025-09-08T03:00:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "America/Santiago",
        spec: "30 0 * * *",
        after: "2025-09-05T12:00:00Z",
        // 06 00:30 UTC-04, 07 01:00 UTC-03, 08 00:30 UTC-03
        ours: &["2025-09-06T04:30:00Z", "2025-09-07T04:00:00Z", "2025-09-08T03:30:00Z"],
        // 06 00:30 UTC-04, 07 01:30 UTC-03, 08 00:30 UTC-03
        celery: &["2025-09-06T04:30:00Z", "2025-09-07T04:30:00Z", "2025-09-08T03:30:00Z"],
        difference: Difference::SpringFixedTime,
    },
    DstCase {
        zone: "America/Santiago",
        spec: "30 2 * * *",
        after: "2025-09-05T12:00:00Z",
        // 06 02:30 UTC-04, 07 02:30 UTC-03, 08 02:30 UTC-03
        ours: &["2025-09-06T06:30:00Z", "2025-09-07T05:30:00Z", "2025-09-08T05:30:00Z"],
        // 06 02:30 UTC-04, 07 02:30 UTC-03, 08 02:30 UTC-03
        celery: &["2025-09-06T06:30:00Z", "2025-09-07T05:30:00Z", "2025-09-08T05:30:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "America/Santiago",
        spec: "30 1 * * *",
        after: "2025-09-05T12:00:00Z",
        // 06 01:30 UTC-04, 07 01:30 UTC-03, 08 01:30 UTC-03
        ours: &["2025-09-06T05:30:00Z", "2025-09-07T04:30:00Z", "2025-09-08T04:30:00Z"],
        // 06 01:30 UTC-04, 07 01:30 UTC-03, 08 01:30 UTC-03
        celery: &["2025-09-06T05:30:00Z", "2025-09-07T04:30:00Z", "2025-09-08T04:30:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "America/Santiago",
        spec: "15,45 2 * * *",
        after: "2025-09-05T12:00:00Z",
        // 06 02:15 UTC-04, 06 02:45 UTC-04, 07 02:15 UTC-03
        ours: &["2025-09-06T06:15:00Z", "2025-09-06T06:45:00Z", "2025-09-07T05:15:00Z"],
        // 06 02:15 UTC-04, 06 02:45 UTC-04, 07 02:15 UTC-03
        celery: &["2025-09-06T06:15:00Z", "2025-09-06T06:45:00Z", "2025-09-07T05:15:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "America/Santiago",
        spec: "0 * * * *",
        after: "2025-09-07T01:30:00Z",
        // 06 22:00 UTC-04, 06 23:00 UTC-04, 07 01:00 UTC-03, 07 02:00 UTC-03
        ours: &["2025-09-07T02:00:00Z", "2025-09-07T03:00:00Z", "2025-09-07T04:00:00Z", "2025-09-07T05:00:00Z"],
        // 06 22:00 UTC-04, 06 23:00 UTC-04, 07 01:00 UTC-03, 07 02:00 UTC-03
        celery: &["2025-09-07T02:00:00Z", "2025-09-07T03:00:00Z", "2025-09-07T04:00:00Z", "2025-09-07T05:00:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "America/Santiago",
        spec: "*/15 * * * *",
        after: "2025-09-07T03:20:00Z",
        // 06 23:30 UTC-04, 06 23:45 UTC-04, 07 01:00 UTC-03, 07 01:15 UTC-03, 07 01:30 UTC-03
        ours: &[
            "2025-09-07T03:30:00Z",
            "2025-09-07T03:45:00Z",
            "2025-09-07T04:00:00Z",
            "2025-09-07T04:15:00Z",
            "2025-09-07T04:30:00Z",
        ],
        // 06 23:30 UTC-04, 06 23:45 UTC-04, 07 01:00 UTC-03, 07 01:15 UTC-03, 07 01:30 UTC-03
        celery: &[
            "2025-09-07T03:30:00Z",
            "2025-09-07T03:45:00Z",
            "2025-09-07T04:00:00Z",
            "2025-09-07T04:15:00Z",
            "2025-09-07T04:30:00Z",
        ],
        difference: Difference::None,
    },
    DstCase {
        zone: "America/Santiago",
        spec: "0 0 * * *",
        after: "2025-04-04T12:00:00Z",
        // 05 00:00 UTC-03, 06 00:00 UTC-04, 07 00:00 UTC-04
        ours: &["2025-04-05T03:00:00Z", "2025-04-06T04:00:00Z", "2025-04-07T04:00:00Z"],
        // 05 00:00 UTC-03, 06 00:00 UTC-04, 07 00:00 UTC-04
        celery: &["2025-04-05T03:00:00Z", "2025-04-06T04:00:00Z", "2025-04-07T04:00:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "America/Santiago",
        spec: "0 23 * * *",
        after: "2025-04-04T12:00:00Z",
        // 04 23:00 UTC-03, 05 23:00 UTC-03, 06 23:00 UTC-04
        ours: &["2025-04-05T02:00:00Z", "2025-04-06T02:00:00Z", "2025-04-07T03:00:00Z"],
        // 04 23:00 UTC-03, 05 23:00 UTC-03, 06 23:00 UTC-04
        celery: &["2025-04-05T02:00:00Z", "2025-04-06T02:00:00Z", "2025-04-07T03:00:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "America/Santiago",
        spec: "30 2 * * *",
        after: "2025-04-04T12:00:00Z",
        // 05 02:30 UTC-03, 06 02:30 UTC-04, 07 02:30 UTC-04
        ours: &["2025-04-05T05:30:00Z", "2025-04-06T06:30:00Z", "2025-04-07T06:30:00Z"],
        // 05 02:30 UTC-03, 06 02:30 UTC-04, 07 02:30 UTC-04
        celery: &["2025-04-05T05:30:00Z", "2025-04-06T06:30:00Z", "2025-04-07T06:30:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "America/Santiago",
        spec: "30 1 * * *",
        after: "2025-04-04T12:00:00Z",
        // 05 01:30 UTC-03, 06 01:30 UTC-04, 07 01:30 UTC-04
        ours: &["2025-04-05T04:30:00Z", "2025-04-06T05:30:00Z", "2025-04-07T05:30:00Z"],
        // 05 01:30 UTC-03, 06 01:30 UTC-04, 07 01:30 UTC-04
        celery: &["2025-04-05T04:30:00Z", "2025-04-06T05:30:00Z", "2025-04-07T05:30:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "America/Santiago",
        spec: "15,45 2 * * *",
        after: "2025-04-04T12:00:00Z",
        // 05 02:15 UTC-03, 05 02:45 UTC-03, 06 02:15 UTC-04
        ours: &["2025-04-05T05:15:00Z", "2025-04-05T05:45:00Z", "2025-04-06T06:15:00Z"],
        // 05 02:15 UTC-03, 05 02:45 UTC-03, 06 02:15 UTC-04
        celery: &["2025-04-05T05:15:00Z", "2025-04-05T05:45:00Z", "2025-04-06T06:15:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "America/Santiago",
        spec: "0 * * * *",
        after: "2025-04-06T00:30:00Z",
        // 05 22:00 UTC-03, 05 23:00 UTC-03, 05 23:00 UTC-04, 06 00:00 UTC-04, 06 01:00 UTC-04
        ours: &[
            "2025-04-06T01:00:00Z",
            "2025-04-06T02:00:00Z",
            "2025-04-06T03:00:00Z",
            "2025-04-06T04:00:00Z",
            "2025-04-06T05:00:00Z",
        ],
        // 05 22:00 UTC-03, 05 23:00 UTC-03, 06 00:00 UTC-04, 06 01:00 UTC-04, 06 02:00 UTC-04
        celery: &[
            "2025-04-06T01:00:00Z",
            "2025-04-06T02:00:00Z",
            "2025-04-06T04:00:00Z",
            "2025-04-06T05:00:00Z",
            "2025-04-06T06:00:00Z",
        ],
        difference: Difference::FallRepeatedHour,
    },
    DstCase {
        zone: "America/Santiago",
        spec: "*/15 * * * *",
        after: "2025-04-06T01:50:00Z",
        // 05 23:00 UTC-03, 05 23:15 UTC-03, 05 23:30 UTC-03, 05 23:45 UTC-03, 05 23:00 UTC-04, 05 23:15 UTC-04, 05 23:30 UTC-04, 05 23:45 UTC-04, 06 00:00 UTC-04, 06 00:15 UTC-04
        ours: &[
            "2025-04-06T02:00:00Z",
            "2025-04-06T02:15:00Z",
            "2025-04-06T02:30:00Z",
            "2025-04-06T02:45:00Z",
            "2025-04-06T03:00:00Z",
            "2025-04-06T03:15:00Z",
            "2025-04-06T03:30:00Z",
            "2025-04-06T03:45:00Z",
            "2025-04-06T04:00:00Z",
            "2025-04-06T04:15:00Z",
        ],
        // 05 23:00 UTC-03, 05 23:15 UTC-03, 05 23:30 UTC-03, 05 23:45 UTC-03, 06 00:00 UTC-04, 06 00:15 UTC-04, 06 00:30 UTC-04, 06 00:45 UTC-04, 06 01:00 UTC-04, 06 01:15 UTC-04
        celery: &[
            "2025-04-06T02:00:00Z",
            "2025-04-06T02:15:00Z",
            "2025-04-06T02:30:00Z",
            "2025-04-06T02:45:00Z",
            "2025-04-06T04:00:00Z",
            "2025-04-06T04:15:00Z",
            "2025-04-06T04:30:00Z",
            "2025-04-06T04:45:00Z",
            "2025-04-06T05:00:00Z",
            "2025-04-06T05:15:00Z",
        ],
        difference: Difference::FallRepeatedHour,
    },
    DstCase {
        zone: "Australia/Sydney",
        spec: "30 2 * * *",
        after: "2025-10-04T00:00:00Z",
        // 05 03:00 AEDT, 06 02:30 AEDT, 07 02:30 AEDT
        ours: &["2025-10-04T16:00:00Z", "2025-10-05T15:30:00Z", "2025-10-06T15:30:00Z"],
        // 05 03:30 AEDT, 06 02:30 AEDT, 07 02:30 AEDT
        celery: &["2025-10-04T16:30:00Z", "2025-10-05T15:30:00Z", "2025-10-06T15:30:00Z"],
        difference: Difference::SpringFixedTime,
    },
    DstCase {
        zone: "Australia/Sydney",
        spec: "30 1 * * *",
        after: "2025-10-04T00:00:00Z",
        // 05 01:30 AEST, 06 01:30 AEDT, 07 01:30 AEDT
        ours: &["2025-10-04T15:30:00Z", "2025-10-05T14:30:00Z", "2025-10-06T14:30:00Z"],
        // 05 01:30 AEST, 06 01:30 AEDT, 07 01:30 AEDT
        celery: &["2025-10-04T15:30:00Z", "2025-10-05T14:30:00Z", "2025-10-06T14:30:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "Australia/Sydney",
        spec: "15,45 2 * * *",
        after: "2025-10-04T00:00:00Z",
        // 06 02:15 AEDT, 06 02:45 AEDT, 07 02:15 AEDT
        ours: &["2025-10-05T15:15:00Z", "2025-10-05T15:45:00Z", "2025-10-06T15:15:00Z"],
        // 05 03:15 AEDT, 06 02:15 AEDT, 06 02:45 AEDT
        celery: &["2025-10-04T16:15:00Z", "2025-10-05T15:15:00Z", "2025-10-05T15:45:00Z"],
        difference: Difference::SpringSeveralSlotsInGap,
    },
    DstCase {
        zone: "Australia/Sydney",
        spec: "0 * * * *",
        after: "2025-10-04T13:30:00Z",
        // 05 00:00 AEST, 05 01:00 AEST, 05 03:00 AEDT, 05 04:00 AEDT
        ours: &["2025-10-04T14:00:00Z", "2025-10-04T15:00:00Z", "2025-10-04T16:00:00Z", "2025-10-04T17:00:00Z"],
        // 05 00:00 AEST, 05 01:00 AEST, 05 03:00 AEDT, 05 04:00 AEDT
        celery: &["2025-10-04T14:00:00Z", "2025-10-04T15:00:00Z", "2025-10-04T16:00:00Z", "2025-10-04T17:00:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "Australia/Sydney",
        spec: "*/15 * * * *",
        after: "2025-10-04T15:20:00Z",
        // 05 01:30 AEST, 05 01:45 AEST, 05 03:00 AEDT, 05 03:15 AEDT, 05 03:30 AEDT
        ours: &[
            "2025-10-04T15:30:00Z",
            "2025-10-04T15:45:00Z",
            "2025-10-04T16:00:00Z",
            "2025-10-04T16:15:00Z",
            "2025-10-04T16:30:00Z",
        ],
        // 05 01:30 AEST, 05 01:45 AEST, 05 03:00 AEDT, 05 03:15 AEDT, 05 03:30 AEDT
        celery: &[
            "2025-10-04T15:30:00Z",
            "2025-10-04T15:45:00Z",
            "2025-10-04T16:00:00Z",
            "2025-10-04T16:15:00Z",
            "2025-10-04T16:30:00Z",
        ],
        difference: Difference::None,
    },
    DstCase {
        zone: "Australia/Sydney",
        spec: "30 2 * * *",
        after: "2025-04-05T00:00:00Z",
        // 06 02:30 AEDT, 07 02:30 AEST, 08 02:30 AEST
        ours: &["2025-04-05T15:30:00Z", "2025-04-06T16:30:00Z", "2025-04-07T16:30:00Z"],
        // 06 02:30 AEDT, 07 02:30 AEST, 08 02:30 AEST
        celery: &["2025-04-05T15:30:00Z", "2025-04-06T16:30:00Z", "2025-04-07T16:30:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "Australia/Sydney",
        spec: "30 1 * * *",
        after: "2025-04-05T00:00:00Z",
        // 06 01:30 AEDT, 07 01:30 AEST, 08 01:30 AEST
        ours: &["2025-04-05T14:30:00Z", "2025-04-06T15:30:00Z", "2025-04-07T15:30:00Z"],
        // 06 01:30 AEDT, 07 01:30 AEST, 08 01:30 AEST
        celery: &["2025-04-05T14:30:00Z", "2025-04-06T15:30:00Z", "2025-04-07T15:30:00Z"],
        difference: Difference::None,
    },
    DstCase {
        zone: "Australia/Sydney",
        spec: "15,45 2 * * *",
        after: "2025-04-05T00:00:00Z",
        // 06 02:15 AEDT, 06 02:45 AEDT, 06 02:15 AEST
        ours: &["2025-04-05T15:15:00Z", "2025-04-05T15:45:00Z", "2025-04-05T16:15:00Z"],
        // 06 02:15 AEDT, 06 02:45 AEDT, 07 02:15 AEST
        celery: &["2025-04-05T15:15:00Z", "2025-04-05T15:45:00Z", "2025-04-06T16:15:00Z"],
        difference: Difference::FallRepeatedHour,
    },
    DstCase {
        zone: "Australia/Sydney",
        spec: "0 * * * *",
        after: "2025-04-05T13:30:00Z",
        // 06 01:00 AEDT, 06 02:00 AEDT, 06 02:00 AEST, 06 03:00 AEST, 06 04:00 AEST
        ours: &[
            "2025-04-05T14:00:00Z",
            "2025-04-05T15:00:00Z",
            "2025-04-05T16:00:00Z",
            "2025-04-05T17:00:00Z",
            "2025-04-05T18:00:00Z",
        ],
        // 06 01:00 AEDT, 06 02:00 AEDT, 06 03:00 AEST, 06 04:00 AEST, 06 05:00 AEST
        celery: &[
            "2025-04-05T14:00:00Z",
            "2025-04-05T15:00:00Z",
            "2025-04-05T17:00:00Z",
            "2025-04-05T18:00:00Z",
            "2025-04-05T19:00:00Z",
        ],
        difference: Difference::FallRepeatedHour,
    },
    DstCase {
        zone: "Australia/Sydney",
        spec: "*/15 * * * *",
        after: "2025-04-05T14:50:00Z",
        // 06 02:00 AEDT, 06 02:15 AEDT, 06 02:30 AEDT, 06 02:45 AEDT, 06 02:00 AEST, 06 02:15 AEST, 06 02:30 AEST, 06 02:45 AEST, 06 03:00 AEST, 06 03:15 AEST
        ours: &[
            "2025-04-05T15:00:00Z",
            "2025-04-05T15:15:00Z",
            "2025-04-05T15:30:00Z",
            "2025-04-05T15:45:00Z",
            "2025-04-05T16:00:00Z",
            "2025-04-05T16:15:00Z",
            "2025-04-05T16:30:00Z",
            "2025-04-05T16:45:00Z",
            "2025-04-05T17:00:00Z",
            "2025-04-05T17:15:00Z",
        ],
        // 06 02:00 AEDT, 06 02:15 AEDT, 06 02:30 AEDT, 06 02:45 AEDT, 06 03:00 AEST, 06 03:15 AEST, 06 03:30 AEST, 06 03:45 AEST, 06 04:00 AEST, 06 04:15 AEST
        celery: &[
            "2025-04-05T15:00:00Z",
            "2025-04-05T15:15:00Z",
            "2025-04-05T15:30:00Z",
            "2025-04-05T15:45:00Z",
            "2025-04-05T17:00:00Z",
            "2025-04-05T17:15:00Z",
            "2025-04-05T17:30:00Z",
            "2025-04-05T17:45:00Z",
            "2025-04-05T18:00:00Z",
            "2025-04-05T18:15:00Z",
        ],
        difference: Difference::FallRepeatedHour,
    },
];
