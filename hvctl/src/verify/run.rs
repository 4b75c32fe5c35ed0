//! The effectful part of `hvctl verify`: guests made and deleted through the agent's API, the
//! probe read back from their consoles.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hvagent_core::flavor::{self, CpuType};
use hvagent_probe::plan::{Mode, Plan};
use hvagent_probe::report::{self, Report};
use hvagent_proto::v1 as pb;
use tonic::transport::Channel;

use super::judge::{Evidence, judge};
use super::{FlavorResult, Outcome, VerifyReport};

type Vms = pb::vm_service_client::VmServiceClient<Channel>;

/// How often consoles are read while waiting.
const POLL: Duration = Duration::from_millis(1000);
/// How long to wait for the agent's first pin reading of a probe guest (its default
/// [health] interval is 10 s).
const PINS_READ: Duration = Duration::from_secs(60);
/// The console tail read each time: far more than a report and a run's samples.
const CONSOLE_BYTES: u32 = 1 << 20;

pub struct Options {
    /// Flavor names to verify (canonical or not), in order.
    pub flavors: Vec<String>,
    /// Neighbour guests at most (fewer when fewer fit).
    pub neighbours: u32,
    /// The neighbours' flavor; `None`: [`default_neighbour`] for the node.
    pub neighbour_flavor: Option<String>,
    /// Image in the agent's store holding the probe (the test guest image).
    pub image: String,
    /// Workload windows to measure alone and again beside the neighbours.
    pub samples: u32,
    /// What the probe guest runs (its mode is set here).
    pub plan: Plan,
    /// How long a guest may take to print its report or first sample.
    pub boot_timeout: Duration,
    pub tolerance: f64,
}

/// Guests this run made and has not deleted yet: what an interrupted run must clean up.
#[derive(Clone, Default)]
pub struct Created(Arc<Mutex<BTreeSet<String>>>);

impl Created {
    fn add(&self, uuid: &str) {
        if let Ok(mut s) = self.0.lock() {
            s.insert(uuid.into());
        }
    }
    fn remove(&self, uuid: &str) {
        if let Ok(mut s) = self.0.lock() {
            s.remove(uuid);
        }
    }
    fn all(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The agent refused or failed a call that the whole run needs.
    #[error("{what}: {status}")]
    Call {
        what: String,
        status: Box<tonic::Status>,
    },
    #[error("{0}")]
    Input(String),
}

impl RunError {
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            RunError::Call { status, .. } => Some(status),
            RunError::Input(_) => None,
        }
    }
}

fn call(what: impl Into<String>) -> impl FnOnce(tonic::Status) -> RunError {
    let what = what.into();
    move |status| RunError::Call {
        what,
        status: Box::new(status),
    }
}

/// Why one flavor's run stopped: it fails that flavor only.
struct StepError(String);

impl From<tonic::Status> for StepError {
    fn from(s: tonic::Status) -> Self {
        StepError(format!(
            "{}: {}",
            crate::client::code_name(s.code()),
            s.message()
        ))
    }
}

async fn console(vms: &mut Vms, uuid: &str) -> Result<String, StepError> {
    let log = vms
        .get_console_log(pb::GetConsoleLogRequest {
            uuid: uuid.into(),
            max_bytes: CONSOLE_BYTES,
        })
        .await?
        .into_inner();
    Ok(String::from_utf8_lossy(&log.data).into_owned())
}

