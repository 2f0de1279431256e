//! A port of Celery's `crontab_parser` (`celery/schedules.py`) and of the name lookups it uses
//! (`celery/utils/time.py` `weekday` and `yearmonth`).
//!
//! Celery matches each comma-separated part against four regular expressions, in this order, with
//! `re.match` (anchored at the start only, so whatever follows a match is ignored):
//!
//! 1. `(\w+?)-(\w+)/(\w+)?`: a range with a step (`1-5/2`; `1-5/2/3` reads as `1-5/2`);
//! 2. `(\w+?)-(\w+)`: a range (`1-2-3` reads as `1-2`);
//! 3. `\*/(\w+)?`: a step over the whole field (`*/5-3` reads as `*/5`);
//! 4. `^\*$`: the whole field (`$` also matches before one final newline).
//!
//! Anything else must be a single number or name. Numbers go through Python's `int()` (which
//! allows surrounding whitespace, a sign and underscores between digits); names are looked up on
//! their first three letters, lower-cased, first among month names and then among weekday names,
//! whatever the field. The code below walks the text by hand to the same effect.

use super::{Field, FieldError};

/// One of Python's `int()` results: sign and decimal digits without leading zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PyInt {
    negative: bool,
    digits: String,
}

impl PyInt {
    /// The value, when it fits an `i64` (otherwise it is out of range for every field).
    fn value(&self) -> Option<i64> {
        let magnitude: i64 = if self.digits.len() <= 18 { self.digits.parse().ok()? } else { return None };
        Some(if self.negative { -magnitude } else { magnitude })
    }

    /// The number as Python prints it.
    fn text(&self) -> String {
        if self.negative {
            format!("-{}", self.digits)
        } else {
            self.digits.clone()
        }
    }
}

/// Python's `str.isspace()`, close enough: Unicode white space plus the four ASCII separators.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's regular-expression `\w` for text: letters, digits and the underscore.
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Byte length of the run of `\w` characters at the start of `s`.
fn word_len(s: &str) -> usize {
    s.char_indices().find(|&(_, c)| !is_word(c)).map_or(s.len(), |(i, _)| i)
}

/// Python's `int(s)` for base 10 with ASCII digits: `None` where Python raises `ValueError`.
///
/// Python also accepts other Unicode decimal digits (`'٥'`); these are refused here.
fn py_int(s: &str) -> Option<PyInt> {
    let s = s.trim_matches(is_py_space);
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut digits = String::with_capacity(body.len());
    let mut previous_was_digit = false;
    for c in body.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            previous_was_digit = true;
        } else if c == '_' && previous_was_digit {
            previous_was_digit = false;
        } else {
            return None;
        }
    }
    if !previous_was_digit {
        // Empty, or ends with an underscore.
        return None;
    }
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        return Some(PyInt { negative: false, digits: "0".to_owned() });
    }
    Some(PyInt { negative, digits: trimmed.to_owned() })
}

const MONTH_NAMES: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Celery's `yearmonth(name)`, then `weekday(name)`: the first three characters, lower-cased.
fn name_value(name: &str) -> Option<i64> {
    let abbreviation: String = name.chars().take(3).flat_map(char::to_lowercase).collect();
    if let Some(i) = MONTH_NAMES.iter().position(|m| *m == abbreviation) {
        return Some(i as i64 + 1);
    }
    DAY_NAMES.iter().position(|d| *d == abbreviation).map(|i| i as i64)
}

/// Celery's `crontab_parser(max_, min_)` for one field.
#[derive(Debug, Clone, Copy)]
struct FieldParser {
    /// Smallest value (`min_`).
    min: i64,
    /// Largest value (`min_ + max_ - 1`).
    max: i64,
}

impl FieldParser {
    fn new(field: Field) -> FieldParser {
        let (min, max) = field.bounds();
        FieldParser { min: i64::from(min), max: i64::from(max) }
    }

