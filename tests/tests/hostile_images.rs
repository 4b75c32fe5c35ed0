//! Hostile images and sources against the real agent over its Unix socket: a corpus of images
//! QEMU would read in ways that reach beyond the file (backing and data files, encryption,
//! other container formats, damaged headers), disguised by their names; local sources that
//! would block or lead elsewhere (FIFOs, devices, links); URLs that never end, trickle or lie
//! about their length; and more slow imports than `max_imports`. Each is refused with its code
//! and reason, leaves nothing in the store, and holds no thread the other calls need.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Agent;
use hvagent_proto::v1 as pb;
use tonic::Code;

type Images = pb::image_service_client::ImageServiceClient<tonic::transport::Channel>;

/// An agent whose `[storage]` section also has `storage_keys`, writing its audit log to
/// `audit.log` in its directory.
fn agent_with(storage_keys: &str) -> Agent {
    let agent = Agent::configure("[host]\nkvm_device = \"/nonexistent/kvm\"\n");
    let audit = agent.dir.path().join("audit.log");
    agent.add_storage_keys(storage_keys);
    let text = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        format!("{text}[access]\naudit_log = \"{}\"\n", audit.display()),
    )
    .unwrap();
    agent.spawn()
}

/// What the store holds: image directories and partial files.
fn stored(agent: &Agent) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(agent.dir.path().join("store/images"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The audit log's Import lines.
fn import_audits(agent: &Agent) -> Vec<serde_json::Value> {
    std::fs::read_to_string(agent.dir.path().join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("audit lines are JSON"))
        .filter(|r| r["method"] == "hvagent.v1.ImageService/Import")
        .collect()
}

fn local(name: &str, path: &Path) -> pb::ImportImageRequest {
    pb::ImportImageRequest {
        name: name.into(),
        source_path: path.display().to_string(),
        ..Default::default()
    }
}

fn remote(name: &str, url: &str) -> pb::ImportImageRequest {
    pb::ImportImageRequest {
        name: name.into(),
        source_url: url.into(),
        ..Default::default()
    }
}

/// `qemu-img create` with `args`, when qemu-img is installed and manages (LUKS key
/// derivation benchmarks the CPU and fails now and then on a loaded machine: three tries);
/// false, with the reason printed, when not.
fn qemu_img(args: &[&str]) -> bool {
    let mut why = String::new();
    for _ in 0..3 {
        match Command::new("qemu-img")
            .arg("create")
            .arg("-q")
            .args(args)
            .output()
        {
            Ok(out) if out.status.success() => return true,
            Ok(out) => why = common::stderr(&out),
            Err(e) => {
                why = e.to_string();
                break;
            }
        }
    }
    println!("qemu-img create {args:?}: {why}: the header is built by hand");
    false
}

/// A version 3 qcow2 header of 1 MiB with 64 KiB clusters, as far as the agent reads it.
fn qcow2_by_hand() -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[20..24].copy_from_slice(&16u32.to_be_bytes());
    h[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes());
    h[100..104].copy_from_slice(&112u32.to_be_bytes());
    h
}

fn qcow2_edited(edit: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut h = qcow2_by_hand();
    edit(&mut h);
    h
}

/// Bytes with `magic` at `offset` in a 4 KiB file.
fn magic_at(offset: usize, magic: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 4096];
    h[offset..offset + magic.len()].copy_from_slice(magic);
    h
}

