//! Guests end to end: the real agent creates real QEMU guests (TCG here) through the real
//! libvirtd from the test guest image, and the guest's own console says what it got.
//! Guests boot under TCG on 2 CPUs, so each test makes as few of them as it can.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, Cleanup, claims, console, listed, repo_root, runtime};
use hvagent_proto::v1 as pb;
use tonic::Code;
use tonic::transport::Channel;

type Vms = pb::vm_service_client::VmServiceClient<Channel>;

fn uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{:012x}", 0xe2e000 + n)
}

/// An agent whose storage QEMU (an unprivileged user) can reach, with no CPUs reserved so
/// that a 2-CPU machine holds a `V` and a `C` guest.
fn agent() -> Agent {
    Agent::configure_tcg("", "").spawn()
}

fn virsh(args: &[&str]) -> String {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .expect("virsh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn clients(
    agent: &Agent,
) -> (
    Vms,
    pb::image_service_client::ImageServiceClient<Channel>,
    pb::placement_service_client::PlacementServiceClient<Channel>,
) {
    let channel = hvctl::client::connect(&agent.socket).await.unwrap();
    (
        pb::vm_service_client::VmServiceClient::new(channel.clone()),
        pb::image_service_client::ImageServiceClient::new(channel.clone()),
        pb::placement_service_client::PlacementServiceClient::new(channel),
    )
}

fn testguest() -> PathBuf {
    let image = repo_root().join("images/out/testguest.qcow2");
    assert!(
        image.exists(),
        "{} missing: build it with images/build.sh (make test does)",
        image.display()
    );
    image
}

async fn import(
    images: &mut pb::image_service_client::ImageServiceClient<Channel>,
    name: &str,
    properties: &[(&str, &str)],
) -> pb::Image {
    images
        .import(common::import_request(name, &testguest(), properties))
        .await
        .unwrap()
        .into_inner()
}

fn create(uuid: &str, name: &str, flavor: &str, image: &str) -> pb::CreateVmRequest {
    pb::CreateVmRequest {
        uuid: uuid.into(),
        name: name.into(),
        flavor: flavor.into(),
        image: image.into(),
        ..Default::default()
    }
}

/// Waits until the console shows at least `n` boots, the last one finished; returns how many.
async fn wait_boots(vms: &mut Vms, uuid: &str, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let text = console(vms, uuid).await;
        let boots = text.matches("HVAGENT-GUEST-BOOTED").count();
        let last = text.rsplit("HVAGENT-GUEST-BOOTED").next().unwrap_or("");
        if boots >= n && last.contains("HVAGENT-GUEST-READY") {
            return boots;
        }
        assert!(
            Instant::now() < deadline,
            "guest {uuid}: {boots} boots, not {n}, within 180 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The guest's `hvagent.KEY=VALUE` report of its last boot, once that boot is done.
async fn report(vms: &mut Vms, uuid: &str) -> std::collections::BTreeMap<String, String> {
    wait_boots(vms, uuid, 1).await;
    let text = console(vms, uuid).await;
    text.rsplit("HVAGENT-GUEST-BOOTED")
        .next()
        .unwrap_or("")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("hvagent."))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

#[test]
fn v_and_c_guests_get_what_their_flavor_promises() {
    let agent = agent();
    let mut cleanup = Cleanup(vec![]);
    runtime().block_on(async {
        let (mut vms, mut images, mut placement) = clients(&agent).await;
        import(&mut images, "testguest", &[("min_ram", "256")]).await;
        // Every lifecycle event of this agent's guests, from before the first create.
        let mut stream = vms
            .watch_events(pb::WatchEventsRequest::default())
            .await
            .unwrap()
            .into_inner();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<pb::VmEvent>::new()));
        let collector = tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Ok(Some(e)) = stream.message().await {
                    seen.lock().unwrap().push(e);
                }
            }
        });

        let (v, c) = (uuid(1), uuid(2));
        cleanup.0 = vec![v.clone(), c.clone()];
        let vm = vms
            .create(create(&v, "shared-1", "SCS-1Vi-0.5u", "testguest"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(vm.state, "running");
        assert_eq!(vm.emulation, "tcg");
        let cm = vms
            .create(create(&c, "dedicated-1", "SCS-1Ci-0.5u-2", "testguest"))
            .await
            .unwrap()
            .into_inner();
        let pinned = cm.claim.as_ref().unwrap().vcpus[0].cpus.clone();
        assert_eq!(pinned.len(), 1);

        for (id, name, disk_bytes) in [(&v, "shared-1", 1u64 << 30), (&c, "dedicated-1", 2 << 30)] {
            let r = report(&mut vms, id).await;
            assert_eq!(r["vcpus"], "1", "{r:?}");
            let mem: u64 = r["memory_kib"].parse().unwrap();
            assert!(
                (400_000..=524_288).contains(&mem),
                "MemTotal {mem} kB for 512 MiB"
            );
            assert_eq!(r["root_disk_bytes"], disk_bytes.to_string());
            assert_eq!(r["instance_id"], *id);
            assert_eq!(r["hostname"], name);
        }
        // libvirt holds the claimed pin: the C guest's vCPU on exactly its CPU, the V
        // guest's on the pool, which no longer contains that CPU.
        let pin = virsh(&["vcpupin", &c]);
        assert!(
            pin.lines()
                .any(|l| l.trim().starts_with("0") && l.trim().ends_with(&pinned[0].to_string())),
            "{pin}"
        );
        // The V guest was re-pinned off the CPU the C guest took out of the shared pool.
        let vpin = virsh(&["vcpupin", &v]);
        let affinity = vpin
            .lines()
            .filter_map(|l| l.trim().strip_prefix("0 "))
            .map(str::trim)
            .next()
            .unwrap_or_else(|| panic!("no vCPU 0 in {vpin}"));
        let cpus = hvagent::host::sysfs::parse_cpulist(affinity).unwrap();
        assert!(!cpus.is_empty() && !cpus.contains(&pinned[0]), "{vpin}");
        let listed = vms
            .get(pb::GetVmRequest { uuid: v.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.claim.unwrap().vcpus[0].cpus, cpus);

        // Idempotent create; a different spec for the UUID or a taken name is refused.
        let again = vms
            .create(create(&v, "shared-1", "SCS-1Vi-0.5u", "testguest"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.uuid, v);
        let other = vms
            .create(create(&v, "shared-1", "SCS-2Vi-0.5u", "testguest"))
            .await
            .unwrap_err();
        assert_eq!(other.code(), Code::AlreadyExists, "{other:?}");
        let clash = vms
            .create(create(&uuid(3), "shared-1", "SCS-1Vi-0.5u", "testguest"))
            .await
            .unwrap_err();
        assert_eq!(clash.code(), Code::AlreadyExists);
        assert!(
            clash.message().starts_with("name: \"shared-1\" is taken"),
            "{clash:?}"
        );

        // A soft stop: the guest's acpid powers it off (it says so on its console) well
        // within the timeout. Then start, a soft reboot (the guest powers off, libvirt
        // resets it) and a hard one: each time the guest boots again and reports again.
        let stopped = vms
            .stop(pb::StopVmRequest {
                uuid: v.clone(),
                force: false,
                timeout_seconds: 120,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stopped.state, "shut off");
        assert!(
            console(&mut vms, &v)
                .await
                .contains("HVAGENT-GUEST-POWEROFF")
        );
        let started = vms
            .start(pb::StartVmRequest { uuid: v.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(started.state, "running");
        let boots = wait_boots(&mut vms, &v, 2).await;
        vms.reboot(pb::RebootVmRequest {
            uuid: v.clone(),
            hard: false,
        })
        .await
        .unwrap();
        wait_boots(&mut vms, &v, boots + 1).await;
        vms.reboot(pb::RebootVmRequest {
            uuid: c.clone(),
            hard: true,
        })
        .await
        .unwrap();
        wait_boots(&mut vms, &c, 2).await;
        assert_eq!(report(&mut vms, &c).await["vcpus"], "1");

        // The image is in use; delete removes domain, files and claim; twice is fine.
        let busy = images
            .delete(pb::DeleteImageRequest {
                name: "testguest".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(busy.code(), Code::FailedPrecondition);
        for id in [&v, &c] {
            let d = vms
                .delete(pb::DeleteVmRequest { uuid: id.clone() })
                .await
                .unwrap()
                .into_inner();
            assert!(d.deleted);
            let d = vms
                .delete(pb::DeleteVmRequest { uuid: id.clone() })
                .await
                .unwrap()
                .into_inner();
            assert!(!d.deleted);
            assert!(!agent.dir.path().join("store/vms").join(id).exists());
            assert!(!virsh(&["list", "--all", "--uuid"]).contains(id.as_str()));
        }
        assert!(claims(&mut placement).await.is_empty());
        let gone = vms
            .get(pb::GetVmRequest { uuid: v.clone() })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound);

        // Events arrived in order; soft and hard reboots are reboots, not stops (a soft stop
        // is the guest's own shutdown; a delete is the host's).
        tokio::time::sleep(Duration::from_millis(500)).await;
        collector.abort();
        let seen = seen.lock().unwrap().clone();
        // (QEMU may report a reset twice: the one asked for and the firmware's own.)
        let kinds = |id: &str| -> Vec<String> {
            let mut out: Vec<String> = seen
                .iter()
                .filter(|e| e.uuid == id)
                .filter(|e| !["resumed", "suspended"].contains(&e.kind.as_str()))
                .map(|e| format!("{}/{}", e.kind, e.detail))
                .collect();
            out.dedup_by(|a, b| a == b && a.as_str() == "rebooted/reset");
            out
        };
        assert_eq!(
            kinds(&v),
            [
                "defined/added",
                "started/booted",
                "shutdown/guest",
                "stopped/shutdown",
                "started/booted",
                "rebooted/reset",
                "shutdown/host",
                "stopped/destroyed",
                "undefined/removed"
            ],
            "{seen:?}"
        );
        assert_eq!(
            kinds(&c),
            [
                "defined/added",
                "started/booted",
                "rebooted/reset",
                "shutdown/host",
                "stopped/destroyed",
                "undefined/removed"
            ],
            "{seen:?}"
        );
        assert!(seen.windows(2).all(|w| w[0].unix_ms <= w[1].unix_ms));
    });
}

#[test]
fn failed_creates_leave_nothing_behind() {
    let agent = agent();
    let mut cleanup = Cleanup(vec![]);
    runtime().block_on(async {
        let (mut vms, mut images, mut placement) = clients(&agent).await;
        import(&mut images, "small", &[]).await;
        import(
            &mut images,
            "needs-1g",
            &[("min_ram", "1024"), ("min_disk", "3")],
        )
        .await;
        // An image whose file vanished behind the store's back: making the overlay fails.
        import(&mut images, "broken", &[]).await;
        std::fs::remove_file(agent.dir.path().join("store/images/broken/image")).unwrap();
        // A directory where the console log goes: libvirt cannot start the guest.
        std::fs::create_dir_all(
            agent
                .dir
                .path()
                .join("store/vms")
                .join(uuid(12))
                .join("console.log"),
        )
        .unwrap();

        let cases: Vec<(pb::CreateVmRequest, Code, &str)> = vec![
            (
                create("nope", "a", "SCS-1Vi-0.5u", "small"),
                Code::InvalidArgument,
                "uuid: must be a UUID",
            ),
            (
                create(&uuid(10), "Bad Name", "SCS-1Vi-0.5u", "small"),
                Code::InvalidArgument,
                "name: must be",
            ),
            (
                create(&uuid(10), "a", "SCS-1X-1", "small"),
                Code::InvalidArgument,
                "flavor: position 5",
            ),
            (
                create(&uuid(10), "a", "SCS-1Vi-0.5u", "missing"),
                Code::NotFound,
                "image: image \"missing\" does not exist",
            ),
            (
                create(&uuid(10), "a", "SCS-1Vi-0.5u", "needs-1g"),
                Code::FailedPrecondition,
                "needs at least 1024 MiB (min_ram)",
            ),
            (
                create(&uuid(10), "a", "SCS-1Vi-1u-2", "needs-1g"),
                Code::FailedPrecondition,
                "has a 2 GB root disk; image \"needs-1g\" needs at least 3 GB",
            ),
            (
                // A promise no node of this agent keeps, whatever its CPU or memory (ECC and
                // mitigations depend on the host: placement.rs tests them on fixture trees).
                create(&uuid(10), "a", "SCS-1Vi-0.5u_xen", "small"),
                Code::FailedPrecondition,
                "flavor names the `xen` hypervisor; this node runs KVM/QEMU",
            ),
            (
                create(&uuid(10), "a", "SCS-64Ci-0.5u", "small"),
                Code::ResourceExhausted,
                "64 dedicated vCPUs need",
            ),
            (
                pb::CreateVmRequest {
                    networks: vec!["hvnosuchbr0".into()],
                    ..create(&uuid(10), "a", "SCS-1Vi-0.5u", "small")
                },
                Code::NotFound,
                "networks[0]: no network or bridge named \"hvnosuchbr0\" on this node",
            ),
            (
                pb::CreateVmRequest {
                    user_data: vec![b'x'; 65 * 1024],
                    ..create(&uuid(10), "a", "SCS-1Vi-0.5u", "small")
                },
                Code::InvalidArgument,
                "user_data: at most 65536 bytes",
            ),
            (
                create(&uuid(11), "b", "SCS-1Vi-0.5u", "broken"),
                Code::Internal,
                "disk: qemu-img:",
            ),
            (
                create(&uuid(12), "c", "SCS-1Vi-0.5u", "small"),
                Code::FailedPrecondition,
                "libvirt refused the guest:",
            ),
        ];
        cleanup.0 = vec![uuid(10), uuid(11), uuid(12)];
        for (req, code, message) in cases {
            let id = req.uuid.clone();
            let status = vms.create(req.clone()).await.unwrap_err();
            assert_eq!(status.code(), code, "{req:?}: {status:?}");
            assert!(
                status.message().contains(message),
                "{req:?}: {}",
                status.message()
            );
            // Nothing behind: no domain, no files, no claim.
            assert!(
                !virsh(&["list", "--all", "--uuid"]).contains(&id),
                "{id}: domain left"
            );
            assert!(
                !agent.dir.path().join("store/vms").join(&id).exists(),
                "{id}: files left"
            );
            assert!(claims(&mut placement).await.is_empty(), "{id}: claim left");
        }
    });
}

/// kill -9 the agent at many instants of creates, restart it, and find every guest either
/// whole (domain, files, claim) or gone (none of them), with placement equal to the guests.
#[test]
fn killed_mid_create_every_guest_is_whole_or_gone() {
    // Orphans go at once here: the test itself waits for libvirt's defines to finish.
    let mut agent = Agent::configure_tcg("orphan_grace_seconds = 0\n", "").spawn();
    let ids: Vec<String> = (20..30).map(uuid).collect();
    let _cleanup = Cleanup(ids.clone());
    let rt = runtime();
    rt.block_on(async {
        let (_, mut images, _) = clients(&agent).await;
        import(&mut images, "testguest", &[]).await;
    });
    // Early instants land in validation, the claim, the overlay or the seed; the last one
    // waits until the domain is defined (libvirt finishes a define even when the agent
    // dies, so the restart must not race it).
    let instants_ms = [0u64, 15, 30, 50, 80, 120, 180, 260, 400, 0];
    for (i, (id, at)) in ids.iter().zip(instants_ms).enumerate() {
        let mut create = Command::new(common::bin("hvctl"))
            .arg("--socket")
            .arg(&agent.socket)
            .args([
                "vm",
                "create",
                "--uuid",
                id,
                "--name",
                &format!("crash-{i}"),
            ])
            .args(["--flavor", "SCS-1Vi-0.5u", "--image", "testguest"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if i + 1 == ids.len() {
            let deadline = Instant::now() + Duration::from_secs(180);
            while !virsh(&["list", "--all", "--uuid"]).contains(id.as_str()) {
                assert!(Instant::now() < deadline, "{id} never defined");
                std::thread::sleep(Duration::from_millis(100));
            }
        } else {
            std::thread::sleep(Duration::from_millis(at));
        }
        let (_, log) = agent.stop_with(nix::sys::signal::Signal::SIGKILL);
        let _ = create.wait();
        if log.contains("defining the domain") {
            // The define may be in libvirt's hands (or the kill came before it was sent):
            // give libvirt time to finish one before the agent looks, since this test
            // removes orphan files at once. A define takes tens of milliseconds here.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !virsh(&["list", "--all", "--uuid"]).contains(id.as_str())
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        agent = agent.spawn();
        rt.block_on(async {
            let (mut vms, _, mut placement) = clients(&agent).await;
            let listed = listed(&mut vms).await;
            let mut claimed = claims(&mut placement).await;
            claimed.sort();
            assert_eq!(
                claimed, listed,
                "placement equals the guests after kill at {at} ms"
            );
            for id in &ids[..=i] {
                let domain = virsh(&["list", "--all", "--uuid"]).contains(id.as_str());
                let files = agent.dir.path().join("store/vms").join(id).exists();
                let guest = listed.contains(id);
                assert!(
                    (domain && files && guest) || (!domain && !files && !guest),
                    "{id}: domain {domain}, files {files}, listed {guest}"
                );
            }
        });
    }
}

/// Creates and deletes run side by side; calls about one UUID or one name still see each
/// other: the same create twice answers the same guest, a name is taken only once, and
/// deletes racing each other leave nothing.
#[test]
fn concurrent_calls_about_one_guest_agree() {
    let agent = agent();
    let _cleanup = Cleanup((30..33).map(uuid).collect());
    runtime().block_on(async {
        let (vms, mut images, mut placement) = clients(&agent).await;
        import(&mut images, "testguest", &[]).await;
        let call = |req: pb::CreateVmRequest| {
            let mut vms = vms.clone();
            async move { vms.create(req).await.map(|r| r.into_inner().uuid) }
        };
        let flavor = "SCS-1Vi-0.5u";
        let (a, b, c, d) = tokio::join!(
            call(create(&uuid(30), "twin", flavor, "testguest")),
            call(create(&uuid(30), "twin", flavor, "testguest")),
            call(create(&uuid(31), "twin", flavor, "testguest")),
            call(create(&uuid(32), "other", flavor, "testguest")),
        );
        assert_eq!(d.unwrap(), uuid(32));
        // Whichever UUID got the name first has it; the other is refused.
        let (winners, losers) = if c.is_ok() {
            (vec![c], vec![a, b])
        } else {
            (vec![a, b], vec![c])
        };
        let owner = winners[0].as_ref().unwrap().clone();
        for w in winners {
            assert_eq!(w.unwrap(), owner, "the same create answers the same guest");
        }
        for l in losers {
            let status = l.unwrap_err();
            assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
            assert!(
                status
                    .message()
                    .contains("name: \"twin\" is taken by guest"),
                "{}",
                status.message()
            );
        }
        let mut want = vec![owner.clone(), uuid(32)];
        want.sort();
        assert_eq!(listed(&mut vms.clone()).await, want);
        assert_eq!(claims(&mut placement).await.len(), 2);

        let delete = |id: String| {
            let mut vms = vms.clone();
            async move {
                vms.delete(pb::DeleteVmRequest { uuid: id })
                    .await
                    .map(|r| r.into_inner().deleted)
            }
        };
        let (x, y, z) = tokio::join!(delete(owner.clone()), delete(owner), delete(uuid(32)));
        // Two deletes of one guest: one removed it, the other found nothing.
        assert_eq!([x.unwrap(), y.unwrap()].iter().filter(|e| **e).count(), 1);
        assert!(z.unwrap());
        assert!(claims(&mut placement).await.is_empty());
        for id in (30..33).map(uuid) {
            assert!(
                !virsh(&["list", "--all", "--uuid"]).contains(&id),
                "{id}: domain left"
            );
            assert!(
                !agent.dir.path().join("store/vms").join(&id).exists(),
                "{id}: files left"
            );
        }
    });
}

#[test]
fn mutating_calls_beyond_the_limit_are_refused_at_once_and_leave_nothing() {
    let agent = Agent::configure(
        "[host]\nkvm_device = \"/nonexistent/kvm\"\n[placement]\nreserved_cpus = \"\"\n\
         reserved_memory_mib = 256\n",
    );
    let config = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        config.replace("[api]\n", "[api]\nmax_concurrent_mutations = 1\n"),
    )
    .unwrap();
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = agent.spawn();
    let _cleanup = Cleanup((40..43).map(uuid).collect());
    runtime().block_on(async {
        let (vms, mut images, mut placement) = clients(&agent).await;
        import(&mut images, "testguest", &[]).await;
        let call = |n: u32| {
            let mut vms = vms.clone();
            async move {
                vms.create(create(
                    &uuid(n),
                    &format!("busy-{n}"),
                    "SCS-1Vi-0.5u",
                    "testguest",
                ))
                .await
                .map(|r| r.into_inner().uuid)
            }
        };
        let results = {
            let (a, b, c) = tokio::join!(call(40), call(41), call(42));
            [a, b, c]
        };
        let created: Vec<String> = results.iter().filter_map(|r| r.clone().ok()).collect();
        let refused: Vec<&tonic::Status> =
            results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(!created.is_empty(), "{results:?}");
        assert!(!refused.is_empty(), "one create at a time: {results:?}");
        for status in &refused {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert!(
                status.message().contains("[api] max_concurrent_mutations"),
                "{}",
                status.message()
            );
        }
        // A refused create left no domain and no claim.
        let mut want = created.clone();
        want.sort();
        assert_eq!(listed(&mut vms.clone()).await, want);
        assert_eq!(claims(&mut placement).await.len(), created.len());
        for id in created {
            assert!(
                vms.clone()
                    .delete(pb::DeleteVmRequest { uuid: id })
                    .await
                    .unwrap()
                    .into_inner()
                    .deleted
            );
        }
    });
}