/// Reads the guest's console until `found` finds something in it, or `timeout` passes.
async fn wait_for<T>(
    vms: &mut Vms,
    uuid: &str,
    timeout: Duration,
    what: &str,
    found: impl Fn(&str) -> Option<T>,
) -> Result<T, StepError> {
    let started = Instant::now();
    loop {
        if let Some(t) = found(&console(vms, uuid).await?) {
            return Ok(t);
        }
        if started.elapsed() >= timeout {
            return Err(StepError(format!(
                "no {what} on the console of guest {uuid} within {} s",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A guest name the agent accepts (1-64 of a-z 0-9 . _ -): `verify-`, the UUID's first
/// group, and `part` (a flavor name) with anything else made `-`.
fn guest_name(uuid: &str, part: &str) -> String {
    let tail: String = part
        .to_lowercase()
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .collect();
    let mut name = format!("verify-{}-{tail}", uuid.get(..8).unwrap_or(uuid));
    name.truncate(64);
    name
}

async fn create(
    vms: &mut Vms,
    created: &Created,
    name_part: &str,
    flavor: &str,
    image: &str,
    plan: &Plan,
    role: &str,
) -> Result<pb::Vm, StepError> {
    let uuid = crate::new_uuid().map_err(|e| StepError(format!("cannot make a UUID: {e}")))?;
    let name = guest_name(&uuid, name_part);
    created.add(&uuid);
    let vm = vms
        .create(pb::CreateVmRequest {
            uuid: uuid.clone(),
            name,
            flavor: flavor.into(),
            image: image.into(),
            user_data: format!("#cloud-config\n{}", plan.user_data()).into_bytes(),
            metadata: [("hvctl-verify".to_string(), role.to_string())].into(),
            ..Default::default()
        })
        .await;
    match vm {
        Ok(vm) => Ok(vm.into_inner()),
        Err(s) => {
            // A refused create leaves nothing, but one that timed out or lost its connection
            // goes on in the agent: delete it (the agent waits for the create; deleting a
            // guest that is not there is no error). If that fails too, the final cleanup
            // tries again.
            let _ = delete(vms, created, &uuid).await;
            Err(s.into())
        }
    }
}

async fn delete(vms: &mut Vms, created: &Created, uuid: &str) -> Result<(), tonic::Status> {
    vms.delete(pb::DeleteVmRequest { uuid: uuid.into() })
        .await?;
    created.remove(uuid);
    Ok(())
}

/// How long [`cleanup`] keeps trying a guest the agent is still busy with (an interrupted
/// create goes on in the agent until it is done or undone).
const CLEANUP_PATIENCE: Duration = Duration::from_secs(120);

/// Deletes every guest the run made and has not deleted; returns those that could not be.
pub async fn cleanup(channel: Channel, created: &Created) -> Vec<(String, String)> {
    let mut vms = Vms::new(channel);
    let mut left = Vec::new();
    let started = Instant::now();
    for uuid in created.all() {
        loop {
            match delete(&mut vms, created, &uuid).await {
                Ok(()) => break,
                Err(s)
                    if started.elapsed() < CLEANUP_PATIENCE
                        && matches!(
                            s.code(),
                            tonic::Code::Aborted
                                | tonic::Code::FailedPrecondition
                                | tonic::Code::ResourceExhausted
                                | tonic::Code::Unavailable
                        ) =>
                {
                    tokio::time::sleep(POLL).await;
                }
                Err(s) => {
                    left.push((uuid, s.message().to_string()));
                    break;
                }
            }
        }
    }
    left
}

/// How many more guests of `flavor` fit, and if none, why.
async fn capacity(
    channel: &Channel,
    flavors: &[String],
) -> Result<Vec<pb::FlavorCapacity>, RunError> {
    let mut node = pb::node_service_client::NodeServiceClient::new(channel.clone());
    Ok(node
        .get_capacity(pb::GetCapacityRequest {
            flavors: flavors.to_vec(),
        })
        .await
        .map_err(call("asking the agent for its capacity"))?
        .into_inner()
        .flavors)
}

/// The agent's guarantee report of every guest on the node but `except`.
async fn other_reports(vms: &mut Vms, except: &str) -> Result<Vec<pb::GuaranteeReport>, StepError> {
    let list = vms.list(pb::ListVmsRequest {}).await?.into_inner();
    let mut out = Vec::new();
    for vm in list
        .vms
        .iter()
        .filter(|v| v.uuid != except && v.state == "running")
    {
        // A guest going away meanwhile has nothing to share.
        if let Ok(r) = vms
            .get_guarantee_report(pb::GetGuaranteeReportRequest {
                uuid: vm.uuid.clone(),
            })
            .await
        {
            out.push(r.into_inner());
        }
    }
    Ok(out)
}

/// Whether the agent has read where every vCPU thread of the guest may run.
async fn pins_read(vms: &mut Vms, uuid: &str) -> Result<bool, StepError> {
    let r = vms
        .get_guarantee_report(pb::GetGuaranteeReportRequest { uuid: uuid.into() })
        .await?
        .into_inner();
    Ok(r.vcpus.iter().all(|v| !v.actual.is_empty()))
}

/// What every step of one flavor's run needs.
struct Ctx<'a> {
    channel: &'a Channel,
    created: &'a Created,
    opts: &'a Options,
    /// The neighbours' flavor, given or the node's default.
    neighbour: &'a str,
    /// SMT on the host (the `V` ratio).
    smt: bool,
    progress: &'a dyn Fn(&str),
}

/// One flavor: probe alone, then beside neighbours, judged. Every guest it makes is deleted
/// before it returns (the caller's [`cleanup`] covers an interruption).
async fn one(ctx: &Ctx<'_>, flavor: &str) -> FlavorResult {
    let started = Instant::now();
    let mut vms = Vms::new(ctx.channel.clone());
    let mut result = FlavorResult::new(flavor, Outcome::Judged, String::new());
    let mut made = Vec::new();
    let outcome = probe(ctx, &mut vms, flavor, &mut result, &mut made).await;
    for uuid in made.iter().rev() {
        if let Err(s) = delete(&mut vms, ctx.created, uuid).await {
            (ctx.progress)(&format!(
                "{flavor}: could not delete guest {uuid}: {}",
                s.message()
            ));
        }
    }
    if let Err(StepError(why)) = outcome {
        result.outcome = Outcome::Failed;
        result.reason = why;
    }
    result.seconds = started.elapsed().as_secs_f64();
    result
}

/// The steps of [`one`]; every guest it makes goes into `made` at once, so that [`one`]
/// deletes it whatever step fails.
async fn probe(
    ctx: &Ctx<'_>,
    vms: &mut Vms,
    flavor: &str,
    result: &mut FlavorResult,
    made: &mut Vec<String>,
) -> Result<(), StepError> {
    let (opts, created, progress) = (ctx.opts, ctx.created, ctx.progress);
    let spec = flavor::parse(flavor)
        .map_err(|e| StepError(format!("{flavor:?} is not a flavor name: {e}")))?
        .spec;
    progress(&format!("{flavor}: creating the probe guest"));
    let plan = Plan {
        mode: Mode::Report,
        ..opts.plan
    };
    let vm = create(vms, created, flavor, flavor, &opts.image, &plan, "probe").await?;
    made.push(vm.uuid.clone());
    result.vm_uuid = vm.uuid.clone();
    result.vm_name = vm.name.clone();
    let emulated = vm.emulation == "tcg";
    progress(&format!(
        "{flavor}: waiting for the probe's report from {}",
        vm.name
    ));
    let report: Report = wait_for(
        vms,
        &vm.uuid,
        opts.boot_timeout,
        "probe report",
        report::find_report,
    )
    .await?
    .map_err(StepError)?;
    let want = opts.samples as usize;
    progress(&format!("{flavor}: {want} workload windows alone"));
    let window = Duration::from_millis(opts.plan.window_ms);
    let sample_wait = opts.boot_timeout + window * (opts.samples + 1);
    let alone = wait_for(vms, &vm.uuid, sample_wait, "workload samples", |c| {
        let s = report::samples(c);
        (s.len() >= want).then(|| s[..want].to_vec())
    })
    .await?;

    let mut with = Vec::new();
    let noisy = matches!(
        spec.cpu_type,
        CpuType::Shared | CpuType::DedicatedCore | CpuType::DedicatedThread
    );
    if noisy && opts.neighbours > 0 {
        let fits = capacity(ctx.channel, &[ctx.neighbour.to_string()])
            .await
            .map_err(|e| StepError(e.to_string()))?
            .first()
            .map_or(0, |c| c.more);
        let n = u64::from(opts.neighbours).min(fits);
        progress(&format!(
            "{flavor}: starting {n} neighbours ({}, {fits} fit)",
            ctx.neighbour
        ));
        let burn = Plan {
            mode: Mode::Burn,
            ..opts.plan
        };
        let mut neighbours = Vec::new();
        for i in 0..n {
            let nb = create(
                vms,
                created,
                &format!("neighbour{i}"),
                ctx.neighbour,
                &opts.image,
                &burn,
                "neighbour",
            )
            .await?;
            made.push(nb.uuid.clone());
            neighbours.push(nb.uuid);
            result.neighbours.push(ctx.neighbour.to_string());
        }
        for nb in &neighbours {
            wait_for(
                vms,
                nb,
                opts.boot_timeout,
                "neighbour workload sample",
                |c| (!report::samples(c).is_empty()).then_some(()),
            )
            .await?;
        }
        if !neighbours.is_empty() {
            // The window running when the last neighbour got busy is mixed: skip it.
            let from = report::samples(&console(vms, &vm.uuid).await?).len() + 1;
            progress(&format!(
                "{flavor}: {want} workload windows beside {n} busy neighbours"
            ));
            with = wait_for(vms, &vm.uuid, sample_wait, "workload samples", |c| {
                let s = report::samples(c);
                (s.len() >= from + want).then(|| s[from..from + want].to_vec())
            })
            .await?;
        }
    }
    progress(&format!(
        "{flavor}: asking the agent for its guarantee reports"
    ));
    // The agent reads pins every [health] interval: wait until it has read those of the
    // probe guest and of the neighbours (a guest it never observes counts as running
    // anywhere; one merely too young to be read yet must not).
    let asked = Instant::now();
    loop {
        let mut read = true;
        for uuid in made.iter() {
            read &= pins_read(vms, uuid).await?;
        }
        if read || asked.elapsed() >= PINS_READ {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let agent = vms
        .get_guarantee_report(pb::GetGuaranteeReportRequest {
            uuid: vm.uuid.clone(),
        })
        .await?
        .into_inner();
    let others = other_reports(vms, &vm.uuid).await?;
    result.checks = judge(&Evidence {
        spec: &spec,
        emulated,
        smt: ctx.smt,
        probe: &report,
        agent: &agent,
        others: &others,
        alone: &alone,
        with_neighbours: &with,
        tolerance: opts.tolerance,
    });
    result.probe = Some(report);
    result.alone = alone;
    result.with_neighbours = with;
    result.agent = Some(agent);
    Ok(())
}

/// The neighbours' flavor when none is given: one shared vCPU and 1 GiB without ECC, which
/// every node can serve; with `i` where the node serves only `i` flavors (a mitigation is off).
pub fn default_neighbour(serves_secure: bool) -> &'static str {
    if serves_secure {
        "SCS-1V-1u"
    } else {
        "SCS-1Vi-1u"
    }
}

/// Verifies every flavor in `opts` in turn. Flavors that do not fit are skipped; a flavor
/// whose guest fails is reported failed and the run goes on.
pub async fn run(
    channel: Channel,
    created: &Created,
    opts: &Options,
    progress: &dyn Fn(&str),
) -> Result<VerifyReport, RunError> {
    let started = Instant::now();
    for f in opts.neighbour_flavor.iter().chain(&opts.flavors) {
        flavor::parse(f)
            .map_err(|e| RunError::Input(format!("{f:?} is not a valid SCS flavor name: {e}")))?;
    }
    let inventory = pb::node_service_client::NodeServiceClient::new(channel.clone())
        .get_inventory(pb::GetInventoryRequest {})
        .await
        .map_err(call("reading the node's inventory"))?
        .into_inner();
    let serves_secure = inventory.scs.as_ref().is_some_and(|s| s.serves_secure);
    let neighbour = opts
        .neighbour_flavor
        .as_deref()
        .unwrap_or(default_neighbour(serves_secure));
    pb::image_service_client::ImageServiceClient::new(channel.clone())
        .get(pb::GetImageRequest {
            name: opts.image.clone(),
        })
        .await
        .map_err(call(format!(
            "the probe image {:?} (import images/out/testguest.qcow2 under that name)",
            opts.image
        )))?;
    let cpu = inventory.cpu.unwrap_or_default();
    let fits = capacity(&channel, &opts.flavors).await?;
    let mut report = VerifyReport {
        node: inventory.hostname,
        kernel: inventory.kernel_release,
        cpu_model: cpu.model_name,
        emulation: String::new(),
        started_unix: hvagent_core::now_unix(),
        seconds: 0.0,
        neighbours_asked: opts.neighbours,
        window_ms: opts.plan.window_ms,
        tolerance: opts.tolerance,
        flavors: Vec::new(),
    };
    for (i, name) in opts.flavors.iter().enumerate() {
        let cap = fits.iter().find(|c| &c.flavor == name);
        if let Some(c) = cap.filter(|c| c.more == 0) {
            progress(&format!(
                "[{}/{}] {name}: skipped, does not fit ({})",
                i + 1,
                opts.flavors.len(),
                c.limited_by
            ));
            report.flavors.push(FlavorResult::new(
                name,
                Outcome::Skipped,
                format!("does not fit this node: {} ({})", c.limited_by, c.reason),
            ));
            continue;
        }
        let prefix = format!("[{}/{}] ", i + 1, opts.flavors.len());
        let show = |m: &str| progress(&format!("{prefix}{m}"));
        let ctx = Ctx {
            channel: &channel,
            created,
            opts,
            neighbour,
            smt: cpu.smt_active,
            progress: &show,
        };
        let r = one(&ctx, name).await;
        if let Some(agent) = &r.agent {
            report.emulation = agent.emulation.clone();
        }
        show(&format!(
            "{name}: {} kept, {} violated, {} not verifiable{}",
            r.count(super::Verdict::Kept),
            r.count(super::Verdict::Violated),
            r.count(super::Verdict::NotVerifiable),
            if r.outcome == Outcome::Failed {
                format!(" (failed: {})", r.reason)
            } else {
                String::new()
            }
        ));
        report.flavors.push(r);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_names_the_agent_accepts() {
        let uuid = "5b3c1d2e-0000-4000-8000-000000000000";
        assert_eq!(
            guest_name(uuid, "SCS-2V-4u-10"),
            "verify-5b3c1d2e-scs-2v-4u-10"
        );
        assert_eq!(
            guest_name(uuid, "SCS-2V:4:10"),
            "verify-5b3c1d2e-scs-2v-4-10"
        );
        let long = guest_name(uuid, &"SCS-16T-64-3x10s_kvm_hwv_z3h_GNa-64_ib".repeat(3));
        assert_eq!(long.len(), 64);
        assert!(
            long.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        );
    }
}
