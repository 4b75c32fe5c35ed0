//! The audit log: one JSON line per mutating call, allowed or denied — who, from where, which
//! method, its target, the result and how long it took. Only a request's first two fields are
//! read for the target (a guest's UUID and name, an image's or network's name), so user-data,
//! keys and metadata never reach the log.

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

/// The target of a unary gRPC request body (one frame: flag, length, protobuf): its first field,
/// and its second when that is text too (a guest's UUID and name). A first field that is a
/// message (a network spec) gives that message's first field.
pub fn target(body: &[u8]) -> String {
    let Some(message) = body.get(5..) else {
        return String::new();
    };
    let fields = strings(message);
    let first = match fields.first() {
        Some((1, Ok(text))) => text.clone(),
        Some((1, Err(nested))) => strings(nested)
            .into_iter()
            .find_map(|(n, t)| (n == 1).then_some(t).and_then(Result::ok))
            .unwrap_or_default(),
        _ => String::new(),
    };
    let second = fields
        .iter()
        .find_map(|(n, t)| (*n == 2).then_some(t).and_then(|t| t.as_ref().ok()));
    let mut target = match second {
        Some(s) if !first.is_empty() => format!("{first} {s}"),
        _ => first,
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

/// Length-delimited fields of a protobuf message, in order: `Ok(text)` where the bytes are
/// printable UTF-8, else `Err(bytes)`. Stops at the first malformed field.
fn strings(mut m: &[u8]) -> Vec<(u64, Result<String, Vec<u8>>)> {
    let mut out = Vec::new();
    while let Some((tag, rest)) = varint(m) {
        m = rest;
        let (field, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => match varint(m) {
                Some((_, rest)) => m = rest,
                None => break,
            },
            1 if m.len() >= 8 => m = &m[8..],
            5 if m.len() >= 4 => m = &m[4..],
            2 => {
                let Some((len, rest)) = varint(m) else { break };
                let Some(bytes) = usize::try_from(len).ok().and_then(|l| rest.get(..l)) else {
                    break;
                };
                let value = match std::str::from_utf8(bytes) {
                    Ok(s) if !s.chars().any(char::is_control) => Ok(s.to_string()),
                    _ => Err(bytes.to_vec()),
                };
                out.push((field, value));
                m = &rest[bytes.len()..];
            }
            _ => break,
        }
    }
    out
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
            target(&frame(&create)),
            "00000000-0000-4000-8000-000000000001 web-1"
        );
        let stop = pb::StopVmRequest {
            uuid: "u".into(),
            force: true,
            timeout_seconds: 3,
        };
        assert_eq!(target(&frame(&stop)), "u");
        let ensure = pb::EnsureNetworkRequest {
            network: Some(pb::Network {
                name: "lan".into(),
                kind: "bridge".into(),
                ..Default::default()
            }),
        };
        assert_eq!(target(&frame(&ensure)), "lan");
        let image = pb::DeleteImageRequest {
            name: "x".repeat(500),
        };
        assert_eq!(target(&frame(&image)).len(), MAX_TARGET);
        assert_eq!(target(&[]), "");
        assert_eq!(target(&[0, 0, 0, 0, 9, 0xff, 0xff]), "", "malformed");
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
