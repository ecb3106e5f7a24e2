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

/// Which guest messages a trigger or a response rule names: one message type
/// (`"CREATE_INTERRUPT_MESSAGE3"`), or a message *family*, written with a trailing `*`
/// (`"CREATE_INTERRUPT_MESSAGE*"`): every version of the message, whichever one the guest's
/// protocol version makes it send. The families: `CREATE_INTERRUPT_MESSAGE*` (1, 2, 3),
/// `DELETE_INTERRUPT_MESSAGE*` (1, 2), `RESOURCES_ASSIGNED*` (1, 2, 3) and `BUS_RELATIONS*`
/// (1, 2); any other message's family is the message alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessagePattern {
    /// Exactly this type.
    One(MessageType),
    /// Every version of a message, named by its first (unversioned) type.
    Family(MessageType),
}

impl MessagePattern {
    /// Whether a message of type `message` is one this pattern names.
    pub fn matches(self, message: MessageType) -> bool {
        match self {
            Self::One(t) => t == message,
            Self::Family(base) => family_of(message) == base,
        }
    }
}

/// The family a message type belongs to, named by its first (unversioned) type:
/// `CREATE_INTERRUPT_MESSAGE3` -> `CREATE_INTERRUPT_MESSAGE`. A type with no other versions is
/// its own family.
pub fn family_of(message: MessageType) -> MessageType {
    match message {
        MessageType::CREATE_INTERRUPT_MESSAGE2 | MessageType::CREATE_INTERRUPT_MESSAGE3 => {
            MessageType::CREATE_INTERRUPT_MESSAGE
        }
        MessageType::DELETE_INTERRUPT_MESSAGE2 => MessageType::DELETE_INTERRUPT_MESSAGE,
        MessageType::RESOURCES_ASSIGNED2 | MessageType::RESOURCES_ASSIGNED3 => {
            MessageType::RESOURCES_ASSIGNED
        }
        MessageType::BUS_RELATIONS2 => MessageType::BUS_RELATIONS,
        other => other,
    }
}

impl From<MessageType> for MessagePattern {
    fn from(t: MessageType) -> Self {
        Self::One(t)
    }
}

impl From<MessageName> for MessagePattern {
    fn from(n: MessageName) -> Self {
        Self::One(n.0)
    }
}

impl fmt::Display for MessagePattern {
    /// As a scenario file writes it, without the `PCI_` prefix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (t, star) = match self {
            Self::One(t) => (t, ""),
            Self::Family(t) => (t, "*"),
        };
        match t.name() {
            Some(name) => write!(f, "{}{star}", name.strip_prefix("PCI_").unwrap_or(name)),
            None => write!(f, "{:#010x}{star}", t.0),
        }
    }
}

impl Serialize for MessagePattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MessagePattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        let trimmed = name.trim();
        match trimmed.strip_suffix('*') {
            None => MessageType::from_name(trimmed)
                .map(Self::One)
                .ok_or_else(|| de::Error::custom(format!("unknown vPCI message type {name:?}"))),
            Some(base) => match MessageType::from_name(base) {
                Some(t) if family_of(t) == t => Ok(Self::Family(t)),
                Some(t) => Err(de::Error::custom(format!(
                    "{name:?}: a message family is named by its unversioned message, \
                     \"{}\"",
                    MessagePattern::Family(family_of(t))
                ))),
                None => Err(de::Error::custom(format!(
                    "unknown vPCI message family {name:?} (families: \
                     \"CREATE_INTERRUPT_MESSAGE*\", \"DELETE_INTERRUPT_MESSAGE*\", \
                     \"RESOURCES_ASSIGNED*\", \"BUS_RELATIONS*\")"
                ))),
            },
        }
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

    /// A trailing `*` names every version of a message; a versioned name cannot be a family.
    #[test]
    fn message_families() {
        let p: MessagePattern = serde_json::from_str("\"CREATE_INTERRUPT_MESSAGE*\"").unwrap();
        assert_eq!(
            p,
            MessagePattern::Family(MessageType::CREATE_INTERRUPT_MESSAGE)
        );
        for t in [
            MessageType::CREATE_INTERRUPT_MESSAGE,
            MessageType::CREATE_INTERRUPT_MESSAGE2,
            MessageType::CREATE_INTERRUPT_MESSAGE3,
        ] {
            assert!(p.matches(t));
        }
        assert!(!p.matches(MessageType::DELETE_INTERRUPT_MESSAGE));
        for (name, members) in [
            ("PCI_RESOURCES_ASSIGNED*", 3),
            ("DELETE_INTERRUPT_MESSAGE*", 2),
            ("BUS_RELATIONS*", 2),
            ("EJECTION_COMPLETE*", 1),
        ] {
            let p: MessagePattern = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            let n = MessageType::ALL.iter().filter(|t| p.matches(**t)).count();
            assert_eq!(n, members, "{name}");
        }
        assert_eq!(p.to_string(), "CREATE_INTERRUPT_MESSAGE*");
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            "\"CREATE_INTERRUPT_MESSAGE*\""
        );
        let one: MessagePattern = serde_json::from_str("\"CREATE_INTERRUPT_MESSAGE2\"").unwrap();
        assert!(!one.matches(MessageType::CREATE_INTERRUPT_MESSAGE3));
        let e = serde_json::from_str::<MessagePattern>("\"CREATE_INTERRUPT_MESSAGE3*\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"CREATE_INTERRUPT_MESSAGE*\""), "{e}");
        assert!(serde_json::from_str::<MessagePattern>("\"NOPE*\"").is_err());
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
