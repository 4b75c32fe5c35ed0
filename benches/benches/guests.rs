//! Guest lifecycle figures against real libvirtd and QEMU, side by side in one run:
//!
//! 1. `Create` → running (the gRPC call returns when libvirt reports the guest running)
//!    against `virsh create` of the equivalent XML (the agent's own domain XML with another
//!    name and UUID) on a fresh overlay of the same image; rounds alternate which goes first.
//! 2. N concurrent `Create`s of `V` guests: all must succeed, every vCPU pinned to the shared
//!    pool and to no CPU outside it; total time and each call's latency.
//! 3. Deleting them all leaves the host as before: domains, libvirt's config files, QEMU
//!    processes, guest files, claims, free hugepages and network interfaces compared.
//!
//! Run: `cargo build --release --bins && cargo bench -p hvagent-benches --bench guests`.
//! Needs what `make test` prepares (libvirtd, images/out/testguest.qcow2). Knobs: `ROUNDS`
//! (latency rounds, default 10), `CONCURRENT` (default 10), `FLAVOR` (default SCS-1Vi-0.5u-1: a
//! flavor with a disk, so that the guest has the local root disk the peer's copy uses).

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{env_or, header, ms, row, start_agent, stats, virsh};
use hvagent::storage::GuestFiles;
use hvagent_proto::v1 as pb;
use hvctl::client;

type Vms = pb::vm_service_client::VmServiceClient<tonic::transport::Channel>;

fn uuid(n: usize) -> String {
    format!("00000000-0000-4000-8000-0000be{n:06x}")
}

