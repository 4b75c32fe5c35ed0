//! The flavor tables: a parsed flavor, its promises, the standard flavors.

use hvagent_proto::v1 as pb;

use super::{Table, yes_no};

/// A parsed flavor: its parts, one per line.
pub fn flavor(f: &hvagent_core::flavor::view::FlavorView) -> String {
    let mut t = Table::new(&["FLAVOR", ""]);
    t.row(vec![
        "name".into(),
        format!("{} (syntax {})", f.name, f.syntax),
    ]);
    t.row(vec!["short name".into(), f.short_name.clone()]);
    t.row(vec![
        "cpu".into(),
        format!(
            "{} {}{}",
            f.cpu.count,
            f.cpu.kind,
            if f.cpu.insecure { ", insecure" } else { "" }
        ),
    ]);
    t.row(vec![
        "ram".into(),
        format!(
            "{} GiB, {}{}",
            f.ram.gib,
            if f.ram.ecc { "ECC" } else { "no ECC" },
            if f.ram.oversubscribed {
                ", oversubscribed"
            } else {
                ""
            }
        ),
    ]);
    t.row(vec![
        "disk".into(),
        match &f.disk {
            None => "none (boot from volume)".into(),
            Some(d) => format!(
                "{} x {} {}",
                d.count,
                d.size_gb
                    .map(|s| format!("{s} GB"))
                    .unwrap_or_else(|| "min_disk-sized".into()),
                d.kind.unwrap_or("(type chosen by the cloud)")
            ),
        },
    ]);
    t.row(vec![
        "hypervisor".into(),
        f.hypervisor.unwrap_or("- (kvm assumed)").into(),
    ]);
    t.row(vec!["hwv".into(), yes_no(f.hwv).into()]);
    t.row(vec![
        "cpu brand".into(),
        match &f.cpu_brand {
            None => "-".into(),
            Some(b) => format!(
                "{}{}, frequency level {}",
                b.vendor,
                b.generation
                    .map(|g| format!(" generation {g}"))
                    .unwrap_or_default(),
                b.frequency_level
            ),
        },
    ]);
    t.row(vec![
        "gpu".into(),
        match &f.gpu {
            None => "-".into(),
            Some(g) => format!(
                "{} {}{}{}{}",
                g.kind,
                g.vendor,
                g.generation
                    .map(|x| format!(" generation {x}"))
                    .unwrap_or_default(),
                g.compute_units
                    .map(|c| format!(", {c} compute units (h level {})", g.high_freq_level))
                    .unwrap_or_default(),
                g.vram_gib
                    .map(|v| format!(", {v} GiB VRAM (h level {})", g.hbm_level))
                    .unwrap_or_default()
            ),
        },
    ]);
    t.row(vec!["ib".into(), yes_no(f.ib).into()]);
    for (k, v) in &f.extra_specs {
        t.row(vec![k.clone(), v.clone()]);
    }
    t.render()
}

/// What `hvctl flavor explain` prints (and, as JSON, serializes).
#[derive(Debug, serde::Serialize)]
pub struct Explained {
    pub name: String,
    pub promises: Vec<hvagent_core::flavor::explain::Promise>,
}

pub fn explained(e: &Explained) -> String {
    let mut out = format!(
        "{}
",
        e.name
    );
    for p in &e.promises {
        out.push_str(&format!(
            "\n{}: {}\n  on this node: {}\n",
            p.part, p.promise, p.enforcement
        ));
    }
    out
}

/// A flavor's Placement request: the resources as a table, then traits, query and extra_specs.
pub fn placement_request(r: &pb::PlacementRequestResponse) -> String {
    let mut t = Table::new(&["RESOURCE CLASS", "AMOUNT"]);
    for (class, n) in &r.resources {
        t.row(vec![class.clone(), n.to_string()]);
    }
    let mut out = format!("{}\n\n{}", r.name, t.render());
    out.push_str(&format!("\nrequired:  {}\n", r.required.join(", ")));
    out.push_str(&format!("forbidden: {}\n", r.forbidden.join(", ")));
    out.push_str(&format!("query:     {}\n\nextra_specs:\n", r.query));
    for (k, v) in &r.extra_specs {
        out.push_str(&format!("  {k}={v}\n"));
    }
    out
}

/// The standard flavors as a table.
pub fn standard_flavors(list: &[pb::StandardFlavor]) -> String {
    let mut t = Table::new(&["NAME", "STATUS", "VCPUS", "CPU TYPE", "RAM", "DISK"]);
    for s in list {
        let f = s.flavor.clone().unwrap_or_default();
        let cpu = f.cpu.unwrap_or_default();
        t.row(vec![
            s.name.clone(),
            if s.mandatory {
                "mandatory"
            } else {
                "recommended"
            }
            .into(),
            cpu.count.to_string(),
            cpu.r#type,
            format!("{} GiB", f.ram.map(|r| r.gib).unwrap_or_default()),
            f.disk
                .map(|d| {
                    format!(
                        "{} GB {}",
                        d.size_gb.unwrap_or_default(),
                        f.extra_specs
                            .get("scs:disk0-type")
                            .cloned()
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    t.render()
}
