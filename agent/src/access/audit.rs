//! The audit log: one JSON line per mutating call, allowed or denied — who, from where, which
//! method, its target, the result and how long it took. Only a request's first two fields are
//! read for the target (a guest's UUID and name, an image's or network's name), so user-data,
//! keys and metadata never reach the log; they are read as protobuf decodes them, so the target
//! is what the handler acted on even when a field is given twice.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

/// One audit record.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Record {
    pub unix_ms: u64,
    /// `uid=1000 gid=1000 pid=4242`, or `unknown`.
    pub who: String,
    /// The caller's role, or `none`.
    pub role: &'static str,
    /// `unix` (the local socket).
    pub from: String,
    /// `hvagent.v1.VmService/Create`.
    pub method: String,
    pub target: String,
    /// `OK`, or the gRPC code's name (`PERMISSION_DENIED`, `INVALID_ARGUMENT`, ...).
    pub result: String,
    pub duration_ms: f64,
}

/// Where audit records go: a file of their own (`[audit] path`, appended, mode 0600), or the
/// log under the target `hvagent::audit`.
pub struct Audit {
    file: Option<Mutex<std::fs::File>>,
}

impl Audit {
    pub fn open(path: Option<&Path>) -> std::io::Result<Audit> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = match path {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(p)?,
            )),
            None => None,
        };
        Ok(Audit { file })
    }

    pub fn record(&self, r: &Record) {
        let line = serde_json::to_string(r).unwrap_or_default();
        match &self.file {
            Some(f) => {
                let mut f = hvagent_core::sync::lock(f);
                // One write per line: appends of whole lines do not interleave.
                if let Err(e) = f.write_all(format!("{line}\n").as_bytes()) {
                    tracing::error!(error = %e, "cannot write the audit log: {line}");
                }
            }
            None => tracing::info!(target: "hvagent::audit", "{line}"),
        }
    }
}

/// Longest target kept.
const MAX_TARGET: usize = 128;

/// Methods whose request's field 1 is a message whose own field 1 names the target (a network
/// spec and its name); every other request names it in field 1 itself, a string. Checked
/// against the protos by a test.
const SPEC_FIRST: [&str; 1] = ["hvagent.v1.NetworkService/Ensure"];

/// The target of a unary gRPC request to `method` (`hvagent.v1.VmService/Delete`) from its body
/// (one frame: flag, length, protobuf): field 1, and field 2 after it when that is text too (a
/// guest's UUID and name). A field given more than once counts as protobuf decodes it, which is
/// what the handler acts on: a string's last occurrence; a message's occurrences merged.
pub fn target(method: &str, body: &[u8]) -> String {
    let (Some(length), Some(message)) = (body.get(1..5), body.get(5..)) else {
        return String::new();
    };
    // The first message only, as the handler gets it (a prefix of it when only that was read).
    let length = length
        .try_into()
        .map_or(0, |b| u32::from_be_bytes(b) as usize);
    let message = &message[..length.min(message.len())];
    let fields = fields(message);
    let first = if SPEC_FIRST.contains(&method) {
        // Occurrences of a message field merge, as their concatenation would decode.
        let merged: Vec<u8> = fields
            .iter()
            .filter(|(n, _)| *n == 1)
            .flat_map(|(_, bytes)| bytes.iter().copied())
            .collect();
        last_text(&self::fields(&merged), 1)
    } else {
        last_text(&fields, 1)
    };
    let mut target = match last_text(&fields, 2) {
        Some(second) if !second.is_empty() && first.as_ref().is_some_and(|f| !f.is_empty()) => {
            format!("{} {second}", first.unwrap_or_default())
        }
        _ => first.unwrap_or_default(),
    };
    if target.len() > MAX_TARGET {
        let mut cut = MAX_TARGET;
        while !target.is_char_boundary(cut) {
            cut -= 1;
        }
        target.truncate(cut);
    }
    target
}

/// The last occurrence of string field `number`, as protobuf keeps it. Bytes that are not UTF-8
/// make the request undecodable (the handler never runs); they are shown lossily.
fn last_text(fields: &[(u32, &[u8])], number: u32) -> Option<String> {
    fields
        .iter()
        .rev()
        .find(|(n, _)| *n == number)
        .map(|(_, bytes)| String::from_utf8_lossy(bytes).into_owned())
}

