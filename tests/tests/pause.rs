//! Pause and resume end to end: a real TCG guest of the test image counts on its console once a
//! second (`hvagent-counter: on`); paused through hvctl its counter stops and its memory stays
//! (it goes on from where it was, no reboot), resumed it counts again. Refusals change nothing.

mod common;

use std::time::{Duration, Instant};

use common::{
    Agent, Cleanup, code, console, free_port, http_get, import_testguest, runtime, state, stderr,
    stdout, wait_for,
};
use hvagent_proto::v1 as pb;
use tonic::Code;
use tonic::transport::Channel;

type Vms = pb::vm_service_client::VmServiceClient<Channel>;

const GUEST: &str = "00000000-0000-4000-8000-0000005a0e01";
const NAME: &str = "pause-counter";
const MISSING: &str = "00000000-0000-4000-8000-0000005a0e99";

/// The highest `hvagent.count=N` on the console, and how many times the guest booted.
async fn counted(vms: &mut Vms) -> (u64, usize) {
    let text = console(vms, GUEST).await;
    let last = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("hvagent.count="))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    (last, text.matches("HVAGENT-GUEST-BOOTED").count())
}

/// Waits until the counter passes `above`; returns it.
async fn count_past(vms: &mut Vms, above: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (n, _) = counted(vms).await;
        if n > above {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "counter not past {above} within 180 s:\n{}",
            console(vms, GUEST).await
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[test]
fn a_paused_guest_stops_counting_and_goes_on_after_resume() {
    let metrics = free_port();
    let agent = Agent::configure_tcg("", "")
        .with_metrics_port(metrics)
        .spawn();
    let _cleanup = Cleanup(vec![GUEST.into()]);
    runtime().block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        import_testguest(channel.clone()).await;
        let mut vms = Vms::new(channel);
        vms.create(pb::CreateVmRequest {
            uuid: GUEST.into(),
            name: NAME.into(),
            flavor: "SCS-1Vi-0.5u".into(),
            image: "testguest".into(),
            user_data: b"hvagent-counter: on\n".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
        count_past(&mut vms, 2).await;

        // Resume of a running guest: answered as it is.
        let out = agent.hvctl(&["vm", "resume", NAME]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(state(&mut vms, GUEST).await, "running");

        let out = agent.hvctl(&["vm", "pause", NAME]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("paused"), "{}", stdout(&out));
        assert_eq!(state(&mut vms, GUEST).await, "paused");
        let report = agent.hvctl(&["vm", "guarantees", NAME]);
        assert!(
            stdout(&report)
                .lines()
                .next()
                .unwrap_or("")
                .ends_with("paused"),
            "{}",
            stdout(&report)
        );
        // A line in flight when the vCPUs stopped may still reach the log: read after a beat.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (frozen, boots) = counted(&mut vms).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(
            counted(&mut vms).await.0,
            frozen,
            "a paused guest's counter does not move"
        );
        // The health report shows it paused: the metrics' guest state, from the newest sample
        // ([health] interval_seconds, 10 s by default).
        let line = wait_for(
            Duration::from_secs(30),
            "hvagent_guest_info with state=\"paused\"",
            || {
                http_get(metrics, "/metrics")
                    .lines()
                    .find(|l| {
                        l.starts_with("hvagent_guest_info{")
                            && l.contains(&format!("uuid=\"{GUEST}\""))
                    })
                    .filter(|l| l.contains("state=\"paused\""))
                    .map(str::to_string)
            },
        );
        assert!(line.ends_with(" 1"), "{line}");
        // Pausing again is answered as it is.
        assert!(agent.hvctl(&["vm", "pause", NAME]).status.success());
        assert_eq!(state(&mut vms, GUEST).await, "paused");

        let out = agent.hvctl(&["vm", "resume", NAME]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(state(&mut vms, GUEST).await, "running");
        let after = count_past(&mut vms, frozen).await;
        let text = console(&mut vms, GUEST).await;
        assert!(
            text.contains(&format!("hvagent.count={}", frozen + 1)),
            "the counter goes on from {frozen} (memory kept):\n{text}"
        );
        assert_eq!(
            counted(&mut vms).await.1,
            boots,
            "no reboot: booted once (count now {after})"
        );

        // Refusals: the right code, and the guest is left as it was.
        vms.stop(pb::StopVmRequest {
            uuid: GUEST.into(),
            force: true,
            timeout_seconds: 0,
        })
        .await
        .unwrap();
        for (what, result) in [
            (
                "pause of a stopped guest",
                vms.pause(pb::PauseVmRequest { uuid: GUEST.into() }).await,
            ),
            (
                "resume of a stopped guest",
                vms.resume(pb::ResumeVmRequest { uuid: GUEST.into() }).await,
            ),
        ] {
            let e = result.expect_err(what);
            assert_eq!(e.code(), Code::FailedPrecondition, "{what}: {e:?}");
            assert!(e.message().contains("shut off"), "{what}: {}", e.message());
        }
        assert_eq!(state(&mut vms, GUEST).await, "shut off");
        let e = vms
            .pause(pb::PauseVmRequest {
                uuid: MISSING.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let e = vms
            .resume(pb::ResumeVmRequest {
                uuid: "not-a-uuid".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let out = agent.hvctl(&["vm", "pause", "no-such-guest"]);
        assert_ne!(code(&out.status), 0, "{}", stdout(&out));
        vms.delete(pb::DeleteVmRequest { uuid: GUEST.into() })
            .await
            .unwrap();
    });
}