    /// `_expand_number`: a number or a name, checked against the field's range.
    fn number(&self, s: &str) -> Result<i64, FieldError> {
        if s.starts_with('-') {
            return Err(FieldError::Negative);
        }
        let (value, text) = match py_int(s) {
            Some(n) => (n.value(), n.text()),
            None => match name_value(s) {
                Some(v) => (Some(v), v.to_string()),
                None => return Err(FieldError::InvalidLiteral(s.to_owned())),
            },
        };
        match value {
            Some(v) if v < self.min => Err(FieldError::BeginningRange { value: text, min: self.min }),
            Some(v) if v <= self.max => Ok(v),
            // Too large for an i64 and negative: below every minimum.
            None if text.starts_with('-') => Err(FieldError::BeginningRange { value: text, min: self.min }),
            _ => Err(FieldError::EndRange { value: text, max: self.max }),
        }
    }

    /// `_expand_range`: `from` alone, `from..=to`, or a range that wraps past the field's end.
    fn range(&self, from: &str, to: Option<&str>) -> Result<Vec<i64>, FieldError> {
        let from = self.number(from)?;
        let Some(to) = to else { return Ok(vec![from]) };
        let to = self.number(to)?;
        if to < from {
            Ok((from..=self.max).chain(self.min..=to).collect())
        } else {
            Ok((from..=to).collect())
        }
    }

    /// `int(step)` and Python's `[::step]` on `values`.
    fn step(values: Vec<i64>, step: &str) -> Result<Vec<i64>, FieldError> {
        let step = match py_int(step).map(|n| n.value()) {
            Some(Some(0)) => return Err(FieldError::ZeroStep),
            Some(Some(s)) => usize::try_from(s).unwrap_or(usize::MAX),
            // More digits than an i64 holds: only the first value survives the slice.
            Some(None) => usize::MAX,
            None => return Err(FieldError::InvalidStep(step.to_owned())),
        };
        Ok(values.into_iter().step_by(step).collect())
    }

    /// `_parse_part`: one comma-separated part.
    fn part(&self, part: &str) -> Result<Vec<i64>, FieldError> {
        // 1. and 2.: a word, '-', a word, and maybe '/' and a step.
        let from_len = word_len(part);
        if from_len > 0 {
            if let Some(rest) = part[from_len..].strip_prefix('-') {
                let to_len = word_len(rest);
                if to_len > 0 {
                    let (from, to) = (&part[..from_len], &rest[..to_len]);
                    if let Some(step) = rest[to_len..].strip_prefix('/') {
                        let step_len = word_len(step);
                        if step_len == 0 {
                            return Err(FieldError::EmptyFilter);
                        }
                        // Python expands the range before it reads the step.
                        let values = self.range(from, Some(to))?;
                        return Self::step(values, &step[..step_len]);
                    }
                    return self.range(from, Some(to));
                }
            }
        }
        // 3.: '*/' and maybe a step.
        if let Some(step) = part.strip_prefix("*/") {
            let step_len = word_len(step);
            if step_len == 0 {
                return Err(FieldError::EmptyFilter);
            }
            return Self::step((self.min..=self.max).collect(), &step[..step_len]);
        }
        // 4.: '*' alone.
        if part == "*" || part == "*\n" {
            return Ok((self.min..=self.max).collect());
        }
        self.range(part, None)
    }

    /// `parse`: the union of the comma-separated parts, as a bit set.
    fn parse(&self, spec: &str) -> Result<u64, FieldError> {
        let mut set = 0u64;
        for part in spec.split(',') {
            if part.is_empty() {
                return Err(FieldError::EmptyPart);
            }
            for value in self.part(part)? {
                // `number` keeps every value within 0..=59.
                set |= 1u64 << value;
            }
        }
        Ok(set)
    }
}

/// Expands one field as Celery's `crontab._expand_cronspec` does for a string: a bit set with bit
/// `v` set for every value `v` the field matches.
pub(super) fn expand(field: Field, spec: &str) -> Result<u64, FieldError> {
    FieldParser::new(field).parse(spec)
}

