//! [`Rate`]: Celery's rate-limit syntax (`"10/s"`, `"100/m"`, `"1000/h"`, a bare number per
//! second), parsed as `celery.utils.time.rate` reads it, minus its accidents: a rate that is
//! not a finite number of at least zero is an error here, not a crash later.

use std::fmt;

/// A rate limit as Celery writes it, with its value in tokens per second.
#[derive(Debug, Clone, PartialEq)]
pub struct Rate {
    spec: String,
    per_second: f64,
}

/// Why a rate-limit text is not a rate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{spec:?} is not a rate limit: {why} (write N/s, N/m, N/h or N, e.g. \"10/s\" or \"100/m\")")]
pub struct RateError {
    spec: String,
    why: &'static str,
}

impl Rate {
    /// Parses Celery's syntax: `N/s`, `N/m`, `N/h`, `N/` or `N` (per second), `N` any
    /// non-negative decimal number (`0.5/s`, `1e3/h`). Returns `None` for no limit: an empty
    /// text or a rate of 0, as in Celery.
    ///
    /// # Errors
    /// [`RateError`] for anything else: an unknown unit (`10/min`), a number Python's `float`
    /// would not read, a negative, infinite or NaN rate.
    pub fn parse(spec: &str) -> Result<Option<Rate>, RateError> {
        let error = |why| RateError { spec: spec.to_owned(), why };
        if spec.trim().is_empty() {
            return Ok(None);
        }
        let (count, unit) = spec.split_once('/').unwrap_or((spec, ""));
        let seconds = match unit {
            "" | "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(error("the unit must be s, m or h")),
        };
        let count: f64 = count.trim().parse().map_err(|_| error("not a number"))?;
        if !count.is_finite() || count < 0.0 {
            return Err(error("the number must be finite and at least 0"));
        }
        let per_second = count / seconds;
        Ok((per_second > 0.0).then(|| Rate { spec: spec.trim().to_owned(), per_second }))
    }

    /// Tokens per second.
    #[must_use]
    pub fn per_second(&self) -> f64 {
        self.per_second
    }

    /// The text it was parsed from (trimmed), e.g. `"100/m"`.
    #[must_use]
    pub fn spec(&self) -> &str {
        &self.spec
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_second(spec: &str) -> Option<f64> {
        Rate::parse(spec).unwrap().map(|r| r.per_second())
    }

    #[test]
    fn reads_celerys_syntax() {
        assert_eq!(per_second("10/s"), Some(10.0));
        assert_eq!(per_second("120/m"), Some(2.0));
        assert_eq!(per_second("7200/h"), Some(2.0));
        assert_eq!(per_second("2"), Some(2.0));
        assert_eq!(per_second("0.5"), Some(0.5));
        assert_eq!(per_second(" 3/"), Some(3.0));
        assert_eq!(per_second("1e3/h"), Some(1000.0 / 3600.0));
        assert_eq!(Rate::parse("100/m").unwrap().unwrap().spec(), "100/m");
        // No limit, as in Celery.
        assert_eq!(per_second(""), None);
        assert_eq!(per_second("0"), None);
        assert_eq!(per_second("0/m"), None);
    }

    #[test]
    fn refuses_what_is_not_a_rate() {
        for bad in ["10/min", "10/ s", "ten/s", "-1/s", "inf", "NaN/s", "1/s/s", "/s"] {
            let e = Rate::parse(bad).unwrap_err();
            assert!(e.to_string().contains("is not a rate limit"), "{bad}: {e}");
        }
    }
}