/// The hostile corpus in `dir`: (file, reason the agent gives). Files are named to mislead;
/// what qemu-img makes where it is installed, the same headers by hand where it is not.
fn hostile_corpus(dir: &Path) -> Vec<(PathBuf, &'static str)> {
    let path = |name: &str| dir.join(name);
    let mut corpus = Vec::new();
    let secret = "--object=secret,id=s0,data=hunter2";
    let made = |name: &str, args: &[&str], by_hand: &dyn Fn() -> Vec<u8>| {
        let file = path(name);
        let mut full: Vec<&str> = args.to_vec();
        let shown = file.display().to_string();
        full.push(&shown);
        full.push("1M");
        if !qemu_img(&full) {
            std::fs::write(&file, by_hand()).unwrap();
        }
        file
    };
    // A plain qcow2 to edit by hand below.
    let base = made("base.qcow2", &["-f", "qcow2"], &qcow2_by_hand);
    let base_bytes = std::fs::read(&base).unwrap();

    let host_file = path("host-secret");
    std::fs::write(&host_file, vec![7u8; 1 << 20]).unwrap();
    let data_file = format!("data_file={},data_file_raw=on", host_file.display());
    corpus.push((
        made("datafile.raw", &["-f", "qcow2", "-o", &data_file], &|| {
            qcow2_edited(|h: &mut Vec<u8>| h[72..80].copy_from_slice(&4u64.to_be_bytes()))
        }),
        "external data file",
    ));
    let backing = format!("backing_file={},backing_fmt=qcow2", base.display());
    corpus.push((
        made("backed.img", &["-f", "qcow2", "-o", &backing], &|| {
            qcow2_edited(|h: &mut Vec<u8>| h[8..16].copy_from_slice(&512u64.to_be_bytes()))
        }),
        "backing file",
    ));
    corpus.push((
        made(
            "encrypted.qcow2",
            &[
                "-f",
                "qcow2",
                secret,
                "-o",
                "encrypt.format=luks,encrypt.key-secret=s0",
            ],
            &|| qcow2_edited(|h: &mut Vec<u8>| h[32..36].copy_from_slice(&2u32.to_be_bytes())),
        ),
        "encrypted qcow2 images are refused",
    ));
    corpus.push((
        made(
            "aes.img",
            &[
                "-f",
                "qcow2",
                secret,
                "-o",
                "compat=0.10,encrypt.format=aes,encrypt.key-secret=s0",
            ],
            &|| {
                qcow2_edited(|h: &mut Vec<u8>| {
                    h[4..8].copy_from_slice(&2u32.to_be_bytes());
                    h[32..36].copy_from_slice(&1u32.to_be_bytes());
                })
            },
        ),
        "encrypted qcow2 images are refused",
    ));
    corpus.push((
        made(
            "luks.raw",
            &["-f", "luks", secret, "-o", "key-secret=s0"],
            &|| magic_at(0, b"LUKS\xba\xbe\x00\x01"),
        ),
        "LUKS-encrypted images are refused",
    ));
    // LUKS2 as cryptsetup writes it, where cryptsetup is installed.
    if Command::new("cryptsetup").arg("--version").output().is_ok() {
        let file = path("luks2.qcow2");
        std::fs::File::create(&file)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let mut child = Command::new("cryptsetup")
            .args([
                "luksFormat",
                "--type",
                "luks2",
                "-q",
                "--pbkdf-memory",
                "32768",
                "--key-file=-",
            ])
            .arg(&file)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"hunter2").unwrap();
        assert!(child.wait().unwrap().success(), "cryptsetup luksFormat");
        corpus.push((file, "LUKS-encrypted images are refused"));
    } else {
        println!("cryptsetup is not installed: LUKS2 comes from qemu-img's LUKS1 header only");
    }
    for (name, format, by_hand, why) in [
        (
            "vmdk.qcow2",
            "vmdk",
            magic_at(0, b"KDMV"),
            "vmdk images are not supported",
        ),
        (
            "vhdx.raw",
            "vhdx",
            magic_at(0, b"vhdxfile"),
            "vhdx images are not supported",
        ),
        (
            "vpc.img",
            "vpc",
            magic_at(0, b"conectix"),
            "vpc images are not supported",
        ),
        (
            "qed.qcow2",
            "qed",
            magic_at(0, b"QED\0"),
            "qed images are not supported",
        ),
        (
            "vdi.raw",
            "vdi",
            magic_at(64, b"\x7f\x10\xda\xbe"),
            "vdi images are not supported",
        ),
        (
            "parallels.img",
            "parallels",
            magic_at(0, b"WithouFreSpacExt"),
            "parallels images are not supported",
        ),
        (
            "qcow1.qcow2",
            "qcow",
            {
                let mut h = qcow2_by_hand();
                h[4..8].copy_from_slice(&1u32.to_be_bytes());
                h
            },
            "qcow2 version 1 is not supported",
        ),
    ] {
        corpus.push((made(name, &["-f", format], &|| by_hand.clone()), why));
    }
    // A VMDK descriptor names its extents by path: this one, the host's shadow file.
    let descriptor = path("descriptor.img");
    std::fs::write(
        &descriptor,
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\nRW 2048 FLAT \"/etc/shadow\" 0\n",
    )
    .unwrap();
    corpus.push((descriptor, "vmdk images are not supported"));
    // QEMU reads these formats but qemu-img does not make them.
    for (name, bytes, why) in [
        ("bochs.raw", magic_at(0, b"Bochs Virtual HD Image\0"), "bochs images are not supported"),
        (
            "cloop.img",
            magic_at(0, b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"),
            "cloop images are not supported",
        ),
        ("parallels-old.raw", magic_at(0, b"WithoutFreeSpace"), "parallels images are not supported"),
    ] {
        std::fs::write(path(name), bytes).unwrap();
        corpus.push((path(name), why));
    }
    // The real qcow2 edited by hand: flags, sizes, lengths.
    let edited = |name: &str, edit: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = base_bytes.clone();
        edit(&mut bytes);
        std::fs::write(path(name), bytes).unwrap();
        path(name)
    };
    let set64 =
        |at: usize, v: u64| move |b: &mut Vec<u8>| b[at..at + 8].copy_from_slice(&v.to_be_bytes());
    let flag = |bit: u64| {
        move |b: &mut Vec<u8>| {
            let old = u64::from_be_bytes(b[72..80].try_into().unwrap());
            b[72..80].copy_from_slice(&(old | bit).to_be_bytes());
        }
    };
    corpus.push((edited("unknown-bit.qcow2", &flag(1 << 5)), "bits 0x20"));
    corpus.push((
        edited("high-bit.img", &flag(1 << 63)),
        "bits 0x8000000000000000",
    ));
    corpus.push((edited("corrupt.qcow2", &flag(1 << 1)), "marked corrupt"));
    corpus.push((
        edited("datafile-bit.raw", &flag(1 << 2)),
        "external data file",
    ));
    corpus.push((edited("size0.qcow2", &set64(24, 0)), "virtual size 0 bytes"));
    corpus.push((
        edited("size-huge.qcow2", &set64(24, 1 << 60)),
        "not between 1 byte and 1 PiB",
    ));
    corpus.push((
        edited("version4.qcow2", &|b| {
            b[4..8].copy_from_slice(&4u32.to_be_bytes())
        }),
        "qcow2 version 4 is not supported",
    ));
    corpus.push((edited("cut50.qcow2", &|b| b.truncate(50)), "truncated"));
    corpus.push((edited("cut100.img", &|b| b.truncate(100)), "truncated"));
    corpus.push((
        edited("cluster-bits.qcow2", &|b| {
            b[20..24].copy_from_slice(&40u32.to_be_bytes())
        }),
        "cluster_bits 40",
    ));
    corpus
}