/// The length-delimited fields of a protobuf message, in order, skipping every other field as
/// protobuf does (varints, fixed 32 and 64 bits, groups). Stops at the first malformed field:
/// such a request fails to decode, so its handler never runs.
fn fields(mut m: &[u8]) -> Vec<(u32, &[u8])> {
    let mut out = Vec::new();
    while !m.is_empty() {
        let Some((field, wire, rest)) = key(m) else {
            break;
        };
        m = rest;
        if wire == 2 {
            let Some((bytes, rest)) = delimited(m) else {
                break;
            };
            out.push((field, bytes));
            m = rest;
        } else {
            match skip(field, wire, m, 0) {
                Some(rest) => m = rest,
                None => break,
            }
        }
    }
    out
}

/// A field's key: its number (1 to 2^29 - 1) and wire type (0 to 5).
fn key(b: &[u8]) -> Option<(u32, u64, &[u8])> {
    let (key, rest) = varint(b)?;
    let (field, wire) = (u32::try_from(key >> 3).ok()?, key & 7);
    (field != 0 && wire <= 5).then_some((field, wire, rest))
}

fn delimited(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = varint(b)?;
    let len = usize::try_from(len).ok()?;
    (len <= rest.len()).then(|| rest.split_at(len))
}

/// Groups nest no deeper than this (protobuf's own recursion limit).
const MAX_GROUP_DEPTH: u32 = 100;

/// What follows the value of a field of wire type `wire`; a group runs to its end tag.
fn skip(field: u32, wire: u64, b: &[u8], depth: u32) -> Option<&[u8]> {
    match wire {
        0 => varint(b).map(|(_, rest)| rest),
        1 => b.get(8..),
        5 => b.get(4..),
        2 => delimited(b).map(|(_, rest)| rest),
        3 if depth < MAX_GROUP_DEPTH => {
            let mut m = b;
            loop {
                let (inner, inner_wire, rest) = key(m)?;
                if inner_wire == 4 {
                    return (inner == field).then_some(rest);
                }
                m = skip(inner, inner_wire, rest, depth + 1)?;
            }
        }
        // An end tag without its start, or groups nested too deep.
        _ => None,
    }
}