/// Python's `repr()` of a string, for messages that quote Celery's.
pub(super) fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(field: Field, spec: &str) -> Result<Vec<u32>, String> {
        expand(field, spec).map(|set| (0..64).filter(|v| set & (1 << v) != 0).collect()).map_err(|e| e.to_string())
    }

    fn range(a: u32, b: u32) -> Vec<u32> {
        (a..=b).collect()
    }

    #[test]
    fn python_int_rules() {
        let int = |s: &str| py_int(s).map(|n| n.text());
        assert_eq!(int("5"), Some("5".into()));
        assert_eq!(int(" 5 "), Some("5".into()));
        assert_eq!(int("+5"), Some("5".into()));
        assert_eq!(int(" -5"), Some("-5".into()));
        assert_eq!(int("007"), Some("7".into()));
        assert_eq!(int("-0"), Some("0".into()));
        assert_eq!(int("1_0"), Some("10".into()));
        assert_eq!(int("99999999999999999999999"), Some("99999999999999999999999".into()));
        for bad in ["", " ", "_1", "1_", "1__0", "+", "5x", "x", "1 2", "+-1", "٥"] {
            assert_eq!(int(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn star_and_steps_count_from_the_field_minimum() {
        assert_eq!(values(Field::Minute, "*"), Ok(range(0, 59)));
        assert_eq!(values(Field::Minute, "*/15"), Ok(vec![0, 15, 30, 45]));
        assert_eq!(values(Field::Hour, "*/5"), Ok(vec![0, 5, 10, 15, 20]));
        assert_eq!(values(Field::DayOfWeek, "*/2"), Ok(vec![0, 2, 4, 6]));
        assert_eq!(values(Field::DayOfMonth, "*/10"), Ok(vec![1, 11, 21, 31]));
        assert_eq!(values(Field::DayOfMonth, "*/3"), Ok(vec![1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31]));
        assert_eq!(values(Field::MonthOfYear, "*/5"), Ok(vec![1, 6, 11]));
        assert_eq!(values(Field::MonthOfYear, "2-12/2"), Ok(vec![2, 4, 6, 8, 10, 12]));
        assert_eq!(values(Field::Minute, "*/99999999999999999999"), Ok(vec![0]));
    }

    #[test]
    fn ranges_wrap_past_the_field_end() {
        assert_eq!(values(Field::DayOfWeek, "fri-mon"), Ok(vec![0, 1, 5, 6]));
        let mut expected = range(0, 10);
        expected.extend(50..=59);
        assert_eq!(values(Field::Minute, "50-10"), Ok(expected));
        assert_eq!(values(Field::Hour, "23-0"), Ok(vec![0, 23]));
        assert_eq!(values(Field::DayOfMonth, "30-2"), Ok(vec![1, 2, 30, 31]));
        // The step walks the wrapped list: 50..=59 then 0..=10, every 7th.
        assert_eq!(values(Field::Minute, "50-10/7"), Ok(vec![4, 50, 57]));
        assert_eq!(values(Field::Minute, "5-5"), Ok(vec![5]));
    }

    #[test]
    fn names_in_any_field_on_three_letters() {
        assert_eq!(values(Field::DayOfWeek, "monkey"), Ok(vec![1]));
        assert_eq!(values(Field::DayOfWeek, "MONDAY"), Ok(vec![1]));
        // Month names come first, whatever the field: 'jan' is 1, 'mar' is 3.
        assert_eq!(values(Field::DayOfWeek, "jan"), Ok(vec![1]));
        assert_eq!(values(Field::DayOfWeek, "mar"), Ok(vec![3]));
        assert_eq!(values(Field::DayOfWeek, "sun-sat"), Ok(range(0, 6)));
        assert_eq!(values(Field::MonthOfYear, "Sept-Dec"), Ok(vec![9, 10, 11, 12]));
        assert_eq!(values(Field::Minute, "fri"), Ok(vec![5]));
        assert_eq!(values(Field::Hour, "dec"), Ok(vec![12]));
        assert_eq!(values(Field::DayOfWeek, "dec"), Err("Invalid end range: 12 > 6.".into()));
        assert_eq!(values(Field::DayOfMonth, "sun"), Err("Invalid beginning range: 0 < 1.".into()));
        assert_eq!(values(Field::DayOfWeek, "xyz"), Err("Invalid weekday literal 'xyz'.".into()));
    }

    #[test]
    fn out_of_range_values_are_refused_with_celerys_messages() {
        assert_eq!(values(Field::DayOfWeek, "7"), Err("Invalid end range: 7 > 6.".into()));
        assert_eq!(values(Field::DayOfWeek, "0-7"), Err("Invalid end range: 7 > 6.".into()));
        assert_eq!(values(Field::Minute, "60"), Err("Invalid end range: 60 > 59.".into()));
        assert_eq!(values(Field::Hour, "24"), Err("Invalid end range: 24 > 23.".into()));
        assert_eq!(values(Field::DayOfMonth, "0"), Err("Invalid beginning range: 0 < 1.".into()));
        assert_eq!(values(Field::DayOfMonth, "32"), Err("Invalid end range: 32 > 31.".into()));
        assert_eq!(values(Field::MonthOfYear, "13"), Err("Invalid end range: 13 > 12.".into()));
        assert_eq!(values(Field::MonthOfYear, "0"), Err("Invalid beginning range: 0 < 1.".into()));
        assert_eq!(
            values(Field::Minute, "99999999999999999999999"),
            Err("Invalid end range: 99999999999999999999999 > 59.".into())
        );
        assert_eq!(values(Field::Minute, " -5"), Err("Invalid beginning range: -5 < 0.".into()));
        assert_eq!(values(Field::Minute, "-5"), Err("negative numbers not supported".into()));
    }

    #[test]
    fn malformed_parts_are_refused_with_celerys_messages() {
        assert_eq!(values(Field::Minute, "5/2"), Err("Invalid weekday literal '5/2'.".into()));
        assert_eq!(values(Field::Minute, ""), Err("empty part".into()));
        assert_eq!(values(Field::Minute, "1,,2"), Err("empty part".into()));
        assert_eq!(values(Field::Minute, "1,"), Err("empty part".into()));
        assert_eq!(values(Field::Minute, "*/"), Err("empty filter".into()));
        assert_eq!(values(Field::Minute, "1-5/"), Err("empty filter".into()));
        assert_eq!(values(Field::Minute, "*/0"), Err("slice step cannot be zero".into()));
        assert_eq!(values(Field::Minute, "1-5/x"), Err("invalid literal for int() with base 10: 'x'".into()));
        assert_eq!(values(Field::Minute, "*/2x"), Err("invalid literal for int() with base 10: '2x'".into()));
        assert_eq!(values(Field::Minute, "*x"), Err("Invalid weekday literal '*x'.".into()));
        assert_eq!(values(Field::Minute, "**"), Err("Invalid weekday literal '**'.".into()));
        assert_eq!(values(Field::Minute, "1-x5"), Err("Invalid weekday literal 'x5'.".into()));
        // The range is read before the step.
        assert_eq!(values(Field::Minute, "1-60/0"), Err("Invalid end range: 60 > 59.".into()));
    }

    #[test]
    fn text_after_a_match_is_ignored_as_in_celery() {
        assert_eq!(values(Field::Minute, "1-5/2/3"), Ok(vec![1, 3, 5]));
        assert_eq!(values(Field::Minute, "*/5-3"), Ok((0..60).step_by(5).collect()));
        assert_eq!(values(Field::Minute, "1-2-3"), Ok(vec![1, 2]));
        assert_eq!(values(Field::Minute, "*\n"), Ok(range(0, 59)));
        assert_eq!(values(Field::Minute, " 5"), Ok(vec![5]));
        assert_eq!(values(Field::Minute, "+5"), Ok(vec![5]));
        assert_eq!(values(Field::Minute, "1_0"), Ok(vec![10]));
        assert_eq!(values(Field::Minute, "1_0-1_2"), Ok(vec![10, 11, 12]));
    }

    #[test]
    fn lists_are_unions() {
        assert_eq!(values(Field::Minute, "0,15,30-32,*/20"), Ok(vec![0, 15, 20, 30, 31, 32, 40]));
        assert_eq!(values(Field::DayOfWeek, "mon,wed,fri"), Ok(vec![1, 3, 5]));
    }

    #[test]
    fn repr_matches_python() {
        assert_eq!(py_repr("abc"), "'abc'");
        assert_eq!(py_repr("a'b"), "\"a'b\"");
        assert_eq!(py_repr("a'b\""), "'a\\'b\"'");
        assert_eq!(py_repr("a\nb\\"), "'a\\nb\\\\'");
        assert_eq!(py_repr("\u{1}"), "'\\x01'");
    }
}
