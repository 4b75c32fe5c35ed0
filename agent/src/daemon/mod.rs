//! The daemon: configuration, start-up, serving and clean shutdown. Stopping the agent never
//! touches guests: they belong to libvirt and keep running.

pub mod authority;
pub mod config;
pub mod listener;
pub mod metrics;
pub mod privilege;
pub mod socket;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tonic_health::ServingStatus;

use crate::api::placement::EXPIRY_INTERVAL;

use crate::api::{
    FlavorApi, ImageApi, MigrationApi, NetworkApi, NodeApi, PlacementApi, VmApi, VolumeApi,
};
use crate::domain::Libvirt;
use crate::domain::xml::Emulation;
use crate::guest::{Guests, choose_emulation};
use crate::host::KvmState;
use crate::host::node::LIBVIRT_TIMEOUT;
use crate::host::node::Node;
use crate::host::sysfs::format_cpulist;
use crate::placement::{Allocator, PlacementState, Topology};
pub use config::Config;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Socket(#[from] socket::SocketError),
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("{0}")]
    Inventory(#[from] crate::host::node::InventoryError),
    /// The `[placement]` policy does not fit this node's CPUs or memory: a configuration
    /// error (exit status 2).
    #[error("{0}")]
    Policy(#[from] crate::placement::PolicyError),
    /// The `[network] namespace` cannot be entered: a configuration error (exit status 2).
    #[error("network.namespace: {0}")]
    Network(crate::net::link::NetError),
    /// An `[access]` user or group that does not exist, or an audit log that cannot be
    /// opened: a configuration error (exit status 2).
    #[error("access.{0}")]
    Access(String),
    /// A TLS file of the TCP listener that cannot be used: a configuration error (exit
    /// status 2).
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// `[placement_api]` that cannot be used (no provider name): a configuration error (exit
    /// status 2).
    #[error("placement_api: {0}")]
    PlacementApi(crate::placement_api::client::ApiError),
    #[error("api.tcp_listen {addr}: {source}")]
    Tcp {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// How often the libvirt connection is checked and, if lost, reopened.
const CONNECTION_CHECK: Duration = Duration::from_secs(2);

/// Concurrent calls (streams) on one connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// How long open calls may run on after a stop signal.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Takes away what the agent does not need, before any thread starts (capabilities are per
/// thread): capabilities beyond [`privilege::needed`], set-uid and file-capability gains for
/// anything it runs (no_new_privs), and group/other access to files it creates (umask).
pub fn restrict_privileges(config: &Config) {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(privilege::UMASK));
    // Nothing the agent starts (nsenter, tc, qemu-img, mtools, the KVM trial) may gain
    // privileges through set-uid files or file capabilities.
    if let Err(e) = nix::sys::prctl::set_no_new_privs() {
        tracing::warn!(error = %e, "cannot set no_new_privs");
    }
    let kept = privilege::needed(config);
    match privilege::restrict(&kept) {
        Ok(held) => {
            for k in kept.iter().filter(|k| held.contains(&k.capability)) {
                tracing::debug!(capability = %k.capability, why = k.why, "capability kept");
            }
            let mut names: Vec<String> = held.iter().map(|c| c.to_string()).collect();
            names.sort();
            tracing::info!(kept = %names.join(","), "dropped every other capability");
        }
        Err(e) => tracing::warn!(error = %e, "running with the capabilities it was started with"),
    }
}

/// Runs the agent until SIGTERM or SIGINT. `trial_exe` is the binary that runs the KVM trial.
pub async fn run(config: Config, trial_exe: PathBuf) -> Result<(), DaemonError> {
    // Handlers first: a stop request that arrives while starting must still be a clean stop.
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    prepare_storage(&config.storage.root)?;
    let (access_layer, socket_gid) = access(&config.access)?;
    let (listener, socket_guard) = bind_unix(&config, socket_gid)?;
    let mut background = Background::default();

    // The TCP listener: its files are checked before anything is served, so a bad file is a
    // clear start-up error rather than refused handshakes later.
    let (tls_ready, tls_connections) = tokio::sync::mpsc::channel(listener::MAX_HANDSHAKES);
    let endpoint = start_tls(&config, tls_ready, &mut background).await?;
    background.spawn(reload_on_sighup(sighup, endpoint));
    let metrics = start_metrics(&config, &mut background).await?;

    let libvirt = Arc::new(Libvirt::new(&config.libvirt.uri));
    let node = Arc::new(Node::new(
        config.host.sysfs_root.clone(),
        config.storage.root.clone(),
        config.host.kvm_device.clone(),
        trial_exe,
        Duration::from_millis(config.host.kvm_trial_timeout_ms),
        libvirt.clone(),
    ));
    // Placement needs the topology before the first request; it does not need libvirt.
    let local = node.local_inventory().await?;
    let placement = placement(&config, Topology::from_inventory(&local))?;
    let emulation = emulation(&config, &node).await;
    let netlink = crate::net::link::Netlink::open(crate::net::link::Namespace {
        path: config.network.namespace.clone(),
    })
    .map_err(DaemonError::Network)?;
    let networks = Arc::new(crate::net::Networks::new(
        netlink,
        &config.storage.root,
        metrics.network_repairs.clone(),
    ));
    // The firmware as the inventory read it: below `[host] sysfs_root`, `/` outside tests.
    let guests = Arc::new(
        Guests::new(
            libvirt.clone(),
            placement.clone(),
            &config.storage.root,
            emulation,
            local.cpu.flags.clone(),
            networks.clone(),
        )
        .with_firmware(local.hypervisor.firmware.clone())
        .with_migration(config.migration.settings(config.libvirt.partition.clone())),
    );
    // Before anything can claim: a drain outlives the agent until Undrain.
    guests.restore_draining();
    // Guests started after a host reboot need their networks' bridges, which the reboot
    // took too: the resume waits for the first network reconcile.
    let (reconciled, networks_ready) = tokio::sync::watch::channel(false);
    background.spawn(recover(
        Duration::from_secs(config.storage.orphan_grace_seconds),
        guests.clone(),
        Resume {
            settings: config.guests.clone(),
            boot_id: config.host.boot_id_path.clone(),
            counts: metrics.guests_resumed.clone(),
            networks_ready,
        },
    ));
    // A node whose libvirt answers starts serving with placement rebuilt (the rebuild runs
    // once: whichever of this and the recovery task comes second finds it done); one whose
    // libvirt does not serves meanwhile, placement answering UNAVAILABLE.
    let _ = tokio::time::timeout(LIBVIRT_TIMEOUT, guests.rebuild_placement()).await;
    background.spawn(reconcile_networks(
        networks.clone(),
        guests.clone(),
        Duration::from_secs(config.network.reconcile_seconds),
        reconciled,
    ));
    let health = Arc::new(crate::health::Health::new(
        config.health.clone(),
        crate::host::sysfs::SysRoot::new(&config.host.sysfs_root),
        &config.storage.root,
        libvirt.clone(),
        guests.clone(),
        placement.clone(),
    ));
    metrics.attach(health.clone());
    background.spawn(health.clone().run());
    if let Some(settings) = config.placement_api.clone() {
        let reporter = crate::placement_api::task::Reporter::new(
            settings,
            placement.clone(),
            local,
            crate::api::node::provider_guests(&guests.emulation()),
        )
        .map_err(DaemonError::PlacementApi)?;
        health.watch_placement_api(reporter.status());
        background.spawn(reporter.run());
    }
    for partial in guests.images.sweep() {
        tracing::info!(path = %partial.display(), "removed a partial image import");
    }
    background.spawn(keep_connected(libvirt.clone()));
    background.spawn(expire_reservations(placement.clone()));
    // Warm the slow facts in the background so the first inventory call does not wait for them.
    tokio::spawn(warm_up(node.clone()));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // Both reflection versions: grpcurl and grpcio still ask v1alpha, newer tools ask v1.
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let shutdown = {
        let health = health_reporter.clone();
        let metrics = metrics.clone();
        async move {
            let name = tokio::select! {
                _ = sigterm.recv() => "SIGTERM",
                _ = sigint.recv() => "SIGINT",
            };
            tracing::info!(signal = name, "stopping; guests keep running");
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            metrics.set_up(false);
            set_status(&health, ServingStatus::NotServing).await;
            let _ = stopping_tx.send(true);
        }
    };

    let mutations = crate::api::Mutations::new(config.api.max_concurrent_mutations);
    let server = tonic::transport::Server::builder()
        // Streams per connection are bounded (tonic would allow any number), and a peer that
        // vanishes without closing is noticed by HTTP/2 pings, so its streams end.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(access_layer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            NodeApi::new(node, placement.clone(), health.clone(), &guests.emulation())
                .with_drain(
                    guests.clone(),
                    mutations.clone(),
                    config.migration.client_files(),
                )
                .into_service(),
        )
        .add_service(FlavorApi::new(placement.clone()).into_service())
        .add_service(PlacementApi::new(placement.clone()).into_service())
        .add_service(ImageApi::new(guests.clone(), &config.storage).into_service())
        .add_service(NetworkApi::new(networks, mutations.clone()).into_service())
        .add_service(VolumeApi::new(guests.clone(), mutations.clone()).into_service())
        .add_service(MigrationApi::new(guests.clone(), mutations.clone()).into_service())
        .add_service(
            VmApi::new(guests, placement, health, mutations)
                .with_migration_tls(config.migration.client_files())
                .into_service(),
        )
        .serve_with_incoming_shutdown(listener::incoming(listener, tls_connections), shutdown);

    set_status(&health_reporter, ServingStatus::Serving).await;
    metrics.set_up(true);
    tracing::info!(socket = %config.api.unix_socket.display(), "serving");
    // Not under systemd (no NOTIFY_SOCKET) this is a no-op.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    // In-flight calls may finish, but long-lived streams (health Watch) must not hold a stop.
    let grace = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    tokio::select! {
        result = server => result?,
        _ = grace => tracing::warn!(
            grace_s = STOP_GRACE.as_secs(),
            "calls still open after the stop grace period; closing them"
        ),
    }
    drop(background);
    drop(socket_guard);
    tracing::info!("stopped");
    Ok(())
}

/// The agent's background tasks, ended (aborted) together when the agent stops.
#[derive(Default)]
struct Background(Vec<tokio::task::AbortHandle>);

impl Background {
    fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.0.push(tokio::spawn(task).abort_handle());
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The local API socket, bound (one agent per socket), in `[access] socket_group` if set,
/// registered with tokio.
fn bind_unix(
    config: &Config,
    socket_gid: Option<nix::unistd::Gid>,
) -> Result<(tokio::net::UnixListener, socket::SocketGuard), DaemonError> {
    prepare_storage(&config.storage.root)?;
    let (std_listener, socket_guard) = socket::bind(&config.api.unix_socket)?;
    if let Some(gid) = socket_gid {
        nix::unistd::chown(&config.api.unix_socket, None, Some(gid)).map_err(|e| {
            DaemonError::Io {
                path: config.api.unix_socket.clone(),
                action: "chgrp to [access] socket_group",
                source: e.into(),
            }
        })?;
    }
    std_listener
        .set_nonblocking(true)
        .map_err(|source| DaemonError::Io {
            path: config.api.unix_socket.clone(),
            action: "set non-blocking",
            source,
        })?;
    let listener =
        tokio::net::UnixListener::from_std(std_listener).map_err(|source| DaemonError::Io {
            path: config.api.unix_socket.clone(),
            action: "register with tokio",
            source,
        })?;

    Ok((listener, socket_guard))
}

/// The TCP listener with mutual TLS, when `[api] tcp_listen` is set: its accept loop in the
/// background, handing finished handshakes to `ready`; the endpoint, for SIGHUP reloads.
async fn start_tls(
    config: &Config,
    ready: tokio::sync::mpsc::Sender<listener::Connection>,
    background: &mut Background,
) -> Result<Option<Arc<listener::TlsEndpoint>>, DaemonError> {
    let Some(tcp) = &config.api.tcp else {
        return Ok(None);
    };
    let endpoint = Arc::new(listener::TlsEndpoint::load(tcp.files())?);
    let tcp_listener = tokio::net::TcpListener::bind(tcp.listen)
        .await
        .map_err(|source| DaemonError::Tcp {
            addr: tcp.listen,
            source,
        })?;
    if let Ok(addr) = tcp_listener.local_addr() {
        tracing::info!(%addr, "serving gRPC over mutual TLS");
    }
    background.spawn(listener::accept_tls(tcp_listener, endpoint.clone(), ready));
    Ok(Some(endpoint))
}

/// The Prometheus endpoint, served in the background.
async fn start_metrics(
    config: &Config,
    background: &mut Background,
) -> Result<Arc<metrics::Metrics>, DaemonError> {
    let metrics_listener = metrics::bind(config.metrics.listen)
        .await
        .map_err(|source| DaemonError::Metrics {
            addr: config.metrics.listen,
            source,
        })?;
    let metrics = Arc::new(metrics::Metrics::new());
    if let Ok(addr) = metrics_listener.local_addr() {
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
    }
    background.spawn(metrics::serve(metrics_listener, metrics.clone()));
    Ok(metrics)
}

/// The allocator over this node's topology and the `[placement]` policy.
fn placement(config: &Config, topology: Topology) -> Result<Arc<PlacementState>, DaemonError> {
    let placement = Arc::new(PlacementState::new(Allocator::new(
        topology,
        config.placement.clone(),
    )?));
    {
        let alloc = placement.lock();
        tracing::info!(
            reserved = %format_cpulist(&alloc.pools().reserved),
            shared_pool = %format_cpulist(&alloc.pool_cpus()),
            "placement ready"
        );
    }
    Ok(placement)
}

/// KVM when it works, else TCG if `[libvirt] emulation` allows it, else why guests cannot run.
async fn emulation(config: &Config, node: &Node) -> Result<Emulation, String> {
    let kvm = node.kvm().await;
    let emulation = choose_emulation(kvm.state == KvmState::Usable, config.libvirt.emulation)
        .ok_or_else(|| {
            format!(
                "KVM does not work here ({}) and [libvirt] emulation = \"forbid\"",
                kvm.reason
            )
        });
    match &emulation {
        Ok(e) => {
            tracing::info!(emulation = ?e, "guests run under {}", if *e == Emulation::Kvm { "KVM" } else { "TCG emulation" })
        }
        Err(why) => tracing::warn!(%why, "this node cannot run guests"),
    }
    emulation
}

/// How often placement's rebuild is tried again while libvirt does not answer.
const REBUILD_RETRY: Duration = Duration::from_secs(2);

/// What the recovery needs to start guests again after a host reboot.
struct Resume {
    settings: crate::guest::ResumeSettings,
    boot_id: PathBuf,
    counts: hvagent_core::counts::KindCounts,
    /// True once the networks were reconciled (tried) the first time.
    networks_ready: tokio::sync::watch::Receiver<bool>,
}

/// Crash-only: placement comes back from the guests' own metadata; after a host reboot the
/// guests wanted running are started again (claims rebuilt first, so they are theirs); files
/// of creates that neither finished nor were undone go after a grace period. All need a
/// complete listing of the domains: while libvirt does not answer, placement answers
/// UNAVAILABLE and the rebuild is tried every REBUILD_RETRY, and the rest waits for it.
async fn recover(orphan_grace: Duration, guests: Arc<Guests>, mut resume: Resume) {
    let mut warned = false;
    loop {
        match tokio::time::timeout(LIBVIRT_TIMEOUT, guests.rebuild_placement()).await {
            Ok(Ok(())) => break,
            Ok(Err(e)) if !warned => {
                tracing::warn!(error = %e, "cannot rebuild placement from libvirt yet; placement answers UNAVAILABLE until it can")
            }
            Err(_) if !warned => tracing::warn!(
                "libvirt did not answer in time; placement answers UNAVAILABLE until it does"
            ),
            _ => {}
        }
        warned = true;
        tokio::time::sleep(REBUILD_RETRY).await;
    }
    // Ended only with the agent (the reconcile task holds the sender as long as it runs).
    let _ = resume.networks_ready.wait_for(|ready| *ready).await;
    guests
        .resume_after_boot(&resume.settings, &resume.boot_id, &resume.counts)
        .await;
    if let Ok(Ok(orphans)) =
        tokio::time::timeout(LIBVIRT_TIMEOUT, guests.remove_orphans(orphan_grace)).await
    {
        for uuid in orphans {
            tracing::info!(vm = %uuid, "removed files of a guest that has no domain");
        }
    }
}

/// Networks are made to match their specs at start and every reconcile interval; stray taps
/// are removed only when the guests (who own taps) could be listed. `reconciled` turns true
/// after the first try.
async fn reconcile_networks(
    networks: Arc<crate::net::Networks>,
    guests: Arc<Guests>,
    every: Duration,
    reconciled: tokio::sync::watch::Sender<bool>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let owners = || async { guests.tap_owners().await.ok() };
        if let Err(e) = networks.reconcile(owners).await {
            tracing::warn!(error = %e, "network reconcile incomplete");
        }
        reconciled.send_replace(true);
    }
}

/// Keeps the libvirt connection (and with it the event callbacks) alive: a libvirtd that
/// restarts is reconnected within CONNECTION_CHECK, and the callbacks registered again.
async fn keep_connected(libvirt: Arc<Libvirt>) {
    let mut tick = tokio::time::interval(CONNECTION_CHECK);
    loop {
        tick.tick().await;
        let libvirt = libvirt.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || libvirt.conn()).await {
            tracing::debug!(error = %e, "libvirt unreachable; trying again");
        }
    }
}

