//! Images and an import's progress.

use hvagent_proto::v1 as pb;

use super::{Table, bytes, or_dash};

/// An import's bytes so far, of how many, and the share done when the total is known.
pub fn progress(i: &pb::Image) -> String {
    if i.bytes_total == 0 {
        return format!("{} received", bytes(i.bytes_received));
    }
    format!(
        "{} of {} ({}%)",
        bytes(i.bytes_received),
        bytes(i.bytes_total),
        i.bytes_received * 100 / i.bytes_total
    )
}

/// Images as a table.
pub fn images(list: &[pb::Image]) -> String {
    let mut t = Table::new(&[
        "NAME",
        "STATE",
        "FORMAT",
        "VIRTUAL SIZE",
        "FILE",
        "SHA256",
        "USED BY",
    ]);
    for i in list {
        let state = if i.state == "importing" {
            format!("importing: {}", progress(i))
        } else {
            i.state.clone()
        };
        t.row(vec![
            i.name.clone(),
            state,
            or_dash(&i.format).to_string(),
            bytes(i.virtual_size_bytes),
            bytes(i.file_bytes),
            i.sha256.chars().take(16).collect(),
            or_dash(&i.used_by.join(",")).to_string(),
        ]);
    }
    t.render()
}
