//! Names parsed per second on one core (criterion): the 28 standard flavors, long names with
//! every extension, a v1 name and a few invalid ones, parsed in turn.
//!
//! Run: `cargo bench -p hvagent-benches --bench flavor_parse`. Criterion prints the throughput
//! in elements/s, one element being one name.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hvagent::flavor::{catalog, parse};

fn names() -> Vec<String> {
    let mut names: Vec<String> = catalog::standard().map(|f| f.name.to_string()).collect();
    names.extend(
        [
            "SCS-16T-64-3x10s_kvm_hwv_z3h_GNa-64h-48hh_ib",
            "SCS-8Ti-32-50p_i1",
            "SCS-4C-16-2x200p_a1",
            "SCS-4V-16_GA3.1-96-48",
            "SCS-4C:32:100s-kvm-hwv-i3h-GNa:64",
            "SCS-2V-4.3",
            "SCS-2C-4-10_hwv_xen",
            "SCS-2iT-4-10n",
        ]
        .map(String::from),
    );
    names
}

fn bench(c: &mut Criterion) {
    let names = names();
    let mut group = c.benchmark_group("flavor");
    group.throughput(Throughput::Elements(names.len() as u64));
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(50);
    group.bench_function("parse", |b| {
        b.iter(|| {
            for name in &names {
                let _ = black_box(parse(black_box(name)));
            }
        })
    });
    let specs: Vec<_> = names
        .iter()
        .filter_map(|n| parse(n).ok())
        .map(|p| p.spec)
        .collect();
    group.throughput(Throughput::Elements(specs.len() as u64));
    group.bench_function("format", |b| {
        b.iter(|| {
            for spec in &specs {
                black_box(black_box(spec).name());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
