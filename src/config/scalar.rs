//! Deserializers that validate a value while serde_yaml still points at it,
//! so that a bad value is reported at its own line and column rather than
//! at the start of the mapping that holds it.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, Visitor};

/// A YAML scalar as the config sees it.
pub enum Scalar<'a> {
    Str(&'a str),
    Int(i128),
    Float(f64),
    Bool(bool),
}

impl fmt::Display for Scalar<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Str(s) => quoted(s).fmt(f),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// The most characters of user text a message quotes: a message stays one
/// readable line however long the value at fault.
pub const MAX_QUOTED_CHARS: usize = 80;

/// User text as every message quotes it: in backticks, with control and
/// invisible characters escaped (a config cannot rewrite the terminal it is
/// checked on), and past [`MAX_QUOTED_CHARS`] cut with `…` and its full
/// length: ``unknown probe `aaaa…` (50000000 bytes)``.
pub fn quoted(text: &str) -> Quoted<'_> {
    Quoted(text)
}

pub struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('`')?;
        let mut shown = 0;
        for c in self.0.chars() {
            // quotes and backslashes read as themselves between backticks
            let escape = !matches!(c, '"' | '\'' | '\\');
            let width = if escape { c.escape_debug().len() } else { 1 };
            if shown + width > MAX_QUOTED_CHARS {
                return write!(f, "…` ({} bytes)", self.0.len());
            }
            shown += width;
            if escape {
                write!(f, "{}", c.escape_debug())?;
            } else {
                f.write_char(c)?;
            }
        }
        f.write_char('`')
    }
}

/// Deserializes one scalar and hands it to `parse`; an `Err(message)` from
/// `parse` becomes a located config error.
pub fn scalar<'de, D, T, F>(deserializer: D, expecting: &'static str, parse: F) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(Scalar<'_>) -> Result<T, String>,
{
    deserializer.deserialize_any(ScalarVisitor { expecting, parse, out: PhantomData })
}

struct ScalarVisitor<F, T> {
    expecting: &'static str,
    parse: F,
    out: PhantomData<T>,
}

impl<F, T> ScalarVisitor<F, T>
where
    F: FnOnce(Scalar<'_>) -> Result<T, String>,
{
    fn run<E: de::Error>(self, value: Scalar<'_>) -> Result<T, E> {
        (self.parse)(value).map_err(E::custom)
    }
}

impl<'de, F, T> Visitor<'de> for ScalarVisitor<F, T>
where
    F: FnOnce(Scalar<'_>) -> Result<T, String>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        self.run(Scalar::Str(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.run(Scalar::Int(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.run(Scalar::Int(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.run(Scalar::Float(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        self.run(Scalar::Bool(v))
    }
}

/// An integer within `min..=max`.
pub fn int_in<'de, D: Deserializer<'de>>(d: D, min: u64, max: u64) -> Result<u64, D::Error> {
    scalar(d, "an integer", |v| match v {
        Scalar::Int(i) if i >= min.into() && i <= max.into() => Ok(i as u64),
        Scalar::Int(i) => Err(format!("{i} is out of range: expected {min}..={max}")),
        other => Err(format!("expected an integer, found {other}")),
    })
}

/// A key from a fixed list, not repeated: checked here rather than after the
/// mapping is read, so that an unknown or repeated key is reported at itself.
pub struct OneOf<'a> {
    pub keys: &'static [&'static str],
    /// Names the mapping in messages: "unknown {what} key".
    pub what: &'static str,
    pub seen: &'a BTreeSet<&'static str>,
}

impl<'de> DeserializeSeed<'de> for OneOf<'_> {
    type Value = &'static str;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<&'static str, D::Error> {
        scalar(d, "a key", |v| {
            let Scalar::Str(name) = v else {
                return Err(format!("expected a key, found {v}"));
            };
            let key = self.keys.iter().copied().find(|k| *k == name).ok_or_else(|| {
                format!("unknown {} key {}; expected one of: {}", self.what, quoted(name), self.keys.join(", "))
            })?;
            if self.seen.contains(key) {
                return Err(format!("duplicate key `{key}`"));
            }
            Ok(key)
        })
    }
}

/// Prometheus metric and label names: `[a-zA-Z_][a-zA-Z0-9_]*` (metric
/// names may also hold `:`).
pub fn is_metric_name(s: &str, allow_colon: bool) -> bool {
    let ok = |c: char, first: bool| {
        c.is_ascii_alphabetic() || c == '_' || (allow_colon && c == ':') || (!first && c.is_ascii_digit())
    };
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if ok(c, true)) && chars.all(|c| ok(c, false))
}

/// A duration written as a number and a unit: `500ms`, `30s`, `5m`, `1h`,
/// `1d` (or `0`). None when it is not one, or too large.
pub fn duration(s: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = s.split_at(split);
    let n: u64 = number.parse().ok()?;
    let ms_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(ms_per_unit).map(Duration::from_millis)
}
