//! Console round trip of one line on a running TCG guest's serial console, side by side in
//! one run on the same guest: a line typed into its shell (`echo rt-$((N+0))-x`) until the
//! shell's output (`rt-N-x`, which differs from the echoed keystrokes) comes back,
//!
//! - through the agent's `VmService/Console` stream directly (a gRPC client in this process);
//! - through `hvctl vm console VM --attach` and through `virsh console VM`, each driven the same
//!   way on a pseudo-terminal (typed on its master side, read back there).
//!
//! One console session per guest at a time: each way gets a block of `ROUNDS` lines in its own
//! session, and the blocks repeat `BLOCKS` times in turn.
//!
//! Run: `cargo build --release --bins && cargo bench -p hvagent-benches --bench console`.
//! Needs what `make test` prepares (libvirtd, images/out/testguest.qcow2). Knobs: `ROUNDS`
//! (default 20), `BLOCKS` (default 3).

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, env_or, header, import_testguest, row, start_agent, stats, wait_ready};
use hvagent_proto::v1 as pb;
use hvctl::client;
use tokio::sync::mpsc;

type Vms = pb::vm_service_client::VmServiceClient<tonic::transport::Channel>;

const UUID: &str = "00000000-0000-4000-8000-0000be7c0501";
const LIMIT: Duration = Duration::from_secs(30);

/// A program on a pseudo-terminal: its master side to type into and read from.
struct OnPty {
    child: Child,
    master: std::fs::File,
    seen: Vec<u8>,
}

impl OnPty {
    fn spawn(mut command: Command) -> OnPty {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup"));
        let child = command
            .stdin(slave(&pty.slave))
            .stdout(slave(&pty.slave))
            .stderr(slave(&pty.slave))
            .spawn()
            .expect("spawn on the pty");
        drop(pty.slave);
        // Reads return what is there after at most 1 ms (polled below).
        let flags = nix::fcntl::fcntl(&pty.master, nix::fcntl::FcntlArg::F_GETFL).expect("flags");
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&pty.master, nix::fcntl::FcntlArg::F_SETFL(flags)).expect("nonblock");
        OnPty {
            child,
            master: std::fs::File::from(pty.master),
            seen: Vec::new(),
        }
    }

    /// Reads until the output holds `needle` (after what was seen before).
    fn expect(&mut self, needle: &str) {
        let from = self.seen.len();
        let deadline = Instant::now() + LIMIT;
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&self.seen[from..]).contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on fd {}: {}",
                self.master.as_raw_fd(),
                String::from_utf8_lossy(&self.seen[from..])
            );
            match self.master.read(&mut buf) {
                Ok(n) if n > 0 => self.seen.extend_from_slice(&buf[..n]),
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// One line's round trip.
    fn round_trip(&mut self, n: usize) -> Duration {
        let started = Instant::now();
        self.master
            .write_all(format!("echo rt-$(({n}+0))-x\r").as_bytes())
            .expect("type");
        self.expect(&format!("rt-{n}-x"));
        started.elapsed()
    }

    /// Leaves with Ctrl-] (both clients' escape) and waits for the program to end.
    fn leave(mut self) {
        let _ = self.master.write_all(&[0x1d]);
        let deadline = Instant::now() + LIMIT;
        while self.child.try_wait().expect("wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "the console client did not leave"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A session over the agent's gRPC stream, in this process.
struct Stream {
    keys: mpsc::Sender<pb::ConsoleInput>,
    output: tonic::Streaming<pb::ConsoleOutput>,
}

impl Stream {
    async fn open(vms: &mut Vms) -> Stream {
        let (keys, rx) = mpsc::channel(16);
        keys.send(pb::ConsoleInput {
            uuid: UUID.into(),
            ..Default::default()
        })
        .await
        .expect("send");
        let output = vms
            .console(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("console")
            .into_inner();
        Stream { keys, output }
    }

    async fn round_trip(&mut self, n: usize) -> Duration {
        let started = Instant::now();
        self.keys
            .send(pb::ConsoleInput {
                data: format!("echo rt-$(({n}+0))-x\r").into_bytes(),
                ..Default::default()
            })
            .await
            .expect("type");
        let needle = format!("rt-{n}-x");
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains(&needle) {
            let out = tokio::time::timeout(LIMIT, self.output.message())
                .await
                .expect("output in time")
                .expect("stream")
                .expect("open");
            seen.extend(out.data);
        }
        started.elapsed()
    }
}

fn main() {
    let rounds = env_or("ROUNDS", 20);
    let blocks = env_or("BLOCKS", 3);
    let dir = common::guest_dir();
    let (mut agent, socket) = start_agent(
        dir.path(),
        "[placement]\nreserved_cpus = \"\"\nreserved_memory_mib = 256\n",
    );
    let runtime = common::runtime();
    let (mut grpc, mut hvctl, mut virsh) = (vec![], vec![], vec![]);
    runtime.block_on(async {
        let channel = client::connect(&socket).await.expect("connect");
        let mut vms = Vms::new(channel.clone());
        import_testguest(channel).await;
        vms.create(pb::CreateVmRequest {
            uuid: UUID.into(),
            name: "bench-console".into(),
            flavor: "SCS-1Vi-0.5u".into(),
            image: "testguest".into(),
            ..Default::default()
        })
        .await
        .expect("create");
        wait_ready(&mut vms, UUID).await;
        let mut n = 0;
        for _ in 0..blocks {
            let mut stream = Stream::open(&mut vms).await;
            // The first line of each session warms it up.
            stream.round_trip(n).await;
            for _ in 0..rounds {
                n += 1;
                grpc.push(stream.round_trip(n).await);
            }
            drop(stream);
            // The agent frees the console when the session's pump sees the hang-up.
            tokio::time::sleep(Duration::from_millis(200)).await;

            let mut command = Command::new(bin("hvctl"));
            command
                .args(["--socket", socket.to_str().expect("path")])
                .args(["vm", "console", UUID, "--attach"]);
            let mut hv = OnPty::spawn(command);
            n += 1;
            hv.round_trip(n);
            for _ in 0..rounds {
                n += 1;
                hvctl.push(hv.round_trip(n));
            }
            hv.leave();
            tokio::time::sleep(Duration::from_millis(200)).await;

            let mut command = Command::new("virsh");
            command.args(["-c", "qemu:///system", "console", UUID]);
            let mut vs = OnPty::spawn(command);
            vs.expect("Escape character");
            n += 1;
            vs.round_trip(n);
            for _ in 0..rounds {
                n += 1;
                virsh.push(vs.round_trip(n));
            }
            vs.leave();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        vms.delete(pb::DeleteVmRequest { uuid: UUID.into() })
            .await
            .expect("delete");
    });
    println!(
        "\nOne line's round trip on the serial console of a running SCS-1Vi-0.5u TCG guest ({blocks} blocks of {rounds} lines per way):\n"
    );
    header();
    row("hvagent `VmService/Console` (gRPC stream)", &stats(grpc));
    row("`hvctl vm console --attach` on a pty", &stats(hvctl));
    row("`virsh console` on a pty", &stats(virsh));
    let _ = agent.kill();
    let _ = agent.wait();
}
