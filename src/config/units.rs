//! Human units in the config: durations (`250ms`, `10s`, `5m`) and byte sizes (`20MiB`).

use schemars::r#gen::SchemaGenerator;
use schemars::schema::Schema;
use schemars::JsonSchema;
use serde::de::{Deserializer, Error, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::json;
use std::{fmt, time::Duration};

/// A duration written as a string like `250ms`, `10s`, `5m`, `1h`, or compound `1m30s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    /// A whole number of seconds, for defaults in `const` context.
    pub const fn from_secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }
}

/// A byte count written as an integer or a string like `512KiB`, `20MiB`, `1GB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

const DUR_UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)];
const BYTE_UNITS: [(&str, u64); 7] = [
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1000),
    ("B", 1),
];

/// Splits `12abc` into `("12", "abc")`.
fn split_digits(s: &str) -> (&str, &str) {
    s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()))
}

/// `num` × the factor of `unit`, if both are valid and it fits.
fn scaled(num: &str, unit: &str, units: &[(&str, u64)]) -> Option<u64> {
    let per = units.iter().find(|(u, _)| *u == unit)?.1;
    num.parse::<u64>().ok()?.checked_mul(per)
}

/// Parses `250ms`, `10s`, `1m30s`: one or more `<integer><unit>` parts, summed.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || {
        format!("invalid duration {s:?}: expected a number with a unit ms|s|m|h, like 250ms or 10s")
    };
    let (mut rest, mut ms) = (s, 0u64);
    loop {
        let (num, tail) = split_digits(rest);
        let (unit, tail) = tail.split_at(
            tail.find(|c: char| c.is_ascii_digit())
                .unwrap_or(tail.len()),
        );
        ms = scaled(num, unit, &DUR_UNITS)
            .and_then(|n| ms.checked_add(n))
            .ok_or_else(err)?;
        rest = tail;
        if rest.is_empty() {
            return Ok(Duration::from_millis(ms));
        }
    }
}

/// Parses `1048576`, `512KiB`, `20MiB`, `1GB`: an integer with an optional unit.
pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let (num, unit) = split_digits(s);
    let unit = if unit.is_empty() { "B" } else { unit };
    scaled(num, unit, &BYTE_UNITS).ok_or_else(|| {
        let units = "B|KB|MB|GB|KiB|MiB|GiB";
        format!(
            "invalid byte size {s:?}: expected an integer, or one with a unit {units} like 20MiB"
        )
    })
}

impl fmt::Display for Dur {
    /// Canonical form, largest units first (`1m30s`); sub-millisecond parts are dropped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, per) in DUR_UNITS.map(|(u, per)| (u, u128::from(per))) {
            if ms >= per {
                write!(f, "{}{unit}", ms / per)?;
                ms %= per;
            }
        }
        Ok(())
    }
}

impl fmt::Display for ByteSize {
    /// The largest unit that divides the count exactly, binary first: `20MiB`, `1GB`, `1001B`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exact = |&(_, per): &(&str, u64)| self.0 >= per && self.0.is_multiple_of(per);
        let (unit, per) = BYTE_UNITS.into_iter().find(exact).unwrap_or(("B", 1));
        write!(f, "{}{unit}", self.0 / per)
    }
}

/// Reads a unit value from a string, or from a number taken as its text (so `10` is a
/// duration without a unit, reported as such, and `1048576` a byte count).
struct UnitVisitor<T>(&'static str, fn(&str) -> Result<T, String>);

impl<T> Visitor<'_> for UnitVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_str<E: Error>(self, v: &str) -> Result<T, E> {
        (self.1)(v).map_err(E::custom)
    }
    fn visit_u64<E: Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_i64<E: Error>(self, v: i64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: Error>(self, v: f64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
}

/// Deserialize (via `UnitVisitor`), Serialize (as the `Display` string) and JsonSchema.
macro_rules! unit_impls {
    ($ty:ident, $name:literal, $parse:expr, $types:expr, $pattern:literal, $desc:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                d.deserialize_any(UnitVisitor($desc, $parse))
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl JsonSchema for $ty {
            fn schema_name() -> String {
                $name.into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                let schema = json!({ "type": $types, "pattern": $pattern, "description": $desc });
                serde_json::from_value(schema).unwrap_or(Schema::Bool(true))
            }
        }
    };
}

unit_impls!(
    Dur,
    "Duration",
    |s| parse_duration(s).map(Dur),
    "string",
    "^([0-9]+(ms|s|m|h))+$",
    "a duration: integers with units ms|s|m|h, like 250ms, 10s or 1m30s"
);
unit_impls!(
    ByteSize,
    "ByteSize",
    |s| parse_byte_size(s).map(ByteSize),
    ["string", "integer"],
    "^[0-9]+(B|KB|MB|GB|KiB|MiB|GiB)?$",
    "a byte count: an integer, or with a unit B|KB|MB|GB (x1000) or KiB|MiB|GiB (x1024)"
);

#[cfg(test)]
mod tests {
    use super::*;

    fn dur(text: &str) -> Result<Dur, String> {
        serde_yaml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn durations_parse_and_print_canonically() {
        let check = |text: &str, ms: u64, canon: &str| {
            let d = dur(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                (d.0, d.to_string()),
                (Duration::from_millis(ms), canon.to_string())
            );
            assert_eq!(serde_json::to_string(&d).ok(), Some(format!("\"{canon}\"")));
        };
        check("250ms", 250, "250ms");
        check("10s", 10_000, "10s");
        check("5m", 300_000, "5m");
        check("1h", 3_600_000, "1h");
        check("1m30s", 90_000, "1m30s");
        check("90s", 90_000, "1m30s");
        check("1s500ms", 1500, "1s500ms");
        check("0s", 0, "0s");
    }

    #[test]
    fn durations_reject_bare_numbers_and_unknown_units() {
        let want =
            "invalid duration \"10x\": expected a number with a unit ms|s|m|h, like 250ms or 10s";
        assert_eq!(dur("10x").err().as_deref(), Some(want));
        let bare = dur("10").err().unwrap_or_default();
        assert!(bare.starts_with("invalid duration \"10\": expected a number with a unit"));
        for bad in "1.5s '' s -1s 1m30 99999999999999999999h [1s] {}".split(' ') {
            assert!(dur(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn byte_sizes_parse_and_print() {
        let check = |text: &str, n: u64, canon: &str| {
            let b: ByteSize = serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((b.0, b.to_string()), (n, canon.to_string()), "{text}");
        };
        check("20MiB", 20 << 20, "20MiB");
        check("512KiB", 512 << 10, "512KiB");
        check("1048576", 1 << 20, "1MiB");
        check("'1048576'", 1 << 20, "1MiB");
        check("1GB", 1_000_000_000, "1GB");
        check("7B", 7, "7B");
        check("0", 0, "0B");
        for bad in "20mib 20MIB 1.5MiB -1 MiB 99999999999GiB".split(' ') {
            assert!(
                serde_yaml::from_str::<ByteSize>(bad).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn schemas_carry_patterns() {
        let bytes = serde_json::to_value(schemars::schema_for!(ByteSize)).unwrap_or_default();
        assert_eq!(bytes["type"], json!(["string", "integer"]));
        let dur = serde_json::to_value(schemars::schema_for!(Dur)).unwrap_or_default();
        assert_eq!(dur["pattern"], "^([0-9]+(ms|s|m|h))+$");
    }
}
