//! Volumes, and a guest's attached volumes.

use hvagent_proto::v1 as pb;

use super::{Table, bytes, or_dash};

/// Volumes as a table.
pub fn volumes(list: &[pb::Volume]) -> String {
    let mut t = Table::new(&[
        "NAME",
        "KIND",
        "FORMAT",
        "SIZE",
        "SHAREABLE",
        "SOURCE",
        "ATTACHED TO",
    ]);
    for v in list {
        t.row(vec![
            v.name.clone(),
            v.kind.clone(),
            v.format.clone(),
            bytes(v.size_bytes),
            if v.shareable { "yes" } else { "no" }.into(),
            v.source.clone(),
            or_dash(&v.attached_to.join(",")).to_string(),
        ]);
    }
    t.render()
}

/// `hvctl volume list`: the volumes, then any record that cannot be read.
pub fn volume_list(l: &pb::ListVolumesResponse) -> String {
    let mut out = volumes(&l.volumes);
    for u in &l.unreadable {
        out.push_str(&format!("unreadable (left alone): {u}\n"));
    }
    out
}

/// A guest after an attach or detach: its row, then its volumes.
pub fn attached(v: &pb::Vm) -> String {
    format!(
        "{}volumes: {}\n",
        super::vms(std::slice::from_ref(v)),
        or_dash(&v.volumes.join(", "))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_rows_and_a_guests_volumes() {
        let v = pb::Volume {
            name: "data".into(),
            kind: "store".into(),
            format: "qcow2".into(),
            size_bytes: 1 << 30,
            source: "/var/lib/hvagent/volumes/data.qcow2".into(),
            attached_to: vec!["u1".into(), "u2".into()],
            ..Default::default()
        };
        let table = volumes(&[v]);
        assert!(table.contains("ATTACHED TO"), "{table}");
        assert!(table.contains("u1,u2"), "{table}");
        assert!(table.contains(" no "), "{table}");
        let list = volume_list(&pb::ListVolumesResponse {
            volumes: vec![],
            unreadable: vec!["volume \"x\": bad".into()],
        });
        assert!(
            list.ends_with("unreadable (left alone): volume \"x\": bad\n"),
            "{list}"
        );
        let vm = pb::Vm {
            name: "web".into(),
            volumes: vec!["a".into(), "b".into()],
            ..Default::default()
        };
        assert!(attached(&vm).ends_with("volumes: a, b\n"));
        assert!(attached(&pb::Vm::default()).ends_with("volumes: -\n"));
    }
}
