//! `hvctl`: the operator's command line for hvagent.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use hvagent::ctl::{client, render, verify};
use hvagent::flavor::{self, view::FlavorView};
use hvagent::placement;
use hvagent_proto::v1 as pb;

/// Talk to the hvagent node agent of this compute node.
///
/// Node, image, VM, network and placement commands connect to the agent: on this node through
/// its Unix socket (default /run/hvagent/hvagent.sock, mode 0660: root, or the socket's group;
/// the agent maps the caller's user and groups to a role), or from elsewhere with --endpoint
/// and a client certificate (mutual TLS; the agent maps the certificate's identity to a role).
/// Flavor and plan commands work offline.
///
/// Exit status: 0 success, 1 the agent refused or failed the request, 2 bad command line,
/// invalid flavor name or plan input, unusable TLS files, 3 the agent could not be reached
/// (including a TLS handshake it or hvctl refused).
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// The agent's Unix socket.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "HVCTL_SOCKET",
        default_value = "/run/hvagent/hvagent.sock"
    )]
    socket: PathBuf,

    /// The agent's TCP listener (its [api] tcp_listen), HOST:PORT; HOST must be a name or
    /// address in the agent's certificate. Needs --tls-cert, --tls-key and --tls-ca.
    #[arg(
        long,
        global = true,
        value_name = "HOST:PORT",
        env = "HVCTL_ENDPOINT",
        requires_all = ["tls_cert", "tls_key", "tls_ca"]
    )]
    endpoint: Option<String>,

    /// This client's certificate (PEM, leaf first); the agent gives its identity a role.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "HVCTL_TLS_CERT",
        requires = "endpoint"
    )]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "HVCTL_TLS_KEY",
        requires = "endpoint"
    )]
    tls_key: Option<PathBuf>,

    /// The CA bundle the agent's certificate must chain to (PEM).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "HVCTL_TLS_CA",
        requires = "endpoint"
    )]
    tls_ca: Option<PathBuf>,

    /// `table` for people, `json` for programs (the proto message, field names as in the API),
    /// `markdown` for `hvctl verify` reports (a table elsewhere).
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
    /// `hvctl verify`'s report as Markdown (other commands print tables).
    Markdown,
}

#[derive(Subcommand)]
enum Command {
    /// This compute node: hardware inventory and what it can serve.
    #[command(subcommand)]
    Node(NodeCommand),

    /// SCS flavor names (scs-0100-v3): parse, explain, the standard flavors. Works offline,
    /// without an agent.
    #[command(subcommand)]
    Flavor(FlavorCommand),

    /// Images in the agent's store: import, list, show, delete.
    #[command(subcommand)]
    Image(ImageCommand),

    /// Guests: create from an image with an SCS flavor, list, show, start, stop, reboot,
    /// delete, read the serial console. A guest is named by its name or UUID.
    #[command(subcommand)]
    Vm(VmCommand),

    /// The agent's allocator: reserve, release and list claims (host CPUs, NUMA memory,
    /// hugepages held for guests).
    #[command(subcommand)]
    Placement(PlacementCommand),

    /// Host networks for guests: provider bridges, VXLAN tenant segments, VLANs. The agent
    /// keeps each network as specified and repairs drift (docs/networking.md).
    #[command(subcommand)]
    Network(NetworkCommand),

    /// Prove on this node that flavors keep their SCS promises: per flavor, create a probe
    /// guest from the probe image, read its report (CPU flags, RAM, disks, entropy, FIPS
    /// 140-2, write IOPS) and workload samples from its console, fill the node with busy
    /// neighbour guests, ask the agent for its guarantee report, and judge every promise:
    /// kept, violated, or not verifiable here (timing under TCG emulation). Every guest it
    /// creates is deleted, also on Ctrl-C or SIGTERM. Progress goes to stderr, the report to
    /// stdout (--output markdown, the default, or json) and with --report DIR to
    /// DIR/report.{json,md} and SVG charts. Exit status 4: a promise was violated or a
    /// flavor could not be probed; 1 also when guests it made could not be deleted or the
    /// report could not be written. See docs/verify.md.
    Verify(VerifyArgs),