/// Reservations whose TTL passed are released.
async fn expire_reservations(placement: Arc<PlacementState>) {
    let mut tick = tokio::time::interval(EXPIRY_INTERVAL);
    loop {
        tick.tick().await;
        for claim in placement.expire() {
            tracing::info!(vm = %claim.vm_uuid, request = %claim.request_id, "reservation expired");
        }
    }
}

/// The KVM trial and libvirt's facts, read once so the first inventory call need not wait.
async fn warm_up(node: Arc<Node>) {
    let kvm = node.kvm().await;
    tracing::info!(state = kvm.state.as_str(), reason = %kvm.reason, "KVM trial");
    let facts = tokio::task::spawn_blocking(move || node.libvirt.facts()).await;
    match facts {
        Ok(f) if f.connected() => tracing::info!(
            uri = %f.uri, libvirt = %f.libvirt_version, qemu = %f.qemu_version,
            "connected to libvirt"
        ),
        Ok(f) => tracing::warn!(error = %f.error, "libvirt unavailable; retrying on use"),
        Err(e) => tracing::warn!(error = %e, "libvirt probe task failed"),
    }
}

/// Every served service's status, and the server's as a whole (the empty name), in grpc.health.
async fn set_status(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    for service in crate::api::services::SERVICES {
        health.set_service_status(service.name, status).await;
    }
    health.set_service_status("", status).await;
}

