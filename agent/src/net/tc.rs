//! Rate limits on a guest's tap with `tc`, run as a child process without holding an async
//! worker, and killed when it does not finish in time (a `tc` stuck on the kernel's rtnl lock
//! must not hold the call, or a worker, for ever).

use std::path::Path;
use std::time::Duration;

use super::NetworksError;

/// How long one `tc` may take; it takes milliseconds.
pub const TC_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `program args` and waits at most `limit`; killed when it takes longer. Its error
/// output on failure.
pub async fn run(program: &str, args: &[String], limit: Duration) -> Result<(), String> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(limit, child).await {
        Err(_) => Err(format!(
            "{program} did not finish within {} s and was killed",
            limit.as_secs_f32()
        )),
        Ok(Err(e)) => Err(format!("{program}: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}

/// `tc` with `args`, in the network namespace at `namespace` (through `nsenter`) or the
/// agent's own.
async fn tc(namespace: Option<&Path>, args: &[&str]) -> Result<(), String> {
    let mut all: Vec<String> = Vec::new();
    let program = match namespace {
        Some(path) => {
            all.push(format!("--net={}", path.display()));
            all.push("tc".into());
            "nsenter"
        }
        None => "tc",
    };
    all.extend(args.iter().map(|a| a.to_string()));
    run(program, &all, TC_TIMEOUT).await
}

/// Limits tap `name` to `ingress_kbps` into the guest and `egress_kbps` out of it (kbit/s,
/// 0: none). What the guest receives leaves the host through the tap (a tbf qdisc), what it
/// sends enters through it (an ingress policer). Kernels without the police action
/// (act_police) refuse an egress limit.
pub async fn limit(
    namespace: Option<&Path>,
    name: &str,
    ingress_kbps: u32,
    egress_kbps: u32,
) -> Result<(), NetworksError> {
    if ingress_kbps == 0 && egress_kbps == 0 {
        return Ok(());
    }
    // A burst of 10 ms at the rate, at least one 9000-byte frame and some.
    let burst = |kbps: u32| format!("{}", (u64::from(kbps) * 1000 / 8 / 100).max(16_384));
    // Whatever was there before goes (none is fine).
    let _ = tc(namespace, &["qdisc", "del", "dev", name, "root"]).await;
    let _ = tc(namespace, &["qdisc", "del", "dev", name, "ingress"]).await;
    if ingress_kbps > 0 {
        let rate = format!("{ingress_kbps}kbit");
        let burst = burst(ingress_kbps);
        tc(
            namespace,
            &[
                "qdisc", "add", "dev", name, "root", "tbf", "rate", &rate, "burst", &burst,
                "latency", "50ms",
            ],
        )
        .await
        .map_err(|e| NetworksError::Failed(format!("ingress_kbps on {name}: {e}")))?;
    }
    if egress_kbps > 0 {
        let rate = format!("{egress_kbps}kbit");
        let burst = burst(egress_kbps);
        let police = [
            "filter", "add", "dev", name, "parent", "ffff:", "protocol", "all", "u32", "match",
            "u32", "0", "0", "police", "rate", &rate, "burst", &burst, "drop",
        ];
        let added = match tc(
            namespace,
            &["qdisc", "add", "dev", name, "handle", "ffff:", "ingress"],
        )
        .await
        {
            Ok(()) => tc(namespace, &police).await,
            Err(e) => Err(e),
        };
        added.map_err(|e| {
            NetworksError::Precondition(format!(
                "egress_kbps: this kernel cannot police traffic from the guest (tc u32 filter with the police action, act_police): {e}"
            ))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hanging_command_is_killed_in_time() {
        let started = std::time::Instant::now();
        let e = run("sleep", &["30".into()], Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(e, "sleep did not finish within 0.2 s and was killed");
        assert_eq!(run("true", &[], TC_TIMEOUT).await, Ok(()));
        let e = run(
            "sh",
            &["-c".into(), "echo nope >&2; exit 1".into()],
            TC_TIMEOUT,
        )
        .await
        .unwrap_err();
        assert_eq!(e, "nope");
        let e = run("/nonexistent/tc", &[], TC_TIMEOUT).await.unwrap_err();
        assert!(e.starts_with("/nonexistent/tc: "), "{e}");
    }

    /// While a command runs, the runtime's only worker thread serves other tasks.
    #[tokio::test(flavor = "current_thread")]
    async fn a_running_command_holds_no_worker() {
        let slow = tokio::spawn(async { run("sleep", &["1".into()], TC_TIMEOUT).await });
        let started = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "the worker was held by the child"
        );
        assert!(!slow.is_finished());
        assert_eq!(slow.await.unwrap(), Ok(()));
    }
}