    /// Offline sizing: place flavors, in the order given, on a captured sysfs/procfs tree
    /// (DIR/sys/..., DIR/proc/..., as `images/guest/capture.sh` writes them) under a node
    /// policy, and show the claims, the refusals and what still fits. No agent needed.
    Plan {
        /// Root of the captured tree (`/` plans for this machine).
        #[arg(long, value_name = "DIR")]
        root: PathBuf,
        /// hvagent config whose [placement] section is the policy (default: the defaults).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// A flavor and how many guests of it, e.g. SCS-4C-16=3; repeat for more.
        #[arg(long = "flavor", value_name = "NAME=COUNT", required = true)]
        flavors: Vec<String>,
    },
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// A flavor to verify; repeat for more.
    #[arg(
        long = "flavor",
        value_name = "NAME",
        required_unless_present = "standard"
    )]
    flavors: Vec<String>,
    /// Also every SCS standard flavor (scs-0103); those that do not fit are skipped.
    #[arg(long)]
    standard: bool,
    /// Busy neighbour guests beside each C, T and V probe guest: as many as fit, at most N
    /// (with enough, a V probe's shared pool is filled to the ratio the agent admits).
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(0..=256))]
    neighbours: u32,
    /// The neighbours' flavor [default: SCS-1V-1u, or SCS-1Vi-1u where the node serves only
    /// `i` flavors because a CPU vulnerability is not mitigated]
    #[arg(long, value_name = "NAME")]
    neighbour_flavor: Option<String>,
    /// Image in the agent's store with the probe: images/out/testguest.qcow2 imported
    /// under this name.
    #[arg(long, value_name = "NAME", default_value = "hvagent-probe")]
    image: String,
    /// Workload windows measured alone, and again beside the neighbours.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    samples: u32,
    /// Length of one workload window in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    window_ms: u64,
    /// Blocks of /dev/random for the FIPS 140-2 tests (the SCS entropy check needs 1000).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    fips_blocks: u32,
    /// How long the probe writes to its root disk for the IOPS figure (0: skip).
    #[arg(long, value_name = "MS", default_value_t = 3000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    iops_ms: u64,
    /// How long a guest may take to boot and print its report or first sample.
    #[arg(long, value_name = "SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=3600))]
    boot_timeout: u64,
    /// C/T: the share of throughput alone a vCPU may lose beside the neighbours.
    #[arg(long, value_name = "RATIO", default_value_t = 0.1)]
    tolerance: f64,
    /// Also write report.json, report.md and the SVG charts into DIR (created if missing).
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Copy a local file, or download an http(s) URL, into the store. The format (qcow2 or
    /// raw) is read from the content. Progress is shown on a terminal while it runs.
    Import {
        /// An http:// or https:// URL (the agent downloads it), or the absolute or relative
        /// path of the image file on this node.
        source: String,
        /// Store name: 1-64 of a-z 0-9 . _ -.
        #[arg(long)]
        name: String,
        /// Expected sha256 of the content; the import fails if it differs (and is a no-op
        /// without a download when the image is already there with it).
        #[arg(long)]
        sha256: Option<String>,
        /// An image property, e.g. min_disk=5 (GB), min_ram=512 (MiB), hw_disk_bus=scsi,
        /// hw_rng_model=virtio; repeat for more.
        #[arg(long = "property", value_name = "KEY=VALUE")]
        properties: Vec<String>,
    },
    /// Every image, with the guests using it.
    List,
    /// One image.
    Get { name: String },
    /// Delete an image no guest uses.
    Delete { name: String },
}

#[derive(Subcommand)]
enum VmCommand {
    /// Create and start a guest.
    Create {
        #[arg(long)]
        name: String,
        /// SCS flavor, e.g. SCS-2V-4-10.
        #[arg(long)]
        flavor: String,
        /// Image name in the store.
        #[arg(long)]
        image: String,
        /// Attach a virtio NIC to a managed network (`hvctl network`) or a host bridge,
        /// optionally with the guest's address for its NoCloud network-config
        /// (NAME=ADDRESS/PREFIX); repeat for more NICs.
        #[arg(long = "network", value_name = "NAME[=ADDRESS/PREFIX]")]
        networks: Vec<String>,
        /// cloud-init user-data file (at most 64 KiB).
        #[arg(long, value_name = "FILE")]
        user_data: Option<PathBuf>,
        /// SSH public key for the NoCloud meta-data; repeat for more.
        #[arg(long = "ssh-key", value_name = "KEY")]
        ssh_keys: Vec<String>,
        /// Guest UUID (default: a new random one). Creating again with the same UUID and
        /// the same request returns the guest.
        #[arg(long)]
        uuid: Option<String>,
        /// Consume this PlacementService reservation (its request id).
        #[arg(long, value_name = "REQUEST_ID")]
        reservation: Option<String>,
        /// Wait until the guest is running (at most 60 s).
        #[arg(long)]
        wait: bool,
    },
    /// Every guest: state, flavor, image, CPUs, age.
    List,
    /// One guest with its claim.
    Get {
        guest: String,
    },
    Start {
        guest: String,
    },
    /// ACPI shutdown; destroyed after --timeout seconds (default 30) or at once with --force.
    Stop {
        guest: String,
        #[arg(long)]
        force: bool,
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        timeout: u32,
    },
    /// ACPI reboot, or a reset with --hard.
    Reboot {
        guest: String,
        #[arg(long)]
        hard: bool,
    },
    /// Delete the guest with its disks, seed and claim (nothing to delete is not an error).
    Delete {
        guest: String,
    },
    /// Follow lifecycle events (one line each, or one JSON object per line with --output
    /// json) until interrupted.
    Events {
        /// Only this guest (name or UUID); default: every guest.
        guest: Option<String>,
    },
    /// What the guest's flavor promises and whether each promise holds: vCPUs, RAM, disk,
    /// ECC, CPU pinning (claim vs libvirt, thread affinity and cpusets), NUMA locality,
    /// hugepages, steal — each kept, violated, or not verifiable here (with why).
    Guarantees {
        guest: String,
    },
    /// The end of the guest's serial console log.
    Console {
        guest: String,
        /// How many bytes from the end (at most 1048576).
        #[arg(long, default_value_t = 65536)]
        bytes: u32,
    },
}

