//! Networks and their repairs.

use hvagent_proto::v1 as pb;

use super::{Table, bytes, or_dash};

/// Networks as a table, with what is being repaired under each.
pub fn networks(list: &[pb::NetworkStatus]) -> String {
    let mut t = Table::new(&["NAME", "KIND", "BRIDGE", "MTU", "STATE", "NICS", "RX", "TX"]);
    let mut problems = String::new();
    for n in list {
        let spec = n.spec.clone().unwrap_or_default();
        let kind = match spec.kind.as_str() {
            "vxlan" => format!("vxlan {}", spec.vni),
            "vlan" => format!("vlan {} on {}", spec.vlan_id, spec.uplink),
            _ if !spec.uplink.is_empty() => format!("bridge on {}", spec.uplink),
            other => other.to_string(),
        };
        let c = n.counters.unwrap_or_default();
        t.row(vec![
            spec.name.clone(),
            kind,
            n.bridge.clone(),
            n.mtu.to_string(),
            n.state.clone(),
            or_dash(&n.nics.join(",")).to_string(),
            bytes(c.rx_bytes),
            bytes(c.tx_bytes),
        ]);
        for p in &n.problems {
            problems.push_str(&format!("{}: {p}\n", spec.name));
        }
    }
    t.render() + &problems
}
