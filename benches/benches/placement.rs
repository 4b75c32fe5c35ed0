//! Placement decisions on a big host (criterion): 2 sockets × 64 cores × 2 threads, one NUMA
//! node per socket with 1 TiB each, 20 TB of local SSD, already holding 500 claims (350 × SCS-1V-2, 100 ×
//! SCS-1L-1, 30 × SCS-2T-4, 20 × SCS-1C-2). Measured:
//!
//! - `claim+release/<flavor>`: one claim decision (validation, admission, choosing CPUs and
//!   memory, taking them) plus its release, so the state stays at 500 claims;
//! - `capacity/standard`: the capacity answer for all 28 standard flavors.
//!
//! Run: `cargo bench -p hvagent-benches --bench placement`. Targets (issue 4): a claim decision
//! under 50 µs median, the capacity answer under 1 ms.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use hvagent::flavor::{FlavorSpec, catalog, parse};
use hvagent::placement::topology::Shape;
use hvagent::placement::{Allocator, ClaimRequest, Policy, Topology};

fn spec(name: &str) -> FlavorSpec {
    parse(name).map(|p| p.spec).expect("valid flavor")
}

fn request(n: u64, flavor: &str) -> ClaimRequest {
    ClaimRequest {
        vm_uuid: format!("00000000-0000-4000-8000-{n:012x}"),
        request_id: format!("bench-{n}"),
        flavor: spec(flavor),
    }
}

/// The loaded host of the module comment.
pub fn loaded() -> Allocator {
    let mut shape = Shape::new(2, 64, 2);
    shape.memory_mib_per_node = 1024 * 1024;
    let mut topology = Topology::regular(&shape);
    // Local SSDs with 20 TB, so the standard flavors with disks take the full path too.
    topology.facts.disk_classes = vec!['s'];
    topology.facts.disk_gb = Some(20_000);
    let mut alloc = Allocator::new(topology, Policy::default()).expect("policy fits");
    let mix = [
        ("SCS-1V-2", 350),
        ("SCS-1L-1", 100),
        ("SCS-2T-4", 30),
        ("SCS-1C-2", 20),
    ];
    let mut n = 0;
    for (flavor, count) in mix {
        for _ in 0..count {
            n += 1;
            alloc.claim(&request(n, flavor), 0).expect("the mix fits");
        }
    }
    assert_eq!(alloc.claims().count(), 500);
    alloc
}

fn bench(c: &mut Criterion) {
    let mut alloc = loaded();
    let mut group = c.benchmark_group("placement");
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(100);
    for flavor in ["SCS-4V-16", "SCS-4C-16", "SCS-8T-32"] {
        let req = request(10_000, flavor);
        group.bench_function(format!("claim+release/{flavor}"), |b| {
            b.iter(|| {
                let claim = alloc.claim(black_box(&req), 0).expect("fits");
                black_box(&claim);
                alloc.release(&req.vm_uuid).expect("held");
            })
        });
    }
    let standard: Vec<FlavorSpec> = catalog::standard().filter_map(|f| f.spec()).collect();
    group.bench_function("capacity/standard", |b| {
        b.iter(|| {
            for s in &standard {
                black_box(alloc.capacity(black_box(s)));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
