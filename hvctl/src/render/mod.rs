//! Human-readable tables for `hvctl`. JSON output does not come through here: it is the proto
//! message serialized as it is, so its keys are the proto field names.

use hvagent_proto::v1 as pb;

mod flavors;
mod health;
mod images;
mod inventory;
mod networks;
mod placement;
mod vms;
mod volumes;

pub use flavors::{Explained, explained, flavor, placement_request, standard_flavors};
pub use health::{drained, health};
pub use images::{images, progress};
pub use inventory::inventory;
pub use networks::networks;
pub use placement::{capacity, claims, plan};
pub use vms::{event, guarantees, guest_info, migrated, migration, vm_list, vms};
pub use volumes::{attached, volume_list, volumes};

/// A plain text table: a header row and left-aligned columns separated by two spaces.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(cell.chars().count());
                }
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, cell) in cells.iter().enumerate() {
                let w = widths.get(i).copied().unwrap_or(0);
                if i + 1 == cells.len() {
                    s.push_str(cell);
                } else {
                    s.push_str(&format!("{cell:<w$}  "));
                }
            }
            s.trim_end().to_string() + "\n"
        };
        let mut out = line(&self.headers);
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// Appends a table as its own block, after a blank line.
fn section(out: &mut String, table: &Table) {
    out.push('\n');
    out.push_str(&table.render());
}

/// Bytes in binary units with one decimal: `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn ids(list: &[u32]) -> String {
    or_dash(&hvagent_core::host::sysfs::format_cpulist(list)).to_string()
}

fn opt(n: Option<u32>) -> String {
    n.map(|n| n.to_string()).unwrap_or_else(|| "-".into())
}

fn hugepages(pools: &[pb::HugepagePool]) -> String {
    if pools.is_empty() {
        return "-".into();
    }
    pools
        .iter()
        .map(|p| {
            format!(
                "{}: {}/{} free",
                hvagent_core::host::scheduler::page_size_label(p.page_size_kib),
                p.free,
                p.total
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn percent(ratio: f64) -> String {
    format!("{:.1} %", ratio * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["xyz".into(), "1".into()]);
        assert_eq!(t.render(), "A    LONGER\nxyz  1\n");
    }

    #[test]
    fn byte_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn inventory_table_shows_topology() {
        let inv = pb::Inventory {
            cpu: Some(pb::Cpu {
                sockets: 2,
                cores: 8,
                threads: 16,
                smt_active: true,
                online: "0-15".into(),
                ..Default::default()
            }),
            numa_nodes: vec![pb::NumaNode {
                id: 1,
                cpus: vec![8, 9, 10],
                hugepages: vec![pb::HugepagePool {
                    page_size_kib: 2048,
                    total: 32,
                    free: 30,
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = inventory(&inv);
        assert!(
            text.contains("2 socket(s), 0 die(s), 8 core(s), 16 thread(s), SMT on"),
            "{text}"
        );
        assert!(text.contains("1     8-10"), "{text}");
        assert!(text.contains("2M: 30/32 free"), "{text}");
    }
}
