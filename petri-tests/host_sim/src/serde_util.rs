//! Small serde types for scenario files: virtual times, message type names, raw bytes.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;
use vpci_protocol::MessageType;

/// A span of virtual time as a scenario file writes it: an integer (milliseconds) or a string
/// with a unit (`"250us"`, `"10ms"`, `"1.5s"`, `"60s"`, `"20ns"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub Duration);

impl Time {
    /// Parses `"10ms"`, `"1.5s"`, `"250us"`, `"20ns"` or a bare number of milliseconds.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let nanos_per_unit: u64 = match unit.trim() {
            "" | "ms" => 1_000_000,
            "ns" => 1,
            "us" | "µs" => 1_000,
            "s" => 1_000_000_000,
            _ => return None,
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let mut nanos = whole.checked_mul(nanos_per_unit)?;
        let mut scale = nanos_per_unit;
        for digit in fraction.chars() {
            scale /= 10;
            nanos = nanos.checked_add(u64::from(digit.to_digit(10)?) * scale)?;
        }
        Some(Self(Duration::from_nanos(nanos)))
    }
}

impl From<Duration> for Time {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos % 1_000_000 == 0 {
            write!(f, "{}ms", nanos / 1_000_000)
        } else if nanos % 1_000 == 0 {
            write!(f, "{}us", nanos / 1_000)
        } else {
            write!(f, "{nanos}ns")
        }
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Time;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a time: milliseconds as an integer, or a string such as \"10ms\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Time, E> {
                Ok(Time(Duration::from_millis(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Time, E> {
                u64::try_from(v)
                    .map(|v| Time(Duration::from_millis(v)))
                    .map_err(|_| E::custom("a time cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Time, E> {
                Time::parse(v).ok_or_else(|| {
                    E::custom(format!(
                        "bad time {v:?}: expected a number with unit ns, us, ms or s"
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A vPCI message type as a scenario file names it (`"QUERY_RESOURCE_REQUIREMENTS"`, with or
/// without the `PCI_` prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MessageName(pub MessageType);

impl Serialize for MessageName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.name() {
            Some(name) => s.serialize_str(name),
            None => s.serialize_u32(self.0.0),
        }
    }
}

impl<'de> Deserialize<'de> for MessageName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        MessageType::from_name(&name)
            .map(MessageName)
            .ok_or_else(|| de::Error::custom(format!("unknown vPCI message type {name:?}")))
    }
}

impl From<MessageType> for MessageName {
    fn from(t: MessageType) -> Self {
        Self(t)
    }
}

/// Raw bytes, written as a hex string (`"0b00494201000000"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct HexBytes(pub Vec<u8>);

impl Serialize for HexBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for HexBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let digits: Vec<char> = text.chars().filter(|c| !c.is_whitespace()).collect();
        if digits.len() % 2 != 0 {
            return Err(de::Error::custom("hex bytes need an even number of digits"));
        }
        digits
            .chunks(2)
            .map(|pair| {
                let hi = pair.first().and_then(|c| c.to_digit(16));
                let lo = pair.get(1).and_then(|c| c.to_digit(16));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => Ok((hi * 16 + lo) as u8),
                    _ => Err(de::Error::custom(format!("bad hex digits in {text:?}"))),
                }
            })
            .collect::<Result<Vec<u8>, D::Error>>()
            .map(HexBytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Times parse with every unit, fractions included, and print back exactly.
    #[test]
    fn times_parse_and_print() {
        assert_eq!(Time::parse("10ms"), Some(Time(Duration::from_millis(10))));
        assert_eq!(Time::parse("1.5s"), Some(Time(Duration::from_millis(1500))));
        assert_eq!(Time::parse("250us"), Some(Time(Duration::from_micros(250))));
        assert_eq!(Time::parse("7"), Some(Time(Duration::from_millis(7))));
        assert_eq!(Time::parse("20ns"), Some(Time(Duration::from_nanos(20))));
        assert_eq!(Time::parse("3h"), None);
        assert_eq!(Time::parse("ms"), None);
        assert_eq!(Time::parse("1.2.3s"), None);
        assert_eq!(Time(Duration::from_millis(1500)).to_string(), "1500ms");
        assert_eq!(Time(Duration::from_nanos(1500)).to_string(), "1500ns");
        let t: Time = serde_json::from_str("\"60s\"").unwrap();
        assert_eq!(t.0, Duration::from_secs(60));
        let t: Time = serde_json::from_str("5").unwrap();
        assert_eq!(t.0, Duration::from_millis(5));
        assert!(serde_json::from_str::<Time>("-5").is_err());
    }

    /// Message names accept the prefix or not, and reject unknown names.
    #[test]
    fn message_names() {
        let m: MessageName = serde_json::from_str("\"EJECTION_COMPLETE\"").unwrap();
        assert_eq!(m.0, MessageType::EJECTION_COMPLETE);
        let m: MessageName = serde_json::from_str("\"PCI_BUS_D0ENTRY\"").unwrap();
        assert_eq!(m.0, MessageType::BUS_D0ENTRY);
        assert!(serde_json::from_str::<MessageName>("\"NOPE\"").is_err());
        assert_eq!(
            serde_json::to_string(&MessageName(MessageType::EJECT)).unwrap(),
            "\"PCI_EJECT\""
        );
    }

    /// Hex bytes round-trip and reject odd or non-hex input.
    #[test]
    fn hex_bytes() {
        let b: HexBytes = serde_json::from_str("\"0b00 4942\"").unwrap();
        assert_eq!(b.0, [0x0b, 0, 0x49, 0x42]);
        assert_eq!(serde_json::to_string(&b).unwrap(), "\"0b004942\"");
        assert!(serde_json::from_str::<HexBytes>("\"abc\"").is_err());
        assert!(serde_json::from_str::<HexBytes>("\"zz\"").is_err());
    }
}