#[derive(Subcommand)]
enum PlacementCommand {
    /// Reserve resources for a guest for --ttl seconds; a create that names the request id
    /// consumes the reservation. Repeating the same request returns the same claim.
    Reserve {
        /// The flavor, e.g. SCS-2V-4.
        #[arg(long)]
        flavor: String,
        /// The guest's UUID.
        #[arg(long, value_name = "UUID")]
        vm_uuid: String,
        /// Idempotency key (default: hvctl-<UUID>).
        #[arg(long, value_name = "ID")]
        request_id: Option<String>,
        /// Seconds until the reservation is released unless consumed (1-3600).
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        ttl: u32,
    },
    /// Release the claim of a guest, giving back exactly what it took.
    Release {
        /// The guest's UUID.
        vm_uuid: String,
    },
    /// Every claim and reservation, and the shared pool's CPUs.
    Claims,
}

#[derive(Subcommand)]
enum FlavorCommand {
    /// Parse a name (e.g. SCS-4C-16-50s) into its parts, canonical and short names and
    /// extra_specs. An invalid name exits 2 and says at which character and why.
    Parse {
        /// The flavor name.
        name: String,
    },
    /// Every promise of a name in plain words, and what hvagent does to keep it.
    Explain {
        /// The flavor name.
        name: String,
    },
    /// The scs-0103 standard flavors, mandatory ones first.
    Standard,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Hardware inventory: CPU topology, NUMA, memory and hugepages, devices, hypervisor, SCS
    /// facts (CPU brand, ECC, security) and the scheduler view (Placement inventories, traits).
    Inventory,
    /// How many more guests of each flavor fit now, per NUMA node, and what stops the next
    /// one (PCPU, shared-pool ratio, MEMORY_MB, hugepages, a promise the node cannot keep).
    Capacity {
        /// Flavor names (default: every standard flavor).
        flavors: Vec<String>,
    },
    /// Node conditions (Ready, LibvirtDisconnected, MemoryPressure, CpuPressure,
    /// DiskPressure, PinningViolation, EmulationOnly) and the key figures: CPU, memory,
    /// hugepages, image store, open pinning violations, and each guest's state, steal and the
    /// age of its figures (docs/health.md).
    Health {
        /// Keep printing a fresh table (one JSON object per line with --output json) until
        /// interrupted.
        #[arg(long)]
        watch: bool,
        /// With --watch: seconds between tables (default: the agent's sampling interval).
        #[arg(long, value_name = "SECONDS", requires = "watch")]
        interval: Option<f64>,
    },
}