/// SIGHUP: the TLS files are read again; new handshakes use them, open connections and
/// streams keep going. A file that cannot be used leaves the ones in use in place.
async fn reload_on_sighup(
    mut sighup: tokio::signal::unix::Signal,
    endpoint: Option<Arc<listener::TlsEndpoint>>,
) {
    while sighup.recv().await.is_some() {
        match &endpoint {
            None => tracing::info!("SIGHUP: no TCP listener, nothing to reload"),
            Some(endpoint) => match endpoint.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificates reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: TLS certificates not reloaded; keeping the ones in use")
                }
            },
        }
    }
}

/// The access layer from `[access]` (user and group names resolved now), and the socket's
/// group if one is set.
fn access(
    config: &config::AccessConfig,
) -> Result<(crate::access::layer::AccessLayer, Option<nix::unistd::Gid>), DaemonError> {
    use nix::unistd::{Group, User};
    let group = |key: &str, name: &str| match Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid),
        _ => Err(DaemonError::Access(format!("{key}: no group {name:?}"))),
    };
    let mut policy = crate::access::Policy {
        certificates: config.tls_identities.clone(),
        ..Default::default()
    };
    for (name, role) in &config.unix_users {
        let uid = match User::from_name(name) {
            Ok(Some(u)) => u.uid,
            _ => return Err(DaemonError::Access(format!("unix_users: no user {name:?}"))),
        };
        policy.unix.users.insert(uid.as_raw(), *role);
    }
    for (name, role) in &config.unix_groups {
        policy
            .unix
            .groups
            .insert(group("unix_groups", name)?.as_raw(), *role);
    }
    let socket_gid = config
        .socket_group
        .as_deref()
        .map(|name| group("socket_group", name))
        .transpose()?;
    let audit = crate::access::audit::Audit::open(config.audit_log.as_deref()).map_err(|e| {
        DaemonError::Access(format!(
            "audit_log: {}: {e}",
            config
                .audit_log
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ))
    })?;
    Ok((
        crate::access::layer::AccessLayer::new(policy, audit),
        socket_gid,
    ))
}