#[test]
fn a_corpus_of_hostile_images_is_refused_and_changes_nothing() {
    let agent = agent_with("");
    let files = tempfile::tempdir().unwrap();
    let corpus = hostile_corpus(files.path());
    let rt = common::runtime();
    rt.block_on(async {
        let mut images = Images::new(hvctl::client::connect(&agent.socket).await.unwrap());
        for (i, (file, why)) in corpus.iter().enumerate() {
            let status = images
                .import(local(&format!("hostile-{i}"), file))
                .await
                .unwrap_err();
            let shown = file.display();
            assert_eq!(status.code(), Code::InvalidArgument, "{shown}: {status:?}");
            assert!(
                status.message().starts_with("source_path: "),
                "{shown}: {}",
                status.message()
            );
            assert!(
                status.message().contains(why),
                "{shown}: {}",
                status.message()
            );
            assert_eq!(stored(&agent), Vec::<String>::new(), "{shown}");
        }
        // The same refusals over a URL: the content decides there too.
        let server = Server::start(files.path());
        for (i, (file, why)) in corpus.iter().enumerate() {
            let name = file.file_name().unwrap().to_str().unwrap();
            let status = images
                .import(remote(
                    &format!("url-{i}"),
                    &server.url(&format!("file/{name}")),
                ))
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
            assert!(
                status.message().starts_with("source_url: "),
                "{name}: {}",
                status.message()
            );
            assert!(
                status.message().contains(why),
                "{name}: {}",
                status.message()
            );
            assert_eq!(stored(&agent), Vec::<String>::new(), "{name}");
        }
        let tried = 2 * corpus.len();
        println!(
            "hostile images tried: {tried} ({} files, each by path and by URL), all refused",
            corpus.len()
        );
        // One audit line per refused import, each naming its image.
        let audits = common::wait_for(Duration::from_secs(5), "an audit line per import", || {
            let a = import_audits(&agent);
            (a.len() >= tried).then_some(a)
        });
        assert_eq!(audits.len(), tried);
        assert!(
            audits.iter().all(|a| a["result"] == "INVALID_ARGUMENT"),
            "{audits:?}"
        );
        // A real raw image named like a qcow2 is imported as what it is.
        let raw = files.path().join("really-raw.qcow2");
        std::fs::write(&raw, vec![0x33u8; 1 << 20]).unwrap();
        let image = images
            .import(local("raw", &raw))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(image.format, "raw");
        assert_eq!(image.virtual_size_bytes, 1 << 20);
        assert_eq!(stored(&agent), ["raw"]);
    });
}