const EXIT_CALL_FAILED: u8 = 1;
/// Bad command line or invalid input (as clap uses for usage errors).
const EXIT_USAGE: u8 = 2;
const EXIT_UNREACHABLE: u8 = 3;
/// `hvctl verify`: a promise violated, or a flavor that could not be probed.
const EXIT_VIOLATED: u8 = 4;
/// Most guests of one flavor `hvctl plan` places.
const MAX_PLAN_COUNT: u32 = 100_000;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hvctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Flavor(command) => return flavor(cli.output, command),
        Command::Plan {
            root,
            config,
            flavors,
        } => return plan(cli.output, &root, config.as_deref(), &flavors),
        Command::Node(_)
        | Command::Placement(_)
        | Command::Image(_)
        | Command::Vm(_)
        | Command::Verify(_)
        | Command::Network(_) => {}
    }
    let (connected, agent) = match (&cli.endpoint, &cli.tls_cert, &cli.tls_key, &cli.tls_ca) {
        (Some(endpoint), Some(cert), Some(key), Some(ca)) => {
            let files = hvagent::tls::Files {
                cert: ("--tls-cert", cert.clone()),
                key: ("--tls-key", key.clone()),
                ca: ("--tls-ca", ca.clone()),
            };
            (
                client::connect_tls(endpoint, &files).await,
                endpoint.clone(),
            )
        }
        _ => (
            client::connect(&cli.socket).await,
            cli.socket.display().to_string(),
        ),
    };
    let channel = match connected {
        Ok(c) => c,
        // Unusable files or endpoint named on the command line: the command line is wrong.
        Err(e @ (client::ConnectError::Tls(_) | client::ConnectError::Endpoint(_))) => {
            eprintln!("hvctl: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("hvctl: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let mut node = pb::node_service_client::NodeServiceClient::new(channel.clone());
    let mut images = pb::image_service_client::ImageServiceClient::new(channel.clone());
    let mut vms = pb::vm_service_client::VmServiceClient::new(channel.clone());
    let mut networks = pb::network_service_client::NetworkServiceClient::new(channel.clone());
    let mut placement = pb::placement_service_client::PlacementServiceClient::new(channel.clone());
    let (output, agent) = (cli.output, agent.as_str());
    match cli.command {
        Command::Node(NodeCommand::Inventory) => answer(
            output,
            agent,
            node.get_inventory(pb::GetInventoryRequest {}).await,
            render::inventory,
        ),
        Command::Node(NodeCommand::Capacity { flavors }) => answer(
            output,
            agent,
            node.get_capacity(pb::GetCapacityRequest { flavors }).await,
            render::capacity,
        ),
        Command::Node(NodeCommand::Health { watch: false, .. }) => answer(
            output,
            agent,
            node.get_health(pb::GetHealthRequest {}).await,
            render::health,
        ),
        Command::Node(NodeCommand::Health {
            watch: true,
            interval,
        }) => watch_health(output, agent, &mut node, interval).await,
        Command::Placement(PlacementCommand::Reserve {
            flavor,
            vm_uuid,
            request_id,
            ttl,
        }) => answer(
            output,
            agent,
            placement
                .reserve(pb::ReserveRequest {
                    request_id: request_id.unwrap_or_else(|| format!("hvctl-{vm_uuid}")),
                    vm_uuid,
                    flavor,
                    ttl_seconds: ttl,
                })
                .await,
            |r: &pb::ReserveResponse| render::claims(r.claim.as_slice(), &[]),
        ),
        Command::Placement(PlacementCommand::Release { vm_uuid }) => answer(
            output,
            agent,
            placement.release(pb::ReleaseRequest { vm_uuid }).await,
            |r: &pb::ReleaseResponse| render::claims(r.claim.as_slice(), &[]),
        ),
        Command::Placement(PlacementCommand::Claims) => answer(
            output,
            agent,
            placement.list_claims(pb::ListClaimsRequest {}).await,
            |r: &pb::ListClaimsResponse| render::claims(&r.claims, &r.shared_pool),
        ),
        Command::Image(command) => image(output, agent, &mut images, command).await,
        Command::Vm(command) => vm(output, agent, &mut vms, command).await,
        Command::Network(command) => network(output, agent, &mut networks, command).await,
        Command::Verify(args) => verify(output, agent, channel, args).await,
        Command::Flavor(_) | Command::Plan { .. } => ExitCode::SUCCESS,
    }
}

#[derive(Subcommand)]
enum NetworkCommand {
    /// Make the host have a network (idempotent: the same spec again changes nothing; another
    /// spec under the name is refused, naming the differences).
    Ensure {
        /// 1-12 of a-z 0-9 -; the bridge guests attach to is br-NAME.
        name: String,
        #[arg(long, value_parser = ["bridge", "vxlan", "vlan"])]
        kind: String,
        /// VXLAN network identifier, 1-16777215.
        #[arg(long)]
        vni: Option<u32>,
        /// Host interface: enslaved to a bridge network, or the parent of a VLAN.
        #[arg(long)]
        uplink: Option<String>,
        /// VXLAN underlay device (where the encapsulated packets leave).
        #[arg(long)]
        underlay: Option<String>,
        /// VXLAN local underlay address.
        #[arg(long)]
        local: Option<String>,
        /// VXLAN unicast peer; repeat for more.
        #[arg(long = "remote", value_name = "ADDR")]
        remotes: Vec<String>,
        /// VXLAN multicast group.
        #[arg(long)]
        group: Option<String>,
        /// VXLAN UDP port (default 4789).
        #[arg(long)]
        port: Option<u32>,
        /// VLAN id, 1-4094.
        #[arg(long)]
        vlan_id: Option<u32>,
        /// MTU, 68-65535 (default 1500; for VXLAN the underlay's minus 50, or 70 over IPv6).
        #[arg(long)]
        mtu: Option<u32>,
        /// Host address on the bridge, ADDRESS/PREFIX.
        #[arg(long)]
        address: Option<String>,
    },
    /// Every network: state, problems being repaired, guest NICs, counters.
    List,
    /// Remove a network (refused while guest NICs are attached, unless --force).
    Delete {
        name: String,
        #[arg(long)]
        force: bool,
    },
}

type Networks = pb::network_service_client::NetworkServiceClient<tonic::transport::Channel>;

async fn network(
    output: Output,
    agent: &str,
    networks: &mut Networks,
    command: NetworkCommand,
) -> ExitCode {
    match command {
        NetworkCommand::Ensure {
            name,
            kind,
            vni,
            uplink,
            underlay,
            local,
            remotes,
            group,
            port,
            vlan_id,
            mtu,
            address,
        } => {
            let network = pb::Network {
                name,
                kind,
                vni: vni.unwrap_or(0),
                underlay: underlay.unwrap_or_default(),
                local: local.unwrap_or_default(),
                remotes,
                group: group.unwrap_or_default(),
                port: port.unwrap_or(0),
                vlan_id: vlan_id.unwrap_or(0),
                uplink: uplink.unwrap_or_default(),
                mtu: mtu.unwrap_or(0),
                address: address.unwrap_or_default(),
            };
            answer(
                output,
                agent,
                networks
                    .ensure(pb::EnsureNetworkRequest {
                        network: Some(network),
                    })
                    .await,
                |r: &pb::EnsureNetworkResponse| {
                    format!(
                        "{}{}",
                        if r.changed {
                            "created\n"
                        } else {
                            "unchanged\n"
                        },
                        render::networks(r.network.as_slice())
                    )
                },
            )
        }
        NetworkCommand::List => answer(
            output,
            agent,
            networks.list(pb::ListNetworksRequest {}).await,
            |r: &pb::ListNetworksResponse| render::networks(&r.networks),
        ),
        NetworkCommand::Delete { name, force } => answer(
            output,
            agent,
            networks
                .delete(pb::DeleteNetworkRequest { name, force })
                .await,
            |r: &pb::DeleteNetworkResponse| {
                if r.deleted {
                    "deleted\n"
                } else {
                    "no such network\n"
                }
                .into()
            },
        ),
    }
}

type Images = pb::image_service_client::ImageServiceClient<tonic::transport::Channel>;
type Vms = pb::vm_service_client::VmServiceClient<tonic::transport::Channel>;

async fn image(
    output: Output,
    agent: &str,
    images: &mut Images,
    command: ImageCommand,
) -> ExitCode {
    match command {
        ImageCommand::Import {
            source,
            name,
            sha256,
            properties,
        } => {
            let mut props = std::collections::BTreeMap::new();
            for p in properties {
                let Some((k, v)) = p.split_once('=') else {
                    eprintln!("hvctl: --property {p:?}: expected KEY=VALUE");
                    return ExitCode::from(EXIT_USAGE);
                };
                props.insert(k.to_string(), v.to_string());
            }
            let url = source.starts_with("http://") || source.starts_with("https://");
            let req = pb::ImportImageRequest {
                name: name.clone(),
                source_path: if url {
                    String::new()
                } else {
                    let path = PathBuf::from(&source);
                    std::path::absolute(&path)
                        .unwrap_or(path)
                        .display()
                        .to_string()
                },
                source_url: if url { source } else { String::new() },
                sha256: sha256.unwrap_or_default(),
                properties: props,
            };
            let result = with_progress(images, name, images.clone().import(req)).await;
            answer(output, agent, result, |i: &pb::Image| {
                render::images(std::slice::from_ref(i))
            })
        }
        ImageCommand::List => answer(
            output,
            agent,
            images.list(pb::ListImagesRequest {}).await,
            |l: &pb::ListImagesResponse| render::images(&l.images),
        ),
        ImageCommand::Get { name } => answer(
            output,
            agent,
            images.get(pb::GetImageRequest { name }).await,
            |i: &pb::Image| render::images(std::slice::from_ref(i)),
        ),
        ImageCommand::Delete { name } => answer(
            output,
            agent,
            images.delete(pb::DeleteImageRequest { name }).await,
            |_: &pb::DeleteImageResponse| "deleted\n".into(),
        ),
    }
}

/// Prints a health snapshot as the agent sends each one, until interrupted.
async fn watch_health(
    output: Output,
    agent: &str,
    node: &mut pb::node_service_client::NodeServiceClient<tonic::transport::Channel>,
    interval: Option<f64>,
) -> ExitCode {
    let interval_ms = match interval {
        None => 0,
        Some(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => (s * 1000.0).round() as u32,
        Some(s) => {
            eprintln!("hvctl: --interval: must be between 0 and 3600 seconds, got {s}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut stream = match node
        .watch_health(pb::WatchHealthRequest { interval_ms })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(status) => return fail(agent, &status),
    };
    loop {
        match stream.message().await {
            Ok(Some(h)) => match output {
                Output::Json => println!("{}", serde_json::to_string(&h).unwrap_or_default()),
                // Clear the terminal between tables, as `watch` does.
                Output::Table | Output::Markdown => print!("\x1b[H\x1b[2J{}", render::health(&h)),
            },
            Ok(None) => return ExitCode::SUCCESS,
            Err(status) => return fail(agent, &status),
        }
    }
}

/// Runs `import`, showing the image's progress on stderr meanwhile when stderr is a terminal.
async fn with_progress<T>(
    images: &mut Images,
    name: String,
    import: impl std::future::Future<Output = T>,
) -> T {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return import.await;
    }
    let show = async {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tick.tick().await;
            if let Ok(i) = images.get(pb::GetImageRequest { name: name.clone() }).await
                && i.get_ref().state == "importing"
            {
                eprint!(
                    "\r\x1b[Kimporting {name}: {}",
                    render::progress(i.get_ref())
                );
            }
        }
    };
    let result = tokio::select! {
        r = import => r,
        () = show => unreachable!("the progress loop never ends"),
    };
    eprint!("\r\x1b[K");
    result
}

/// A guest's UUID from its name or UUID.
async fn resolve(vms: &mut Vms, guest: &str) -> Result<String, tonic::Status> {
    if hvagent::placement::allocator::is_uuid(guest) {
        return Ok(guest.to_string());
    }
    let list = vms.list(pb::ListVmsRequest {}).await?.into_inner();
    list.vms
        .into_iter()
        .find(|v| v.name == guest)
        .map(|v| v.uuid)
        .ok_or_else(|| tonic::Status::not_found(format!("no guest named {guest:?}")))
}

async fn vm(output: Output, agent: &str, vms: &mut Vms, command: VmCommand) -> ExitCode {
    let one = |v: &pb::Vm| render::vms(std::slice::from_ref(v));
    let guest = match &command {
        VmCommand::Get { guest }
        | VmCommand::Start { guest }
        | VmCommand::Stop { guest, .. }
        | VmCommand::Reboot { guest, .. }
        | VmCommand::Delete { guest }
        | VmCommand::Guarantees { guest }
        | VmCommand::Console { guest, .. } => match resolve(vms, guest).await {
            Ok(uuid) => uuid,
            Err(status) => return fail(agent, &status),
        },
        VmCommand::Events { guest: Some(guest) } => match resolve(vms, guest).await {
            Ok(uuid) => uuid,
            Err(status) => return fail(agent, &status),
        },
        VmCommand::Create { .. } | VmCommand::List | VmCommand::Events { guest: None } => {
            String::new()
        }
    };
    match command {
        VmCommand::Create {
            name,
            flavor,
            image,
            networks,
            user_data,
            ssh_keys,
            uuid,
            reservation,
            wait,
        } => {
            let user_data = match user_data.map(std::fs::read).transpose() {
                Ok(d) => d.unwrap_or_default(),
                Err(e) => {
                    eprintln!("hvctl: --user-data: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let uuid = match uuid {
                Some(u) => u,
                None => match hvagent::ctl::new_uuid() {
                    Ok(u) => u,
                    Err(e) => {
                        eprintln!("hvctl: cannot make a UUID (give --uuid): {e}");
                        return ExitCode::FAILURE;
                    }
                },
            };
            let (networks, addresses): (Vec<String>, Vec<String>) = networks
                .iter()
                .map(|n| match n.split_once('=') {
                    Some((net, address)) => (net.to_string(), address.to_string()),
                    None => (n.clone(), String::new()),
                })
                .unzip();
            let req = pb::CreateVmRequest {
                uuid: uuid.clone(),
                name,
                flavor,
                image,
                networks,
                addresses,
                macs: Vec::new(),
                ingress_kbps: Vec::new(),
                egress_kbps: Vec::new(),
                user_data,
                ssh_keys,
                metadata: Default::default(),
                reservation: reservation.unwrap_or_default(),
            };
            let created = vms.create(req).await;
            if wait && created.is_ok() {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                while std::time::Instant::now() < deadline {
                    match vms.get(pb::GetVmRequest { uuid: uuid.clone() }).await {
                        Ok(v) if v.get_ref().state == "running" => {
                            return print(output, &v.into_inner(), one);
                        }
                        Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
                        Err(status) => return fail(agent, &status),
                    }
                }
                eprintln!("hvctl: guest {uuid} is not running after 60 s");
                return ExitCode::from(EXIT_CALL_FAILED);
            }
            answer(output, agent, created, one)
        }
        VmCommand::List => answer(
            output,
            agent,
            vms.list(pb::ListVmsRequest {}).await,
            |l: &pb::ListVmsResponse| render::vm_list(l),
        ),
        VmCommand::Get { .. } => answer(
            output,
            agent,
            vms.get(pb::GetVmRequest { uuid: guest }).await,
            one,
        ),
        VmCommand::Start { .. } => answer(
            output,
            agent,
            vms.start(pb::StartVmRequest { uuid: guest }).await,
            one,
        ),
        VmCommand::Stop { force, timeout, .. } => answer(
            output,
            agent,
            vms.stop(pb::StopVmRequest {
                uuid: guest,
                force,
                timeout_seconds: timeout,
            })
            .await,
            one,
        ),
        VmCommand::Reboot { hard, .. } => answer(
            output,
            agent,
            vms.reboot(pb::RebootVmRequest { uuid: guest, hard }).await,
            one,
        ),
        VmCommand::Delete { .. } => answer(
            output,
            agent,
            vms.delete(pb::DeleteVmRequest { uuid: guest }).await,
            |d: &pb::DeleteVmResponse| {
                if d.deleted {
                    "deleted\n"
                } else {
                    "nothing to delete\n"
                }
                .into()
            },
        ),
        VmCommand::Guarantees { .. } => answer(
            output,
            agent,
            vms.get_guarantee_report(pb::GetGuaranteeReportRequest { uuid: guest })
                .await,
            render::guarantees,
        ),
        VmCommand::Events { .. } => {
            let mut stream = match vms
                .watch_events(pb::WatchEventsRequest { uuid: guest })
                .await
            {
                Ok(s) => s.into_inner(),
                Err(status) => return fail(agent, &status),
            };
            loop {
                match stream.message().await {
                    Ok(Some(e)) => {
                        let line = match output {
                            Output::Json => serde_json::to_string(&e).unwrap_or_default(),
                            Output::Table | Output::Markdown => render::event(&e),
                        };
                        println!("{line}");
                    }
                    Ok(None) => return ExitCode::SUCCESS,
                    Err(status) => return fail(agent, &status),
                }
            }
        }
        VmCommand::Console { bytes, .. } => {
            match vms
                .get_console_log(pb::GetConsoleLogRequest {
                    uuid: guest,
                    max_bytes: bytes,
                })
                .await
            {
                Ok(log) => match output {
                    Output::Json => print(output, &log.into_inner(), |_| String::new()),
                    Output::Table | Output::Markdown => {
                        use std::io::Write;
                        let _ = std::io::stdout().write_all(&log.into_inner().data);
                        ExitCode::SUCCESS
                    }
                },
                Err(status) => fail(agent, &status),
            }
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn write_report(dir: &Path, report: &verify::VerifyReport) -> Result<(), String> {
    let write = |name: &str, data: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, data).map_err(|e| format!("{}: {e}", path.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    write("report.json", json.as_bytes())?;
    write(
        "report.md",
        verify::markdown::render(report, true).as_bytes(),
    )?;
    for f in report.flavors.iter().filter(|f| !f.alone.is_empty()) {
        let (share, throughput) = verify::markdown::chart_names(&f.flavor);
        let title = format!("{}: share of a core per vCPU", f.flavor);
        write(
            &share,
            verify::chart::share_over_time(&title, &f.alone, &f.with_neighbours)?.as_bytes(),
        )?;
        if !f.with_neighbours.is_empty() {
            let title = format!(
                "{}: throughput alone and beside {} neighbours",
                f.flavor,
                f.neighbours.len()
            );
            write(
                &throughput,
                verify::chart::throughput_bars(&title, &f.alone, &f.with_neighbours)?.as_bytes(),
            )?;
        }
    }
    Ok(())
}

async fn verify(
    output: Output,
    agent: &str,
    channel: tonic::transport::Channel,
    args: VerifyArgs,
) -> ExitCode {
    if !(0.0..1.0).contains(&args.tolerance) {
        eprintln!(
            "hvctl: --tolerance {}: must be at least 0 and below 1",
            args.tolerance
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let mut flavors = args.flavors;
    if args.standard {
        for f in hvagent::flavor::catalog::standard() {
            if !flavors.iter().any(|n| n == f.name) {
                flavors.push(f.name.to_string());
            }
        }
    }
    let opts = verify::Options {
        flavors,
        neighbours: args.neighbours,
        neighbour_flavor: args.neighbour_flavor,
        image: args.image,
        samples: args.samples,
        plan: hvagent_probe::plan::Plan {
            mode: hvagent_probe::plan::Mode::Report,
            fips_blocks: args.fips_blocks,
            window_ms: args.window_ms,
            iops_ms: args.iops_ms,
        },
        boot_timeout: std::time::Duration::from_secs(args.boot_timeout),
        tolerance: args.tolerance,
    };
    let created = verify::Created::default();
    let started = std::time::Instant::now();
    let progress = |m: &str| {
        eprintln!(
            "hvctl verify [{:>4.0} s] {m}",
            started.elapsed().as_secs_f64()
        )
    };
    let outcome = tokio::select! {
        r = verify::run(channel.clone(), &created, &opts, &progress) => Some(r),
        () = interrupted() => None,
    };
    // Whatever happened, nothing this run made stays.
    let left = verify::cleanup(channel, &created).await;
    for (uuid, why) in &left {
        eprintln!(
            "hvctl: could not delete guest {uuid} this run made: {why}; delete it with `hvctl vm delete {uuid}`"
        );
    }
    let report = match outcome {
        None => {
            if left.is_empty() {
                eprintln!("hvctl: interrupted; every guest this run made is deleted");
            } else {
                eprintln!(
                    "hvctl: interrupted; {} guests this run made are left (above)",
                    left.len()
                );
            }
            return ExitCode::from(130);
        }
        Some(Err(verify::RunError::Input(msg))) => {
            eprintln!("hvctl: {msg}");
            return ExitCode::from(EXIT_USAGE);
        }
        Some(Err(e)) => {
            let status = e
                .status()
                .cloned()
                .unwrap_or_else(|| tonic::Status::unknown(""));
            let error = client::call_error(agent, &status);
            eprintln!("hvctl: {e}");
            return ExitCode::from(if error.unreachable {
                EXIT_UNREACHABLE
            } else {
                EXIT_CALL_FAILED
            });
        }
        Some(Ok(r)) => r,
    };
    // The report first: a directory that cannot be written must not cost the run.
    let printed = match output {
        Output::Json => print(output, &report, |_| String::new()) == ExitCode::SUCCESS,
        Output::Table | Output::Markdown => {
            print!("{}", verify::markdown::render(&report, false));
            true
        }
    };
    let mut written = true;
    if let Some(dir) = &args.report {
        match write_report(dir, &report) {
            Ok(()) => eprintln!("hvctl verify: report written to {}", dir.display()),
            Err(e) => {
                eprintln!("hvctl: cannot write the report: {e}");
                written = false;
            }
        }
    }
    if report.count(verify::Verdict::Violated) > 0 || report.failed() > 0 {
        ExitCode::from(EXIT_VIOLATED)
    } else if !printed || !written || !left.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `hvctl plan`: the agent's own allocator on a captured tree, no agent involved.
fn plan(output: Output, root: &Path, config: Option<&Path>, flavors: &[String]) -> ExitCode {
    let usage = |msg: String| {
        eprintln!("hvctl: {msg}");
        ExitCode::from(EXIT_USAGE)
    };
    let policy = match hvagent::daemon::Config::load(config) {
        Ok(c) => c.placement,
        Err(e) => return usage(e.to_string()),
    };
    let mut requests = Vec::new();
    for arg in flavors {
        let Some((name, count)) = arg.rsplit_once('=') else {
            return usage(format!(
                "--flavor {arg:?}: expected NAME=COUNT, e.g. SCS-2V-4=10"
            ));
        };
        let count = match count.parse::<u32>() {
            Ok(n) if (1..=MAX_PLAN_COUNT).contains(&n) => n,
            _ => {
                return usage(format!(
                    "--flavor {arg:?}: COUNT must be a number from 1 to {MAX_PLAN_COUNT}"
                ));
            }
        };
        match flavor::parse(name) {
            Ok(p) => requests.push((name.to_string(), p.spec, count)),
            Err(e) => {
                return usage(format!(
                    "--flavor {arg:?}: {name:?} is not a valid SCS flavor name: {e}"
                ));
            }
        }
    }
    if !root.join("sys/devices/system/cpu").is_dir() {
        return usage(format!(
            "--root {}: no sys/devices/system/cpu below it (not a captured sysfs/procfs tree)",
            root.display()
        ));
    }
    let inventory = hvagent::host::read(
        root,
        hvagent::host::ExternalFacts {
            libvirt: hvagent::host::LibvirtFacts {
                error: "not asked by an offline plan".into(),
                ..Default::default()
            },
            kvm: hvagent::host::KvmVerdict {
                state: hvagent::host::KvmState::Absent,
                reason: "not probed by an offline plan".into(),
            },
            storage_disk_bytes: None,
        },
    );
    let topology = placement::Topology::from_inventory(&inventory);
    let mut alloc = match placement::Allocator::new(topology, policy) {
        Ok(a) => a,
        Err(e) => return usage(e.to_string()),
    };
    let planned = placement::plan::plan(&mut alloc, &requests);
    print(output, &planned, render::plan)
}

/// Flavor commands compute locally: the same library the agent's FlavorService uses.
fn flavor(output: Output, command: FlavorCommand) -> ExitCode {
    let parsed = |name: &str| match flavor::parse(name) {
        Ok(parsed) => {
            for warning in &parsed.warnings {
                eprintln!("hvctl: warning: {warning}");
            }
            Ok(parsed)
        }
        Err(e) => {
            eprintln!("hvctl: {name:?} is not a valid SCS flavor name: {e}");
            Err(ExitCode::from(EXIT_USAGE))
        }
    };
    match command {
        FlavorCommand::Parse { name } => match parsed(&name) {
            Ok(p) => print(output, &FlavorView::new(&p), render::flavor),
            Err(code) => code,
        },
        FlavorCommand::Explain { name } => match parsed(&name) {
            Ok(p) => {
                let explained = render::Explained {
                    name: p.spec.name(),
                    promises: flavor::explain::explain(&p.spec),
                };
                print(output, &explained, render::explained)
            }
            Err(code) => code,
        },
        FlavorCommand::Standard => print(
            output,
            &hvagent::flavor::proto::standard_flavors(),
            |list| render::standard_flavors(list),
        ),
    }
}

fn print<T: serde::Serialize>(output: Output, value: &T, table: fn(&T) -> String) -> ExitCode {
    match output {
        Output::Table | Output::Markdown => print!("{}", table(value)),
        Output::Json => match serde_json::to_string_pretty(value) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("hvctl: cannot encode JSON: {e}");
                return ExitCode::FAILURE;
            }
        },
    }
    ExitCode::SUCCESS
}

/// Prints an answer, or says why the call failed.
fn answer<T: serde::Serialize>(
    output: Output,
    agent: &str,
    result: Result<tonic::Response<T>, tonic::Status>,
    table: fn(&T) -> String,
) -> ExitCode {
    match result {
        Ok(resp) => print(output, &resp.into_inner(), table),
        Err(status) => fail(agent, &status),
    }
}

fn fail(agent: &str, status: &tonic::Status) -> ExitCode {
    let error = client::call_error(agent, status);
    eprintln!("hvctl: {}", error.message);
    ExitCode::from(if error.unreachable {
        EXIT_UNREACHABLE
    } else {
        EXIT_CALL_FAILED
    })
}
