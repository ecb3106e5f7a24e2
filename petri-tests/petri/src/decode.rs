//! `petri decode`: one vPCI payload, given as hex, printed as one JSON object.

use serde_json::Value;
use vpci_protocol::{DecodeError, MessageType, ProtocolVersion, Sender};

/// Why `petri decode` could not decode its input.
#[derive(Debug, thiserror::Error)]
pub enum DecodeCliError {
    /// The hex text is malformed.
    #[error("bad hex at offset {offset}: {reason}")]
    Hex {
        /// Byte offset (in the decoded bytes) where the bad digit would have gone.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// `--completion-of` names no message type.
    #[error("unknown message type name {0:?} for --completion-of")]
    UnknownTypeName(String),
    /// The bytes are not a valid vPCI payload.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Parses hex digits, ignoring whitespace (and a leading `0x` per group); the result is the
/// payload's bytes.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, DecodeCliError> {
    let mut digits = Vec::with_capacity(text.len());
    for group in text.split_whitespace() {
        let group = group
            .strip_prefix("0x")
            .or_else(|| group.strip_prefix("0X"))
            .unwrap_or(group);
        for c in group.chars() {
            let nibble = c.to_digit(16).ok_or_else(|| DecodeCliError::Hex {
                offset: digits.len() / 2,
                reason: format!("{c:?} is not a hex digit"),
            })?;
            digits.push(nibble as u8);
        }
    }
    if digits.len() % 2 != 0 {
        return Err(DecodeCliError::Hex {
            offset: digits.len() / 2,
            reason: "odd number of hex digits".into(),
        });
    }
    Ok(digits.chunks_exact(2).map(|p| (p[0] << 4) | p[1]).collect())
}

/// A message type by spec name (`PCI_EJECT` or `EJECT`) or number (`0x4249000b`).
pub fn parse_type(text: &str) -> Option<MessageType> {
    let text = text.trim();
    let number = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    };
    match number {
        Some(n) => Some(MessageType(n)).filter(|t| t.name().is_some()),
        None => MessageType::from_name(text),
    }
}

/// Decodes `bytes` as a message from `from`, or as the completion of `completion_of`, and
/// returns its JSON form.
pub fn decode_to_json(
    bytes: &[u8],
    version: ProtocolVersion,
    from: Sender,
    completion_of: Option<&str>,
) -> Result<Value, DecodeCliError> {
    let value = match completion_of {
        Some(name) => {
            let request =
                parse_type(name).ok_or_else(|| DecodeCliError::UnknownTypeName(name.to_owned()))?;
            let completion = vpci_protocol::decode_completion(bytes, request, version)?;
            serde_json::to_value(completion)
        }
        None => serde_json::to_value(vpci_protocol::decode(bytes, from, version)?),
    };
    // Serializing our own types into a Value cannot fail (string keys, finite numbers).
    let mut value = value.unwrap_or(Value::Null);
    humanize(&mut value);
    Ok(value)
}

/// Rewrites a decoded message's JSON as a kernel developer reads it: the message id next to
/// its name in hex (`type_id`: `"0x42490013"`), protocol versions as `"1.4"`, vendor, device
/// and subsystem ids in hex (`"0x1414"`), and a completion's status with its name
/// (`status_name`). Slots, counts and addresses stay numbers. `petri decode` and
/// `petri ring dump` print this form.
pub fn humanize(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(id) = map
                .get("type")
                .and_then(Value::as_str)
                .and_then(MessageType::from_name)
            {
                map.insert("type_id".into(), Value::String(format!("{:#010x}", id.0)));
            }
            if map.get("type").and_then(Value::as_str) == Some("COMPLETION")
                && let Some(status) = map.get("status").and_then(Value::as_u64)
            {
                let status = vpci_protocol::Status(u32::try_from(status).unwrap_or(u32::MAX));
                let name = match status.name() {
                    Some(name) => name.to_owned(),
                    None if status.is_success() => "success".to_owned(),
                    None => "failure".to_owned(),
                };
                map.insert("status_name".into(), Value::String(name));
            }
            for (key, v) in map.iter_mut() {
                match (key.as_str(), v.as_u64()) {
                    ("protocol_version", Some(n)) => {
                        let version = ProtocolVersion::ALL
                            .into_iter()
                            .find(|known| u64::from(known.0) == n);
                        *v = Value::String(match version {
                            Some(version) => version.to_string(),
                            None => format!("{n:#010x}"),
                        });
                    }
                    ("v_id" | "d_id", Some(n)) => *v = Value::String(format!("{n:#06x}")),
                    ("subsystem_id", Some(n)) => *v = Value::String(format!("{n:#010x}")),
                    _ => humanize(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(humanize),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Types are found by spec name, bare name or number.
    #[test]
    fn type_names() {
        let eject = Some(MessageType::EJECT);
        assert_eq!(parse_type("PCI_EJECT"), eject);
        assert_eq!(parse_type("EJECT"), eject);
        assert_eq!(parse_type("0x4249000b"), eject);
        assert_eq!(parse_type("1112080395"), eject);
        assert_eq!(parse_type("0x4249001f"), None);
        assert_eq!(parse_type("PCI_NOPE"), None);
    }

    /// Whitespace and 0x prefixes are allowed; bad digits name their byte offset.
    #[test]
    fn hex_forms() {
        assert_eq!(parse_hex("0b 00 49 42").unwrap(), [0x0b, 0, 0x49, 0x42]);
        assert_eq!(parse_hex("0x0b004942").unwrap(), [0x0b, 0, 0x49, 0x42]);
        assert_eq!(parse_hex("").unwrap(), Vec::<u8>::new());
        match parse_hex("0b 0g") {
            Err(DecodeCliError::Hex { offset: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_hex("abc"),
            Err(DecodeCliError::Hex { offset: 1, .. })
        ));
    }
}