/// Reflection over every service the agent serves.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(hvagent_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// The storage root: QEMU (another user) must traverse it to the files libvirt hands it.
fn prepare_storage(root: &std::path::Path) -> Result<(), DaemonError> {
    crate::storage::traversable_dir(root).map_err(|source| DaemonError::Io {
        path: root.to_path_buf(),
        action: "create storage root (mode 0711)",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hvagent_proto::v1::flavor_service_server::FlavorServiceServer;
    use hvagent_proto::v1::image_service_server::ImageServiceServer;
    use hvagent_proto::v1::migration_service_server::MigrationServiceServer;
    use hvagent_proto::v1::network_service_server::NetworkServiceServer;
    use hvagent_proto::v1::node_service_server::NodeServiceServer;
    use hvagent_proto::v1::placement_service_server::PlacementServiceServer;
    use hvagent_proto::v1::vm_service_server::VmServiceServer;
    use hvagent_proto::v1::volume_service_server::VolumeServiceServer;
    use tonic::server::NamedService;

    /// The server mounts exactly the services of the table (which the health registration and
    /// the role rules read).
    #[test]
    fn the_server_mounts_the_services_of_the_table() {
        let mut mounted = vec![
            NodeServiceServer::<NodeApi>::NAME,
            FlavorServiceServer::<FlavorApi>::NAME,
            PlacementServiceServer::<PlacementApi>::NAME,
            ImageServiceServer::<ImageApi>::NAME,
            NetworkServiceServer::<NetworkApi>::NAME,
            VmServiceServer::<VmApi>::NAME,
            VolumeServiceServer::<VolumeApi>::NAME,
            MigrationServiceServer::<MigrationApi>::NAME,
        ];
        let mut table: Vec<_> = crate::api::services::SERVICES
            .iter()
            .map(|s| s.name)
            .collect();
        mounted.sort();
        table.sort();
        assert_eq!(mounted, table);
    }
}