#[test]
fn local_sources_that_would_block_or_lead_elsewhere_are_refused_at_once() {
    let agent = agent_with("");
    let files = tempfile::tempdir().unwrap();
    let real = files.path().join("real.img");
    std::fs::write(&real, vec![1u8; 1 << 20]).unwrap();
    let fifo = files.path().join("fifo.qcow2");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let link = files.path().join("link.raw");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let cases = [
        (fifo, "is not a regular file"),
        (PathBuf::from("/dev/zero"), "is not a regular file"),
        (PathBuf::from("/dev/null"), "is not a regular file"),
        (files.path().to_path_buf(), "is not a regular file"),
        (link, "is a symbolic link"),
    ];
    let rt = common::runtime();
    rt.block_on(async {
        let mut images = Images::new(hvctl::client::connect(&agent.socket).await.unwrap());
        for (source, why) in cases {
            // A regression that blocks on the FIFO fails here instead of hanging the test.
            let status =
                tokio::time::timeout(Duration::from_secs(10), images.import(local("x", &source)))
                    .await
                    .unwrap_or_else(|_| panic!("{}: no answer within 10 s", source.display()))
                    .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert_eq!(
                status.message().split(" (").next().unwrap(),
                format!("source_path: {} {why}", source.display())
            );
            assert_eq!(stored(&agent), Vec::<String>::new());
        }
    });
}

