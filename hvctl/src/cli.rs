//! The command line: every command, its arguments and their help texts (clap).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

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
pub struct Cli {
    /// The agent's Unix socket.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "HVCTL_SOCKET",
        default_value = "/run/hvagent/hvagent.sock"
    )]
    pub socket: PathBuf,

    /// The agent's TCP listener (its [api] tcp_listen), HOST:PORT; HOST must be a name or
    /// address in the agent's certificate. Needs --tls-cert, --tls-key and --tls-ca.
    #[arg(
        long,
        global = true,
        value_name = "HOST:PORT",
        env = "HVCTL_ENDPOINT",
        requires_all = ["tls_cert", "tls_key", "tls_ca"]
    )]
    pub endpoint: Option<String>,

    /// This client's certificate (PEM, leaf first); the agent gives its identity a role.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "HVCTL_TLS_CERT",
        requires = "endpoint"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "HVCTL_TLS_KEY",
        requires = "endpoint"
    )]
    pub tls_key: Option<PathBuf>,

    /// The CA bundle the agent's certificate must chain to (PEM).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "HVCTL_TLS_CA",
        requires = "endpoint"
    )]
    pub tls_ca: Option<PathBuf>,

    /// `table` for people, `json` for programs (the proto message, field names as in the API),
    /// `markdown` for `hvctl verify` reports (a table elsewhere).
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    /// `hvctl verify`'s report as Markdown (other commands print tables).
    Markdown,
}

#[derive(Subcommand)]
pub enum Command {
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