fn varint(b: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &b[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hvagent_proto::v1 as pb;
    use prost::Message;

    fn frame(m: &impl Message) -> Vec<u8> {
        let body = m.encode_to_vec();
        let mut out = vec![0];
        out.extend((body.len() as u32).to_be_bytes());
        out.extend(body);
        out
    }

    const DELETE: &str = "hvagent.v1.VmService/Delete";
    const ENSURE: &str = "hvagent.v1.NetworkService/Ensure";

    #[test]
    fn targets_of_requests() {
        let create = pb::CreateVmRequest {
            uuid: "00000000-0000-4000-8000-000000000001".into(),
            name: "web-1".into(),
            flavor: "SCS-1V-2".into(),
            user_data: b"#cloud-config\npassword: hunter2\n".to_vec(),
            ssh_keys: vec!["ssh-ed25519 AAAA secret".into()],
            ..Default::default()
        };
        assert_eq!(
            target("hvagent.v1.VmService/Create", &frame(&create)),
            "00000000-0000-4000-8000-000000000001 web-1"
        );
        let stop = pb::StopVmRequest {
            uuid: "u".into(),
            force: true,
            timeout_seconds: 3,
        };
        assert_eq!(target("hvagent.v1.VmService/Stop", &frame(&stop)), "u");
        let ensure = pb::EnsureNetworkRequest {
            network: Some(pb::Network {
                name: "lan".into(),
                kind: "bridge".into(),
                ..Default::default()
            }),
        };
        assert_eq!(target(ENSURE, &frame(&ensure)), "lan");
        let image = pb::DeleteImageRequest {
            name: "x".repeat(500),
        };
        assert_eq!(
            target("hvagent.v1.ImageService/Delete", &frame(&image)).len(),
            MAX_TARGET
        );
        assert_eq!(target(DELETE, &[]), "");
        assert_eq!(
            target(DELETE, &[0, 0, 0, 0, 9, 0xff, 0xff]),
            "",
            "malformed"
        );
    }

    fn string(number: u8, value: &str) -> Vec<u8> {
        let mut out = vec![(number << 3) | 2, value.len() as u8];
        out.extend(value.as_bytes());
        out
    }

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend((message.len() as u32).to_be_bytes());
        out.extend(message);
        out
    }

    #[test]
    fn a_field_given_twice_is_the_one_the_handler_gets() {
        let (decoy, real) = ("decoy", "real");
        let twice = [string(1, decoy), string(1, real)].concat();
        let acted_on = pb::DeleteVmRequest::decode(twice.as_slice()).unwrap().uuid;
        assert_eq!(acted_on, real, "protobuf keeps the last");
        assert_eq!(target(DELETE, &framed(&twice)), real);
        // Fields protobuf skips do not hide the real one: a varint, fixed 64 and 32 bits, a
        // group holding a decoy of its own, an unknown string.
        let mut hidden = string(1, decoy);
        hidden.extend([0x98, 0x06, 0x2a]); // field 99, varint
        hidden.extend([0x99, 0x06, 1, 2, 3, 4, 5, 6, 7, 8]); // field 99, fixed64
        hidden.extend([0x9d, 0x06, 1, 2, 3, 4]); // field 99, fixed32
        hidden.extend([0x9b, 0x06]); // field 99, start group
        hidden.extend(string(1, decoy));
        hidden.extend([0x9c, 0x06]); // its end
        hidden.extend(string(15, decoy));
        hidden.extend(string(1, real));
        let acted_on = pb::DeleteVmRequest::decode(hidden.as_slice()).unwrap().uuid;
        assert_eq!(acted_on, real);
        assert_eq!(target(DELETE, &framed(&hidden)), real);
        // A network spec given twice merges: the name of the first stays unless the second
        // names another.
        let spec = |name: &str, kind: &str| {
            pb::Network {
                name: name.into(),
                kind: kind.into(),
                ..Default::default()
            }
            .encode_to_vec()
        };
        let mut ensure = Vec::new();
        for s in [spec("lan", ""), spec("", "bridge")] {
            ensure.extend(string(1, std::str::from_utf8(&s).unwrap()));
        }
        let merged = pb::EnsureNetworkRequest::decode(ensure.as_slice()).unwrap();
        assert_eq!(merged.network.unwrap().name, "lan");
        assert_eq!(target(ENSURE, &framed(&ensure)), "lan");
    }

    #[test]
    fn only_the_first_message_of_a_body_counts() {
        let body = [framed(&string(1, "real")), framed(&string(1, "decoy"))].concat();
        assert_eq!(target(DELETE, &body), "real");
        // A prefix (what a refused call's read keeps) gives what it holds.
        let cut = &framed(&string(1, "real"))[..8];
        assert_eq!(target(DELETE, cut), "");
    }

    /// Of the mutating methods, those that take a spec first are exactly those whose request's
    /// field 1 is a message, that message's field 1 is a string; and no request's field 2 is a
    /// message or bytes (user-data, keys), which the log would then show.
    #[test]
    fn spec_first_is_what_the_protos_say() {
        use prost_types::field_descriptor_proto::Type;
        let set =
            prost_types::FileDescriptorSet::decode(hvagent_proto::FILE_DESCRIPTOR_SET).unwrap();
        let messages: std::collections::BTreeMap<String, &prost_types::DescriptorProto> = set
            .file
            .iter()
            .flat_map(|f| {
                f.message_type
                    .iter()
                    .map(move |m| (format!(".{}.{}", f.package(), m.name()), m))
            })
            .collect();
        let field = |m: &prost_types::DescriptorProto, n: i32| {
            m.field.iter().find(|f| f.number() == n).cloned()
        };
        let mut spec_first = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let name = format!("{}.{}/{}", file.package(), service.name(), method.name());
                    if !crate::access::mutating(&format!("/{name}")) {
                        continue;
                    }
                    let request = messages[method.input_type()];
                    if let Some(first) = field(request, 1)
                        && first.r#type() == Type::Message
                    {
                        let spec = messages[first.type_name()];
                        assert_eq!(field(spec, 1).unwrap().r#type(), Type::String, "{name}");
                        spec_first.push(name.clone());
                    }
                    if let Some(second) = field(request, 2) {
                        assert!(
                            !matches!(second.r#type(), Type::Message | Type::Bytes | Type::Group),
                            "{name}: field 2 would be logged"
                        );
                    }
                }
            }
        }
        assert_eq!(spec_first, SPEC_FIRST);
    }

    /// One piece of a request as a client may encode it.
    #[derive(Debug, Clone)]
    enum Piece {
        Field(u8, String),
        Unknown(u8),
    }

    fn piece() -> impl Strategy<Value = Piece> {
        prop_oneof![
            (1u8..=2, "[ -~\u{a0}-\u{17f}\u{4e00}-\u{4e20}\n\t]{0,20}")
                .prop_map(|(n, s)| Piece::Field(n, s)),
            (0u8..4).prop_map(Piece::Unknown),
        ]
    }

    fn encode(pieces: &[Piece]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in pieces {
            match p {
                Piece::Field(n, s) => out.extend(string(*n, s)),
                Piece::Unknown(0) => out.extend([0xa0, 0x01, 0x7f]), // field 20, varint
                Piece::Unknown(1) => out.extend([0xa5, 0x01, 1, 2, 3, 4]), // fixed32
                Piece::Unknown(2) => out.extend(string(3, "SCS-1V-1")),
                _ => out.extend([0xa3, 0x01, 0x0a, 0x01, b'x', 0xa4, 0x01]), // a group
            }
        }
        out
    }

    use proptest::prelude::*;

    proptest! {
        /// For any sequence of field 1 and field 2 encodings (and fields protobuf skips),
        /// the target names what prost decodes: `request_id vm_uuid` of a Reserve.
        #[test]
        fn targets_are_what_prost_decodes(pieces in proptest::collection::vec(piece(), 0..12)) {
            let message = encode(&pieces);
            let decoded = pb::ReserveRequest::decode(message.as_slice()).unwrap();
            let expected = match (decoded.request_id.as_str(), decoded.vm_uuid.as_str()) {
                (first, second) if !first.is_empty() && !second.is_empty() => {
                    format!("{first} {second}")
                }
                (first, _) => first.to_string(),
            };
            prop_assert_eq!(
                target("hvagent.v1.PlacementService/Reserve", &framed(&message)),
                expected
            );
        }

        /// Network specs given any number of times, each with or without a name: the target is
        /// the name of the spec prost merges them into.
        #[test]
        fn spec_targets_are_what_prost_merges(
            specs in proptest::collection::vec(
                (proptest::option::of("[a-z0-9-]{0,12}"), proptest::option::of("[a-z]{0,6}")),
                0..6,
            )
        ) {
            let mut message = Vec::new();
            for (name, kind) in &specs {
                let spec = pb::Network {
                    name: name.clone().unwrap_or_default(),
                    kind: kind.clone().unwrap_or_default(),
                    ..Default::default()
                }
                .encode_to_vec();
                message.push(0x0a);
                message.push(spec.len() as u8);
                message.extend(spec);
            }
            let decoded = pb::EnsureNetworkRequest::decode(message.as_slice()).unwrap();
            prop_assert_eq!(
                target(ENSURE, &framed(&message)),
                decoded.network.map(|n| n.name).unwrap_or_default()
            );
        }
    }

    #[test]
    fn records_are_json_lines_in_their_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let audit = Audit::open(Some(&path)).unwrap();
        let record = Record {
            unix_ms: 1,
            who: "uid=0 gid=0 pid=1".into(),
            role: "controller",
            from: "unix".into(),
            method: "hvagent.v1.VmService/Delete".into(),
            target: "u\"x".into(),
            result: "OK".into(),
            duration_ms: 1.5,
        };
        audit.record(&record);
        audit.record(&record);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        let back: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(back["target"], "u\"x");
        assert_eq!(back["result"], "OK");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