/// What a guest may leave on the host, as far as the bench can see.
#[derive(Debug, PartialEq, Eq)]
struct HostState {
    domains: BTreeSet<String>,
    libvirt_configs: BTreeSet<String>,
    qemu_processes: usize,
    guest_dirs: BTreeSet<String>,
    claims: usize,
    free_hugepages: String,
    interfaces: BTreeSet<String>,
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn host_state(
    store: &Path,
    placement: &mut pb::placement_service_client::PlacementServiceClient<tonic::transport::Channel>,
) -> HostState {
    let qemu = names(Path::new("/proc"))
        .iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.starts_with("qemu-system"))
        })
        .count();
    HostState {
        domains: virsh(&["list", "--all", "--uuid"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
        libvirt_configs: names(Path::new("/etc/libvirt/qemu")),
        qemu_processes: qemu,
        guest_dirs: names(&store.join("vms")),
        claims: placement
            .list_claims(pb::ListClaimsRequest {})
            .await
            .expect("claims")
            .into_inner()
            .claims
            .len(),
        free_hugepages: std::fs::read_to_string("/proc/sys/vm/nr_hugepages").unwrap_or_default()
            + &std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
                .unwrap_or_default(),
        interfaces: names(Path::new("/sys/class/net")),
    }
}

fn create_request(n: usize, flavor: &str) -> pb::CreateVmRequest {
    pb::CreateVmRequest {
        uuid: uuid(n),
        name: format!("bench-{n}"),
        flavor: flavor.into(),
        image: "testguest".into(),
        ..Default::default()
    }
}

async fn delete(vms: &mut Vms, n: usize) {
    let gone = vms
        .delete(pb::DeleteVmRequest { uuid: uuid(n) })
        .await
        .expect("delete")
        .into_inner();
    assert!(gone.deleted);
}

/// The agent's XML for guest `n` made into peer `p`'s: another UUID and name, a fresh overlay
/// of the same image and a copy of the seed at the peer's own paths.
fn peer_xml(store: &Path, agent_xml: &str, n: usize, p: usize, root_bytes: u64) -> String {
    let (from, to) = (
        GuestFiles::new(store, &uuid(n)),
        GuestFiles::new(store, &uuid(p)),
    );
    std::fs::create_dir_all(&to.dir).expect("peer dir");
    std::fs::set_permissions(&to.dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let image = store.join("images/testguest/image");
    common::overlay(&to.root_disk(), &image, root_bytes);
    std::fs::copy(from.seed(), to.seed()).expect("copy seed");
    agent_xml.replace(&uuid(n), &uuid(p)).replace(
        &format!("<name>bench-{n}</name>"),
        &format!("<name>peer-{p}</name>"),
    )
}

fn main() {
    let rounds = env_or("ROUNDS", 10);
    let concurrent = env_or("CONCURRENT", 10);
    let flavor = std::env::var("FLAVOR").unwrap_or_else(|_| "SCS-1Vi-0.5u-1".into());
    let dir = common::guest_dir();
    let store = dir.path().join("store");
    // Every CPU in the shared pool, so that a small machine holds the concurrent V guests.
    let (mut agent, socket) = start_agent(
        dir.path(),
        "[placement]\nreserved_cpus = \"\"\nreserved_memory_mib = 256\n",
    );
    let runtime = common::runtime();
    runtime.block_on(async {
        let channel = client::connect(&socket).await.expect("connect");
        let mut vms = Vms::new(channel.clone());
        let mut images = pb::image_service_client::ImageServiceClient::new(channel.clone());
        let mut placement = pb::placement_service_client::PlacementServiceClient::new(channel);
        let image = hvagent_benches_image();
        images
            .import(pb::ImportImageRequest {
                name: "testguest".into(),
                source_path: image.display().to_string(),
                ..Default::default()
            })
            .await
            .expect("import");
        let before = host_state(&store, &mut placement).await;

        // 1. Create → running, against virsh create of the same XML.
        let mut agent_times = Vec::new();
        let mut virsh_times = Vec::new();
        let mut peer = 1000;
        for round in 0..=rounds {
            let warm_up = round == 0;
            let mut order = [true, false];
            if round % 2 == 1 {
                order.reverse();
            }
            for agent_turn in order {
                if agent_turn {
                    let started = Instant::now();
                    let vm = vms
                        .create(create_request(round, &flavor))
                        .await
                        .expect("create")
                        .into_inner();
                    let took = started.elapsed();
                    assert_eq!(vm.state, "running");
                    if !warm_up {
                        agent_times.push(took);
                    }
                } else {
                    // The peer copies the agent guest of this round, made here when the
                    // peer goes first.
                    peer += 1;
                    let made_here = virsh(&["list", "--all", "--uuid"]).contains(&uuid(round));
                    if !made_here {
                        vms.create(create_request(round, &flavor)).await.expect("create");
                    }
                    let xml = virsh(&["dumpxml", "--inactive", &uuid(round)]);
                    let root = GuestFiles::new(&store, &uuid(round)).root_disk();
                    let root_bytes = qcow2_size(&root);
                    let file = dir.path().join(format!("peer-{peer}.xml"));
                    std::fs::write(&file, peer_xml(&store, &xml, round, peer, root_bytes))
                        .expect("peer xml");
                    if !made_here {
                        delete(&mut vms, round).await;
                    }
                    let started = Instant::now();
                    virsh(&["create", file.to_str().expect("path")]);
                    let took = started.elapsed();
                    assert_eq!(virsh(&["domstate", &uuid(peer)]).trim(), "running");
                    if !warm_up {
                        virsh_times.push(took);
                    }
                    virsh(&["destroy", &uuid(peer)]);
                    let _ = std::fs::remove_dir_all(GuestFiles::new(&store, &uuid(peer)).dir);
                }
            }
            if virsh(&["list", "--all", "--uuid"]).contains(&uuid(round)) {
                delete(&mut vms, round).await;
            }
        }
        let (agent_stats, virsh_stats) = (stats(agent_times), stats(virsh_times));
        println!("\nCreate → running, {flavor}, {rounds} rounds (after one warm-up round)\n");
        header();
        row("hvagent `Create` (claim, overlay, seed, define, start)", &agent_stats);
        row("`virsh create` of the same XML (transient, disks made beforehand)", &virsh_stats);
        let diff = agent_stats.median.as_secs_f64() - virsh_stats.median.as_secs_f64();
        println!(
            "\nmedian difference hvagent − virsh: {:+.1} ms (target: within 100 ms); ratio {:.2}",
            diff * 1000.0,
            agent_stats.median.as_secs_f64() / virsh_stats.median.as_secs_f64()
        );

        // 2. Concurrent creates.
        let ids: Vec<usize> = (100..100 + concurrent).collect();
        let started = Instant::now();
        let calls = ids.iter().map(|&n| {
            let mut vms = vms.clone();
            let req = create_request(n, &flavor);
            async move {
                let t = Instant::now();
                let r = vms.create(req).await;
                (n, r.map(|r| r.into_inner()), t.elapsed())
            }
        });
        let results = join_all(calls).await;
        let total = started.elapsed();
        let mut latencies = Vec::new();
        let pool: BTreeSet<u32> = placement
            .list_claims(pb::ListClaimsRequest {})
            .await
            .expect("claims")
            .into_inner()
            .shared_pool
            .into_iter()
            .collect();
        for (n, result, took) in results {
            let vm = result.unwrap_or_else(|e| panic!("concurrent create {n}: {e:?}"));
            assert_eq!(vm.state, "running", "guest {n}");
            latencies.push(took);
            // Every vCPU on exactly the shared pool's CPUs.
            for line in virsh(&["vcpupin", &uuid(n)]).lines().skip(2) {
                let Some((_, cpus)) = line.split_once(':') else {
                    continue;
                };
                let pinned = parse_cpulist(cpus.trim());
                assert_eq!(pinned, pool, "guest {n} vCPU pinned off the shared pool: {line}");
            }
        }
        let concurrent_stats = stats(latencies);
        println!(
            "\n{concurrent} concurrent `Create`s of {flavor}: all succeeded, every vCPU pinned to the shared pool {pool:?} and nowhere else; total {}\n",
            ms(total)
        );
        header();
        row("one `Create` among the concurrent ones", &concurrent_stats);

        // 3. Delete leaves the host as before.
        let started = Instant::now();
        let deletes = ids.iter().map(|&n| {
            let mut vms = vms.clone();
            async move { delete(&mut vms, n).await }
        });
        join_all(deletes).await;
        let deleted_in = started.elapsed();
        let after = host_state(&store, &mut placement).await;
        assert_eq!(before, after, "the host differs after the deletes");
        println!(
            "\n{concurrent} concurrent `Delete`s: {}; host as before (domains, libvirt configs, QEMU processes, guest files, claims, hugepages, interfaces compared): yes",
            ms(deleted_in)
        );
    });
    let _ = agent.kill();
    let _ = agent.wait();
}

fn hvagent_benches_image() -> PathBuf {
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/out/testguest.qcow2");
    assert!(
        image.exists(),
        "{} missing: run images/build.sh",
        image.display()
    );
    image
}

/// The virtual size in a qcow2 header.
fn qcow2_size(path: &Path) -> u64 {
    let head = std::fs::read(path).expect("root disk");
    u64::from_be_bytes(head[24..32].try_into().expect("qcow2 header"))
}

/// "0-3,5" → {0,1,2,3,5}
fn parse_cpulist(list: &str) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<u32>().expect("cpu")..=b.parse().expect("cpu")),
            None => {
                out.insert(part.parse().expect("cpu"));
            }
        }
    }
    out
}

/// Runs futures side by side (as tasks) and returns their results in order.
async fn join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for (i, f) in futures.into_iter().enumerate() {
        set.spawn(async move { (i, f.await) });
    }
    let mut results = set.join_all().await;
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, v)| v).collect()
}
