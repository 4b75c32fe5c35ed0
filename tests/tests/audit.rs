//! The audit log against the real agent: every mutation leaves exactly one line, naming what
//! the agent really acted on, whether or not the client waits for the answer, and whatever
//! way the request is encoded.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use common::{Agent, runtime, wait_for};
use hvagent_proto::v1 as pb;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;

/// An agent writing its audit log to `audit.log` in its directory.
fn agent() -> (Agent, std::path::PathBuf) {
    let agent = Agent::configure("[host]\nkvm_device = \"/nonexistent/kvm\"\n");
    let audit = agent.dir.path().join("audit.log");
    let config = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        format!("{config}[access]\naudit_log = \"{}\"\n", audit.display()),
    )
    .unwrap();
    (agent.spawn(), audit)
}

/// The audit log's lines for `method`, parsed.
fn lines_of(audit: &Path, method: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
        .filter(|l| l["method"] == method)
        .collect()
}

/// Serves `image` over HTTP/1.1 on 127.0.0.1: headers and the first half at once, then says so
/// on `half_sent` and sends the rest only once `go` says so. Returns the port.
fn gated_server(image: Vec<u8>, half_sent: mpsc::Sender<()>, go: mpsc::Receiver<()>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap() == 1 {
            head.push(byte[0]);
        }
        write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            image.len()
        )
        .unwrap();
        let (first, rest) = image.split_at(image.len() / 2);
        s.write_all(first).unwrap();
        s.flush().unwrap();
        half_sent.send(()).unwrap();
        if go.recv().is_ok() {
            s.write_all(rest).unwrap();
        }
    });
    port
}

/// A client that hangs up in the middle of a mutation cancels nothing: the import finishes and
/// its audit line, with its real result, is written once it has.
#[test]
fn a_mutation_whose_client_hangs_up_finishes_and_is_audited_once() {
    let (agent, audit) = agent();
    let (half_tx, half_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let port = gated_server(vec![0x5a; 1 << 20], half_tx, go_rx);
    let method = "hvagent.v1.ImageService/Import";
    runtime().block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        let mut images = pb::image_service_client::ImageServiceClient::new(channel);
        let call = tokio::spawn(async move {
            images
                .import(pb::ImportImageRequest {
                    name: "hangup".into(),
                    source_url: format!("http://127.0.0.1:{port}/hangup.raw"),
                    ..Default::default()
                })
                .await
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while half_rx.try_recv().is_err() {
            assert!(
                Instant::now() < deadline,
                "the agent never fetched the image"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The client goes: its call and its only connection are dropped mid-download.
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            lines_of(&audit, method).is_empty(),
            "nothing is audited before the import ends"
        );
        go_tx.send(()).unwrap();

        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        let mut images = pb::image_service_client::ImageServiceClient::new(channel);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let image = images
                .get(pb::GetImageRequest {
                    name: "hangup".into(),
                })
                .await;
            match image {
                Ok(i) if i.get_ref().state == "ready" => {
                    assert_eq!(i.get_ref().virtual_size_bytes, 1 << 20);
                    break;
                }
                Ok(_) => {}
                Err(s) => panic!("the import did not survive its client: {s:?}"),
            }
            assert!(Instant::now() < deadline, "import not ready within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let line = wait_for(Duration::from_secs(10), "an audit line", || {
        lines_of(&audit, method).pop()
    });
    // Written once, and only once: no second line turns up later.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lines_of(&audit, method).len(), 1, "{line}");
    assert_eq!(line["target"], "hangup");
    assert_eq!(line["result"], "OK");
    assert!(line["duration_ms"].as_f64().unwrap() >= 500.0, "{line}");
}

/// Sends and receives gRPC messages as the bytes they are: a request hand-encoded with
/// duplicated fields, as no generated client would make it.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// A length-delimited protobuf field (short values only).
fn field(number: u8, value: &str) -> Vec<u8> {
    let len = u8::try_from(value.len()).expect("a short value");
    assert!(len < 0x80);
    let mut out = vec![(number << 3) | 2, len];
    out.extend(value.as_bytes());
    out
}

async fn raw_call(
    channel: tonic::transport::Channel,
    path: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(body),
        PathAndQuery::from_static(path),
        Raw,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// A request with each field given twice: protobuf keeps the last, so the agent acts on the
/// last, and the audit line names what it acted on, not the decoy before it.
#[test]
fn a_duplicated_field_is_audited_as_the_value_the_agent_acted_on() {
    let (agent, audit) = agent();
    let decoy = "00000000-0000-4000-8000-00000000dec0";
    let real = "00000000-0000-4000-8000-0000000000a1";
    runtime().block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        let mut placement =
            pb::placement_service_client::PlacementServiceClient::new(channel.clone());
        // Placement answers once it has been built from libvirt.
        let deadline = Instant::now() + Duration::from_secs(30);
        while placement
            .list_claims(pb::ListClaimsRequest {})
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "placement not ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Reserve: request_id (1) and vm_uuid (2), each first a decoy, then the real one.
        let mut body = Vec::new();
        for (n, v) in [
            (1, "decoy-request"),
            (2, decoy),
            (1, "real-request"),
            (2, real),
        ] {
            body.extend(field(n, v));
        }
        // flavor (3): no ECC (`u`) and insecure CPUs allowed (`i`), which a test machine cannot promise.
        body.extend(field(3, "SCS-1Vi-1u"));
        body.extend([0x20, 60]); // ttl_seconds = 60
        raw_call(
            channel.clone(),
            "/hvagent.v1.PlacementService/Reserve",
            body,
        )
        .await
        .unwrap();
        let claims = placement
            .list_claims(pb::ListClaimsRequest {})
            .await
            .unwrap()
            .into_inner()
            .claims;
        assert_eq!(claims.len(), 1, "{claims:?}");
        assert_eq!(
            (claims[0].vm_uuid.as_str(), claims[0].request_id.as_str()),
            (real, "real-request"),
            "the agent acts on the last of each field"
        );

        // Release: vm_uuid (1) twice, the decoy first.
        let body = [field(1, decoy), field(1, real)].concat();
        raw_call(
            channel.clone(),
            "/hvagent.v1.PlacementService/Release",
            body,
        )
        .await
        .unwrap();
        let left = common::claims(&mut placement).await;
        assert!(left.is_empty(), "{left:?}");
    });
    let reserve = lines_of(&audit, "hvagent.v1.PlacementService/Reserve");
    assert_eq!(reserve.len(), 1, "{reserve:?}");
    assert_eq!(reserve[0]["target"], format!("real-request {real}"));
    assert_eq!(reserve[0]["result"], "OK");
    let release = lines_of(&audit, "hvagent.v1.PlacementService/Release");
    assert_eq!(release.len(), 1, "{release:?}");
    assert_eq!(release[0]["target"], real);
    assert_eq!(release[0]["result"], "OK");
}
