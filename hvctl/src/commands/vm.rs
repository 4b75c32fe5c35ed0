//! `hvctl vm create|list|get|start|stop|reboot|delete|snapshot|migrate|attach-volume|
//! detach-volume|events|guarantees|console`; guests are named by name or UUID.

use std::process::ExitCode;

use hvagent_proto::v1 as pb;

use super::{EXIT_CALL_FAILED, EXIT_USAGE, answer, fail, print};
use crate::cli::{Output, VmCommand};
use crate::render;

type Vms = pb::vm_service_client::VmServiceClient<tonic::transport::Channel>;

/// A guest's UUID from its name or UUID.
async fn resolve(vms: &mut Vms, guest: &str) -> Result<String, tonic::Status> {
    if hvagent_core::placement::allocator::is_uuid(guest) {
        return Ok(guest.to_string());
    }
    let list = vms.list(pb::ListVmsRequest {}).await?.into_inner();
    list.vms
        .into_iter()
        .find(|v| v.name == guest)
        .map(|v| v.uuid)
        .ok_or_else(|| tonic::Status::not_found(format!("no guest named {guest:?}")))
}

pub async fn run(output: Output, agent: &str, vms: &mut Vms, command: VmCommand) -> ExitCode {
    let one = |v: &pb::Vm| render::vms(std::slice::from_ref(v));
    let guest = match &command {
        VmCommand::Get { guest }
        | VmCommand::Start { guest }
        | VmCommand::Stop { guest, .. }
        | VmCommand::Reboot { guest, .. }
        | VmCommand::Pause { guest }
        | VmCommand::Resume { guest }
        | VmCommand::Delete { guest }
        | VmCommand::Snapshot { guest, .. }
        | VmCommand::Resize { guest, .. }
        | VmCommand::ResizeConfirm { guest }
        | VmCommand::ResizeRevert { guest }
        | VmCommand::Migrate { guest, .. }
        | VmCommand::AttachVolume { guest, .. }
        | VmCommand::DetachVolume { guest, .. }
        | VmCommand::AttachNetwork { guest, .. }
        | VmCommand::DetachNetwork { guest, .. }
        | VmCommand::Guarantees { guest }
        | VmCommand::GuestInfo { guest }
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
            boot_volume,
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
                None => match crate::new_uuid() {
                    Ok(u) => u,
                    Err(e) => {
                        eprintln!("hvctl: cannot make a UUID (give --uuid): {e}");
                        return ExitCode::FAILURE;
                    }
                },
            };
            let (networks, addresses): (Vec<String>, Vec<String>) =
                networks.iter().map(|n| network_and_address(n)).unzip();
            let req = pb::CreateVmRequest {
                uuid: uuid.clone(),
                name,
                flavor,
                image: image.unwrap_or_default(),
                boot_volume: boot_volume.unwrap_or_default(),
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
        VmCommand::Pause { .. } => answer(
            output,
            agent,
            vms.pause(pb::PauseVmRequest { uuid: guest }).await,
            one,
        ),
        VmCommand::Resume { .. } => answer(
            output,
            agent,
            vms.resume(pb::ResumeVmRequest { uuid: guest }).await,
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
        VmCommand::Snapshot {
            image, properties, ..
        } => {
            let Some(properties) = super::image::parse_properties(properties) else {
                return ExitCode::from(EXIT_USAGE);
            };
            answer(
                output,
                agent,
                vms.snapshot(pb::SnapshotVmRequest {
                    uuid: guest,
                    image,
                    properties,
                })
                .await,
                |i: &pb::Image| render::images(std::slice::from_ref(i)),
            )
        }
        VmCommand::Resize { flavor, .. } => answer(
            output,
            agent,
            vms.resize(pb::ResizeVmRequest {
                uuid: guest,
                flavor,
            })
            .await,
            one,
        ),
        VmCommand::ResizeConfirm { .. } => answer(
            output,
            agent,
            vms.confirm_resize(pb::ConfirmResizeVmRequest { uuid: guest })
                .await,
            one,
        ),
        VmCommand::ResizeRevert { .. } => answer(
            output,
            agent,
            vms.revert_resize(pb::RevertResizeVmRequest { uuid: guest })
                .await,
            one,
        ),
        VmCommand::Migrate { to, .. } => {
            let mut mover = vms.clone();
            let migrated = with_phases(output, vms, guest.clone(), async {
                mover
                    .migrate(pb::MigrateVmRequest {
                        uuid: guest,
                        target: to,
                    })
                    .await
            })
            .await;
            answer(output, agent, migrated, render::migrated)
        }
        VmCommand::AttachVolume { volume, .. } => answer(
            output,
            agent,
            vms.attach_volume(pb::AttachVolumeRequest {
                uuid: guest,
                volume,
            })
            .await,
            render::attached,
        ),
        VmCommand::DetachVolume { volume, .. } => answer(
            output,
            agent,
            vms.detach_volume(pb::DetachVolumeRequest {
                uuid: guest,
                volume,
            })
            .await,
            render::attached,
        ),
        VmCommand::AttachNetwork {
            network,
            mac,
            ingress_kbps,
            egress_kbps,
            ..
        } => {
            let (network, address) = network_and_address(&network);
            answer(
                output,
                agent,
                vms.attach_interface(pb::AttachInterfaceRequest {
                    uuid: guest,
                    network,
                    address,
                    mac: mac.unwrap_or_default(),
                    ingress_kbps,
                    egress_kbps,
                })
                .await,
                one,
            )
        }
        VmCommand::DetachNetwork { mac, .. } => answer(
            output,
            agent,
            vms.detach_interface(pb::DetachInterfaceRequest { uuid: guest, mac })
                .await,
            one,
        ),
        VmCommand::Guarantees { .. } => answer(
            output,
            agent,
            vms.get_guarantee_report(pb::GetGuaranteeReportRequest { uuid: guest })
                .await,
            render::guarantees,
        ),
        VmCommand::GuestInfo { .. } => answer(
            output,
            agent,
            vms.get_guest_info(pb::GetGuestInfoRequest { uuid: guest })
                .await,
            render::guest_info,
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
        VmCommand::Console {
            attach: true,
            force,
            ..
        } => super::console::attach(agent, vms, guest, force).await,
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

/// NET=ADDRESS/PREFIX (or NET alone) as the network and the address ("" for none).
fn network_and_address(n: &str) -> (String, String) {
    match n.split_once('=') {
        Some((net, address)) => (net.to_string(), address.to_string()),
        None => (n.to_string(), String::new()),
    }
}

/// Runs `migrate`, showing its phases from the guest's `migration` events on stderr
/// meanwhile: a status line with a progress bar on a terminal, a line per phase otherwise
/// (not with `--output json`). Events are watched before the call: none is missed.
async fn with_phases<T>(
    output: Output,
    vms: &mut Vms,
    uuid: String,
    migrate: impl std::future::Future<Output = T>,
) -> T {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    if !terminal && output == Output::Json {
        return migrate.await;
    }
    // Without events (an older agent) the migration runs all the same, silently.
    let Ok(events) = vms.watch_events(pb::WatchEventsRequest { uuid }).await else {
        return migrate.await;
    };
    let mut events = events.into_inner();
    let show = async {
        let mut last = String::new();
        while let Ok(Some(e)) = events.message().await {
            if e.kind != "migration" {
                continue;
            }
            let Some(line) = render::migration(&e) else {
                continue;
            };
            if terminal {
                eprint!("\r\x1b[K{line}");
            } else if e.detail != last {
                eprintln!("{line}");
            }
            last = e.detail;
        }
        // The stream ended (the agent went away): the answer will say so.
        std::future::pending::<()>().await;
    };
    let result = tokio::select! {
        r = migrate => r,
        () = show => unreachable!("the event loop never ends"),
    };
    if terminal {
        eprint!("\r\x1b[K");
    }
    result
}