/// A small HTTP server for URLs that misbehave; one thread per connection, each ends when the
/// client goes away.
///   /file/NAME    the file NAME of the directory, with its length
///   /announce-huge  says 1 GiB, then sends nothing
///   /endless      no length, zeros until the client hangs up
///   /trickle      says 1 MiB, sends a byte a second
///   /silent       reads the request and never answers
///   /lying        says 1000 bytes, sends 4 MiB
struct Server {
    port: u16,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = dir.to_path_buf();
        std::thread::spawn(move || {
            for stream in listener.incoming().filter_map(Result::ok) {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &dir);
                });
            }
        });
        Server { port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

fn serve(mut stream: TcpStream, dir: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
    let head = |len: Option<u64>| match len {
        Some(n) => format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"),
        None => "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_string(),
    };
    match path.as_str() {
        "/announce-huge" => {
            stream.write_all(head(Some(1 << 30)).as_bytes())?;
            std::thread::sleep(Duration::from_secs(60));
        }
        "/endless" => {
            stream.write_all(head(None).as_bytes())?;
            let zeros = vec![0u8; 1 << 16];
            loop {
                stream.write_all(&zeros)?;
            }
        }
        "/trickle" => {
            stream.write_all(head(Some(1 << 20)).as_bytes())?;
            loop {
                stream.write_all(b"x")?;
                stream.flush()?;
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        "/silent" => std::thread::sleep(Duration::from_secs(60)),
        "/lying" => {
            stream.write_all(head(Some(1000)).as_bytes())?;
            stream.write_all(&vec![0x44u8; 4 << 20])?;
        }
        p => {
            let name = p.strip_prefix("/file/").unwrap_or("");
            match std::fs::read(dir.join(name)) {
                Ok(data) if !name.is_empty() && !name.contains('/') => {
                    stream.write_all(head(Some(data.len() as u64)).as_bytes())?;
                    stream.write_all(&data)?;
                }
                _ => stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?,
            }
        }
    }
    Ok(())
}

#[test]
fn url_imports_end_at_their_size_cap_and_deadline() {
    let agent = agent_with(
        "import_max_bytes = 10485760\nimport_deadline_secs = 3\nimport_min_free_bytes = 0",
    );
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("big.raw"), vec![9u8; 11 << 20]).unwrap();
    let server = Server::start(files.path());
    let rt = common::runtime();
    rt.block_on(async {
        let mut images = Images::new(hvctl::client::connect(&agent.socket).await.unwrap());
        let cases = [
            ("announce-huge", Code::FailedPrecondition, "source_url: the content is 1073741824 bytes, more than the 10485760 an import may bring ([storage] import_max_bytes)", 2),
            ("file/big.raw", Code::FailedPrecondition, "([storage] import_max_bytes)", 2),
            ("endless", Code::FailedPrecondition, "source_url: the content is longer than the 10485760 bytes an import may bring ([storage] import_max_bytes)", 5),
            ("trickle", Code::DeadlineExceeded, "source_url: the import took longer than 3 s ([storage] import_deadline_secs)", 6),
            ("silent", Code::DeadlineExceeded, "source_url: the import took longer than 3 s ([storage] import_deadline_secs)", 6),
        ];
        for (path, code, message, within) in cases {
            let began = Instant::now();
            let status = tokio::time::timeout(Duration::from_secs(30), images.import(remote("x", &server.url(path))))
                .await
                .unwrap_or_else(|_| panic!("{path}: no answer within 30 s"))
                .unwrap_err();
            let took = began.elapsed();
            assert_eq!(status.code(), code, "{path}: {status:?}");
            assert!(status.message().contains(message), "{path}: {}", status.message());
            assert!(took < Duration::from_secs(within), "{path}: took {took:?}");
            assert_eq!(stored(&agent), Vec::<String>::new(), "{path}");
        }
        // A server that sends more than it announced: only what it announced is read.
        let image = images.import(remote("lying", &server.url("lying"))).await.unwrap().into_inner();
        assert_eq!(image.file_bytes, 1000);
        assert_eq!(stored(&agent), ["lying"]);
    });
}

#[test]
fn imports_keep_the_stores_free_space() {
    // Keep 1 PiB free: no file system here has that, so every import would eat into it.
    let agent = agent_with("import_min_free_bytes = 1125899906842624");
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("small.raw"), vec![9u8; 1 << 20]).unwrap();
    let server = Server::start(files.path());
    let rt = common::runtime();
    rt.block_on(async {
        let mut images = Images::new(hvctl::client::connect(&agent.socket).await.unwrap());
        for (field, req) in [
            ("source_path", local("x", &files.path().join("small.raw"))),
            ("source_url", remote("x", &server.url("file/small.raw"))),
        ] {
            let status = images.import(req).await.unwrap_err();
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert!(
                status.message().starts_with(&format!(
                    "{field}: 1048576 bytes would leave less than 1125899906842624 bytes free"
                )),
                "{}",
                status.message()
            );
            assert!(
                status
                    .message()
                    .ends_with("([storage] import_min_free_bytes)"),
                "{}",
                status.message()
            );
            assert_eq!(stored(&agent), Vec::<String>::new());
        }
    });
}

/// `max_imports` trickling imports run on threads of their own: one more is refused at once,
/// and meanwhile List, Get and GetHealth answer within a second; when the deadline ends them,
/// their places are free again.
#[test]
fn slow_imports_do_not_hold_up_other_calls() {
    let agent = agent_with("max_imports = 2\nimport_deadline_secs = 6");
    let files = tempfile::tempdir().unwrap();
    let server = Server::start(files.path());
    let rt = common::runtime();
    rt.block_on(async {
        let channel = hvctl::client::connect(&agent.socket).await.unwrap();
        let mut images = Images::new(channel.clone());
        let mut vms = pb::vm_service_client::VmServiceClient::new(channel.clone());
        let mut node = pb::node_service_client::NodeServiceClient::new(channel.clone());
        let slow: Vec<_> = (0..2)
            .map(|i| {
                let mut images = images.clone();
                let req = remote(&format!("slow-{i}"), &server.url("trickle"));
                tokio::spawn(async move { images.import(req).await })
            })
            .collect();
        let began = Instant::now();
        loop {
            let listed = images
                .list(pb::ListImagesRequest {})
                .await
                .unwrap()
                .into_inner()
                .images;
            if listed
                .iter()
                .filter(|i| i.state == "importing" && i.bytes_received > 0)
                .count()
                == 2
            {
                break;
            }
            assert!(
                began.elapsed() < Duration::from_secs(5),
                "both imports running: {listed:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let third = images
            .import(remote("third", &server.url("trickle")))
            .await
            .unwrap_err();
        assert_eq!(third.code(), Code::ResourceExhausted, "{third:?}");
        assert!(
            third
                .message()
                .starts_with("max_imports (2) imports already running"),
            "{third:?}"
        );
        for _ in 0..3 {
            let second = Duration::from_secs(1);
            let t = Instant::now();
            tokio::time::timeout(second, images.list(pb::ListImagesRequest {}))
                .await
                .expect("ListImages within 1 s")
                .unwrap();
            tokio::time::timeout(
                second,
                images.get(pb::GetImageRequest {
                    name: "slow-0".into(),
                }),
            )
            .await
            .expect("GetImage within 1 s")
            .unwrap();
            tokio::time::timeout(second, vms.list(pb::ListVmsRequest {}))
                .await
                .expect("ListVms within 1 s")
                .unwrap();
            tokio::time::timeout(second, node.get_health(pb::GetHealthRequest {}))
                .await
                .expect("GetHealth within 1 s")
                .unwrap();
            println!(
                "List, Get, ListVms, GetHealth during {} slow imports: {:?}",
                2,
                t.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for import in slow {
            let status = import.await.unwrap().unwrap_err();
            assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        }
        assert_eq!(stored(&agent), Vec::<String>::new());
        // The threads are gone with their imports: a new one gets a place.
        std::fs::write(files.path().join("small.raw"), vec![1u8; 4096]).unwrap();
        images
            .import(remote("after", &server.url("file/small.raw")))
            .await
            .unwrap();
    });
}