    /// Volumes: block devices for guests, attached with `hvctl vm attach-volume`. A store
    /// volume is a qcow2 or raw file the agent makes (blank, or a copy of an image); an
    /// external one is a host block device or an NBD export the agent only remembers.
    #[command(subcommand)]
    Volume(VolumeCommand),

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
pub struct VerifyArgs {
    /// A flavor to verify; repeat for more.
    #[arg(
        long = "flavor",
        value_name = "NAME",
        required_unless_present = "standard"
    )]
    pub flavors: Vec<String>,
    /// Also every SCS standard flavor (scs-0103); those that do not fit are skipped.
    #[arg(long)]
    pub standard: bool,
    /// Busy neighbour guests beside each C, T and V probe guest: as many as fit, at most N
    /// (with enough, a V probe's shared pool is filled to the ratio the agent admits).
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(0..=256))]
    pub neighbours: u32,
    /// The neighbours' flavor [default: SCS-1V-1u, or SCS-1Vi-1u where the node serves only
    /// `i` flavors because a CPU vulnerability is not mitigated]
    #[arg(long, value_name = "NAME")]
    pub neighbour_flavor: Option<String>,
    /// Image in the agent's store with the probe: images/out/testguest.qcow2 imported
    /// under this name.
    #[arg(long, value_name = "NAME", default_value = "hvagent-probe")]
    pub image: String,
    /// Workload windows measured alone, and again beside the neighbours.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub samples: u32,
    /// Length of one workload window in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub window_ms: u64,
    /// Blocks of /dev/random for the FIPS 140-2 tests (the SCS entropy check needs 1000).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub fips_blocks: u32,
    /// How long the probe writes to its root disk for the IOPS figure (0: skip).
    #[arg(long, value_name = "MS", default_value_t = 3000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub iops_ms: u64,
    /// How long a guest may take to boot and print its report or first sample.
    #[arg(long, value_name = "SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=3600))]
    pub boot_timeout: u64,
    /// C/T: the share of throughput alone a vCPU may lose beside the neighbours.
    #[arg(long, value_name = "RATIO", default_value_t = 0.1)]
    pub tolerance: f64,
    /// Also write report.json, report.md and the SVG charts into DIR (created if missing).
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum ImageCommand {
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
        /// hw_rng_model=virtio, hw_firmware_type=uefi, os_secure_boot=required,
        /// hw_tpm_version=2.0; repeat for more.
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
pub enum VolumeCommand {
    /// Make a volume: a blank store volume of --size-gb, a copy of a store image (--image;
    /// at least the image's size), or an external one (--source). The same command again
    /// returns the volume.
    Create {
        /// Volume name: 1-64 of a-z 0-9 . _ -.
        name: String,
        /// Size in GiB (1-16384) of a store volume; with --image, the least size.
        #[arg(long, value_name = "N", default_value_t = 0)]
        size_gb: u64,
        /// qcow2 (default for store volumes) or raw. External volumes are raw.
        #[arg(long, value_name = "raw|qcow2")]
        format: Option<String>,
        /// May be attached to several guests at once (raw only: the guests must coordinate
        /// their writes, e.g. with a cluster file system).
        #[arg(long)]
        shareable: bool,
        /// Copy this store image into the volume (standalone, no backing file).
        #[arg(long, value_name = "IMAGE")]
        image: Option<String>,
        /// An external volume: the absolute path of a host block device (never deleted, only
        /// forgotten) or nbd://HOST[:PORT]/EXPORT.
        #[arg(long, value_name = "PATH|nbd://HOST[:PORT]/EXPORT")]
        source: Option<String>,
    },
    /// Every volume, with the guests it is attached to.
    List,
    /// One volume.
    Get { name: String },
    /// Delete a volume no guest has attached: a store volume with its data; an external one
    /// is only forgotten.
    Delete { name: String },
}

#[derive(Subcommand)]
pub enum VmCommand {
    /// Create and start a guest.
    Create {
        #[arg(long)]
        name: String,
        /// SCS flavor, e.g. SCS-2V-4-10. A flavor without a disk (SCS-2V-4) boots from a
        /// volume: --boot-volume, or else one the agent makes from --image (root-<uuid>,
        /// deleted with the guest).
        #[arg(long)]
        flavor: String,
        /// Image name in the store (not with --boot-volume).
        #[arg(
            long,
            required_unless_present = "boot_volume",
            conflicts_with = "boot_volume"
        )]
        image: Option<String>,
        /// For a flavor without a disk: boot from this volume (`hvctl volume`; not shareable,
        /// attached to no guest). It stays when the guest is deleted.
        #[arg(long, value_name = "VOLUME")]
        boot_volume: Option<String>,
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
    Get { guest: String },
    /// Start a shut-off guest.
    Start { guest: String },
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
    /// Pause the guest: its vCPUs stop, its memory, devices and claim stay (an incident's
    /// freeze). It still counts as running for a host reboot.
    Pause { guest: String },
    /// Resume a paused guest.
    Resume { guest: String },
    /// Delete the guest with its disks, seed and claim (nothing to delete is not an error).
    Delete { guest: String },
    /// Capture the guest's root disk as a new image in the store (usable by `vm create`). A
    /// running guest is paused for the copy and resumed: the image is filesystem-consistent
    /// when the guest's agent answers (its file systems are frozen first), else
    /// crash-consistent.
    Snapshot {
        guest: String,
        /// The new image's name: 1-64 of a-z 0-9 . _ -.
        #[arg(long)]
        image: String,
        /// An image property added to those of the guest's image (e.g. os_version=2); repeat
        /// for more.
        #[arg(long = "property", value_name = "KEY=VALUE")]
        properties: Vec<String>,
    },
    /// Resize the guest to another flavor, step one of two: a claim for the new flavor is
    /// taken (refused, changing nothing, when it does not fit), the guest stopped, its disks
    /// grown (never shrunk), redefined with the new vCPUs, memory and pins, and started again
    /// if it ran. Its old claim is kept until `vm resize-confirm` (keep the new flavor, free
    /// the old claim) or `vm resize-revert` (back to the old flavor, definition and disks).
    Resize {
        guest: String,
        /// The new SCS flavor, e.g. SCS-2V-4-20.
        #[arg(long)]
        flavor: String,
    },
    /// Keep a pending resize: the old claim is freed and the copies of the old disks removed.
    ResizeConfirm { guest: String },
    /// Undo a pending resize: the guest is stopped, its old flavor, definition, disks and
    /// claim put back exactly, and started again if it ran before the resize.
    ResizeRevert { guest: String },
    /// Move a running guest live to another node. The agent asked (this one, the source)
    /// calls the target agent's TCP API with its `[migration]` identity; the target takes a
    /// claim for the guest's flavor and builds the guest's domain from it (its own CPUs, NUMA
    /// memory and hugepages), libvirt copies memory and disks while the guest runs, and the
    /// source then frees its claim and files. On any failure before the guest has moved it
    /// runs on here unchanged and the target keeps nothing. NICs move into the target's
    /// networks of the same names (which it must have); guests with volumes,
    /// passed-through devices, UEFI or a TPM cannot move yet. The phases and a progress bar
    /// of the copy show on stderr (a line per phase when stderr is not a terminal); the
    /// answer gives the time taken and the guest's downtime.
    Migrate {
        guest: String,
        /// The target agent's TCP API, HOST:PORT (its `[api] tcp_listen`).
        #[arg(long = "to", value_name = "HOST:PORT")]
        to: String,
    },
    /// Attach a volume (`hvctl volume`) as a virtio disk: hot-plugged into a running guest
    /// and kept in its definition across stop and start. The guest sees it as the first free
    /// /dev/vdX, with the volume's name (cut to 20 bytes) as its serial. A volume attached to
    /// another guest is refused unless it is shareable.
    AttachVolume { guest: String, volume: String },
    /// Detach a volume: gone from the definition at once, from a running guest once it
    /// releases the disk (waited for 30 s). The volume keeps its data.
    DetachVolume { guest: String, volume: String },
    /// Attach a NIC (virtio-net) to a managed network (`hvctl network`) or a host bridge:
    /// hot-plugged into a running guest and kept in its definition across stop and start.
    /// NET=ADDRESS/PREFIX records the guest's address in its intent; the guest applies it
    /// itself (cloud-init reads its network-config at first boot only). At most 16 NICs.
    AttachNetwork {
        /// The guest (name or UUID).
        guest: String,
        /// A managed network's name or a host bridge's, optionally with the guest's address.
        #[arg(value_name = "NET[=ADDRESS/PREFIX]")]
        network: String,
        /// The NIC's MAC (default: derived from the guest's UUID and the NIC's slot).
        #[arg(long)]
        mac: Option<String>,
        /// Rate limit into the guest, kbit/s (default: none).
        #[arg(long, value_name = "KBPS", default_value_t = 0)]
        ingress_kbps: u32,
        /// Rate limit out of the guest, kbit/s (default: none).
        #[arg(long, value_name = "KBPS", default_value_t = 0)]
        egress_kbps: u32,
    },
    /// Detach the NIC with this MAC (`hvctl vm get` lists them): gone from the definition at
    /// once, from a running guest once it releases the device (waited for 30 s); then its
    /// tap is removed.
    DetachNetwork {
        /// The guest (name or UUID).
        guest: String,
        /// The NIC's MAC (any case).
        mac: String,
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
    Guarantees { guest: String },
    /// What the guest's qemu guest agent reports: OS, host name, interfaces with their
    /// addresses, file systems. The guest must run qemu-guest-agent; one that does not
    /// answer (or was defined without the agent's channel) is an error, nothing changes.
    GuestInfo { guest: String },
    /// The end of the guest's serial console log; with --attach, its interactive console.
    ///
    /// --attach connects the terminal to the running guest's serial console (raw mode;
    /// Ctrl-] leaves, as in virsh console). One session per guest: --force takes the console
    /// over from another one, which ends. Leaving ends only the session: the guest runs on and
    /// its console log keeps being written. Needs the operator role.
    Console {
        guest: String,
        /// How many bytes from the end of the log (at most 1048576; not with --attach).
        #[arg(long, default_value_t = 65536, conflicts_with = "attach")]
        bytes: u32,
        /// Type into the console instead of printing the log.
        #[arg(long)]
        attach: bool,
        /// With --attach: take the console over from another session.
        #[arg(long, requires = "attach")]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum PlacementCommand {
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
pub enum FlavorCommand {
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
    /// The OpenStack Placement request for a flavor: resources, required and forbidden
    /// traits, the query to append to `/allocation_candidates?`, and the Nova extra_specs
    /// asking for the same (docs/flavors.md). Computed offline under the `[placement]` policy
    /// of --config (default: the defaults), the policy every node of the cloud should share.
    PlacementRequest {
        /// The flavor name.
        name: String,
        /// A config file whose `[placement]` section is the cloud's policy.
        #[arg(long, value_name = "FILE")]
        config: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum NodeCommand {
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
    /// DiskPressure, PinningViolation, EmulationOnly, Draining) and the key figures: CPU, memory,
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
    /// Drain the node for maintenance: from now on it admits no new guests (kept across agent
    /// restarts until `hvctl node undrain`; Placement sees COMPUTE_STATUS_DISABLED), then
    /// every running guest moves live, one at a time, to the first target agent that takes
    /// it. Prints what moved where and what stayed and why; exits 1 when a guest stayed.
    /// Run it again to retry those. Waits for the last guest however long it takes
    /// (interrupting stops the waiting, not the drain).
    Drain {
        /// A target agent's TCP API, HOST:PORT; repeat for more (tried in order, at most 16).
        #[arg(long = "to", value_name = "HOST:PORT", required = true)]
        to: Vec<String>,
    },
    /// Admit new guests again after a drain (guests that moved away stay where they are).
    Undrain,
}

#[derive(Subcommand)]
pub enum NetworkCommand {
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
