//! The interactive console end to end: a command typed into `VmService.Console` reaches the
//! shell on a real TCG guest's serial console and its output comes back; a second session is
//! refused, or takes over with `force` (the first ends ABORTED); hanging up leaves the guest
//! running and its console log growing; refusals for stopped, missing and unnamed guests.

mod common;

use std::time::{Duration, Instant};

use common::{Agent, Cleanup, import_testguest, ready, runtime, state};
use hvagent_proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::Code;
use tonic::transport::Channel;

type Vms = pb::vm_service_client::VmServiceClient<Channel>;

const GUEST: &str = "00000000-0000-4000-8000-0000005c0501";
const MISSING: &str = "00000000-0000-4000-8000-0000005c0599";

/// An open console: where keystrokes go, and the guest's output.
struct Session {
    keys: mpsc::Sender<pb::ConsoleInput>,
    output: tonic::Streaming<pb::ConsoleOutput>,
    seen: Vec<u8>,
}

async fn open(vms: &mut Vms, uuid: &str, force: bool) -> Result<Session, tonic::Status> {
    let (keys, rx) = mpsc::channel(16);
    keys.send(pb::ConsoleInput {
        uuid: uuid.into(),
        force,
        data: Vec::new(),
    })
    .await
    .unwrap();
    let output = vms
        .console(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok(Session {
        keys,
        output,
        seen: Vec::new(),
    })
}

impl Session {
    async fn type_line(&self, line: &str) {
        self.keys
            .send(pb::ConsoleInput {
                data: format!("{line}\r").into_bytes(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// Reads output until it holds `needle`; fails after 60 s.
    async fn expect(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !String::from_utf8_lossy(&self.seen).contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.output.message()).await {
                Ok(Ok(Some(out))) => self.seen.extend(out.data),
                other => panic!(
                    "no {needle:?} on the console ({other:?}); seen:\n{}",
                    String::from_utf8_lossy(&self.seen)
                ),
            }
        }
    }

    /// The status the output stream ends with.
    async fn end(&mut self) -> Result<(), tonic::Status> {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), self.output.message())
                .await
                .expect("the session ends within 30 s")
            {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(status) => return Err(status),
            }
        }
    }
}

async fn log_bytes(vms: &mut Vms) -> u64 {
    vms.get_console_log(pb::GetConsoleLogRequest {
        uuid: GUEST.into(),
        max_bytes: 1,
    })
    .await
    .unwrap()
    .into_inner()
    .total_bytes
}

#[test]
fn typed_commands_come_back_and_sessions_are_one_at_a_time() {
    let agent = Agent::configure_tcg("", "").spawn();
    let _cleanup = Cleanup(vec![GUEST.into()]);
    runtime().block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        import_testguest(channel.clone()).await;
        let mut vms = Vms::new(channel);
        vms.create(pb::CreateVmRequest {
            uuid: GUEST.into(),
            name: "console-shell".into(),
            flavor: "SCS-1Vi-0.5u".into(),
            image: "testguest".into(),
            user_data: b"hvagent-counter: on\n".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
        ready(&mut vms, GUEST).await;

        // A command typed in comes back with its output (the shell computes 6*7).
        let mut first = open(&mut vms, GUEST, false).await.unwrap();
        first.type_line("echo typed-$((6*7))-back").await;
        first.expect("typed-42-back").await;
        // The log is written while a session is attached: the counter's lines go on.
        let before = log_bytes(&mut vms).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            log_bytes(&mut vms).await > before,
            "the console log grows while attached"
        );

        // One session at a time: a second is refused, the first goes on working.
        let e = open(&mut vms, GUEST, false).await.err().expect("refused");
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("force"), "{}", e.message());
        first.type_line("echo still-$((2+3))").await;
        first.expect("still-5").await;

        // With force the new session takes over and the first ends ABORTED.
        let mut second = open(&mut vms, GUEST, true).await.unwrap();
        let ended = first.end().await.expect_err("the first session is aborted");
        assert_eq!(ended.code(), Code::Aborted, "{ended:?}");
        second.type_line("echo second-$((7*7))").await;
        second.expect("second-49").await;

        // Hanging up ends the session only: the guest runs on and its log keeps growing.
        drop(second);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(state(&mut vms, GUEST).await, "running");
        let before = log_bytes(&mut vms).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(log_bytes(&mut vms).await > before, "the log grows after");
        // And the console is free again (the hung-up session is gone).
        let mut third = open(&mut vms, GUEST, false).await.unwrap();
        third.type_line("echo third-$((1+1))").await;
        third.expect("third-2").await;

        // The guest stops: the session's output ends.
        vms.stop(pb::StopVmRequest {
            uuid: GUEST.into(),
            force: true,
            timeout_seconds: 0,
        })
        .await
        .unwrap();
        third.end().await.expect("the session ends with the guest");

        // Refusals.
        let e = open(&mut vms, GUEST, false).await.err().expect("stopped");
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("shut off"), "{}", e.message());
        let e = open(&mut vms, MISSING, false).await.err().expect("missing");
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let e = open(&mut vms, "", false).await.err().expect("unnamed");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        vms.delete(pb::DeleteVmRequest { uuid: GUEST.into() })
            .await
            .unwrap();
    });
}
