use super::*;

/// Bounds that no test input reaches.
fn open_bounds() -> Bounds {
    Bounds::starting_now(ImportLimits {
        max_bytes: 1 << 40,
        deadline: Duration::from_secs(3600),
        min_free_bytes: 0,
    })
}

fn qcow2_header(size: u64, backing: bool) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    if backing {
        h[8..16].copy_from_slice(&512u64.to_be_bytes());
    }
    h[20..24].copy_from_slice(&16u32.to_be_bytes()); // 64 KiB clusters
    h[24..32].copy_from_slice(&size.to_be_bytes());
    h[100..104].copy_from_slice(&104u32.to_be_bytes()); // header length
    h
}

#[test]
fn formats_come_from_content() {
    assert_eq!(
        detect(&qcow2_header(1 << 30, false)),
        Format::Qcow2 {
            virtual_size: 1 << 30,
            version: 3,
            backing_file: false,
            crypt_method: 0,
            cluster_bits: 16,
            incompatible: 0,
            truncated: false,
        }
    );
    assert_eq!(
        accept(detect(&qcow2_header(1 << 30, false)), 512),
        Ok(("qcow2", 1 << 30))
    );
    assert_eq!(detect(b"KDMV...."), Format::Other("vmdk"));
    assert_eq!(detect(b"vhdxfile"), Format::Other("vhdx"));
    assert_eq!(detect(&[0u8; 512]), Format::Raw);
    let mut vdi = vec![0u8; 512];
    vdi[64..68].copy_from_slice(&[0x7f, 0x10, 0xda, 0xbe]);
    assert_eq!(detect(&vdi), Format::Other("vdi"));
}

#[test]
fn names_cannot_leave_the_store() {
    for bad in [
        "",
        "../etc",
        "a/b",
        ".hidden",
        "A",
        "x y",
        "-x",
        &"a".repeat(65),
    ] {
        assert!(check_name("name", bad).is_err(), "{bad:?}");
    }
    for good in ["debian-12", "a", "img_1.2", &"a".repeat(64)] {
        assert!(check_name("name", good).is_ok(), "{good:?}");
    }
}

#[test]
fn import_get_list_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::new(dir.path());
    let src = dir.path().join("src.qcow2");
    std::fs::write(&src, qcow2_header(2 << 30, false)).unwrap();
    let props = BTreeMap::from([("min_disk".to_string(), "5".to_string())]);
    let r = store
        .import_local("deb", &src, None, props.clone(), 7)
        .unwrap();
    assert_eq!(r.format, "qcow2");
    assert_eq!(r.virtual_size_bytes, 2 << 30);
    assert_eq!(r.min_disk_gb(), 5);
    assert_eq!(store.get("deb").unwrap(), r);
    // Same content again: the same record; other content under the name: refused.
    assert_eq!(store.import_local("deb", &src, None, props, 8).unwrap(), r);
    let other = dir.path().join("other.img");
    std::fs::write(&other, b"raw bytes").unwrap();
    assert!(matches!(
        store.import_local("deb", &other, None, BTreeMap::new(), 9),
        Err(StoreError::Exists { .. })
    ));
    let raw = store
        .import_local("raw", &other, Some(&r.sha256), BTreeMap::new(), 9)
        .unwrap_err();
    assert!(
        raw.to_string()
            .starts_with("sha256: the content's sha256 is "),
        "{raw}"
    );
    assert_eq!(
        store
            .list()
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>(),
        ["deb"]
    );
    let e = store
        .begin_delete("deb")
        .unwrap()
        .remove(&["vm1".to_string()])
        .unwrap_err();
    assert_eq!(e.to_string(), "image \"deb\" is used by vm1");
    store.begin_delete("deb").unwrap().remove(&[]).unwrap();
    assert!(matches!(store.get("deb"), Err(StoreError::NotFound(_))));
    // Nothing left behind, not even temporary files.
    assert_eq!(
        std::fs::read_dir(dir.path().join("images"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn hostile_images_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::new(dir.path());
    let backed = dir.path().join("backed.qcow2");
    std::fs::write(&backed, qcow2_header(1 << 30, true)).unwrap();
    let e = store
        .import_local("b", &backed, None, BTreeMap::new(), 0)
        .unwrap_err();
    assert!(e.to_string().contains("backing file"), "{e}");
    let vmdk = dir.path().join("x.qcow2");
    std::fs::write(&vmdk, b"KDMV0000").unwrap();
    let e = store
        .import_local("v", &vmdk, None, BTreeMap::new(), 0)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "source_path: vmdk images are not supported: convert to qcow2 or raw"
    );
    let e = store
        .import_local("d", dir.path(), None, BTreeMap::new(), 0)
        .unwrap_err();
    assert!(e.to_string().ends_with("is not a regular file"), "{e}");
    let props = BTreeMap::from([("hw_disk_bus".to_string(), "ide".to_string())]);
    let e = store.import_local("p", &vmdk, None, props, 0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "properties: hw_disk_bus: must be virtio, scsi or sata, got \"ide\""
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("images"))
            .unwrap()
            .count(),
        0
    );
}

/// The firmware properties are checked at import, together: a bad combination is refused
/// with the property and the rule and stores nothing; a good one is kept as given.
#[test]
fn firmware_properties_are_checked_at_import() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::new(dir.path());
    let file = dir.path().join("disk.qcow2");
    std::fs::write(&file, qcow2_header(1 << 30, false)).unwrap();
    let props = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    for (pairs, message) in [
        (
            &[("hw_firmware_type", "bios"), ("os_secure_boot", "required")][..],
            "properties: os_secure_boot: required needs hw_firmware_type uefi: Secure Boot is a UEFI feature",
        ),
        (
            &[("hw_firmware_type", "efi")][..],
            "properties: hw_firmware_type: must be bios or uefi, got \"efi\"",
        ),
        (
            &[("hw_tpm_model", "tpm-crb")][..],
            "properties: hw_tpm_model: needs hw_tpm_version 2.0: a TPM model without a version asks for no TPM",
        ),
    ] {
        let e = store
            .import_local("fw", &file, None, props(pairs), 0)
            .unwrap_err();
        assert_eq!(e.to_string(), message);
        assert!(store.get("fw").is_err(), "nothing stored for {pairs:?}");
    }
    let good = props(&[
        ("hw_firmware_type", "uefi"),
        ("os_secure_boot", "required"),
        ("hw_tpm_version", "2.0"),
        ("hw_tpm_model", "tpm-crb"),
    ]);
    let record = store
        .import_local("fw", &file, None, good.clone(), 0)
        .unwrap();
    assert_eq!(record.properties, good);
}

#[test]
fn one_import_per_name_and_progress_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::new(dir.path());
    let begin = |sha: Option<&str>| {
        store.begin(
            "img",
            sha,
            BTreeMap::new(),
            "source_url",
            "http://h/x".into(),
            5,
        )
    };
    let Ok(Begun::Started(ticket)) = begin(None) else {
        panic!("first import starts");
    };
    let e = begin(None).err().unwrap();
    assert_eq!(
        e.to_string(),
        "image \"img\" is being imported from http://h/x"
    );
    assert!(matches!(
        store.begin_delete("img"),
        Err(StoreError::Importing { .. })
    ));
    let content = vec![7u8; 3 << 20];
    let record = store
        .import(&ticket, &content[..], |e| panic!("{e}"), &open_bounds(), 6)
        .unwrap();
    assert_eq!(ticket.progress.received.load(Ordering::Relaxed), 3 << 20);
    assert_eq!(store.importing().len(), 1, "shown until the ticket goes");
    drop(ticket);
    assert!(store.importing().is_empty());
    assert_eq!(record.format, "raw");
    // With the stored sha256 the image is there without reading anything; another
    // sha256 is refused before reading anything.
    let Ok(Begun::Existing(again)) = begin(Some(&record.sha256.to_uppercase())) else {
        panic!("same content: existing image");
    };
    assert_eq!(again, record);
    let other = "0".repeat(64);
    assert!(matches!(
        begin(Some(&other)),
        Err(StoreError::Exists { .. })
    ));
    assert!(store.importing().is_empty());
}

#[test]
fn a_cut_download_leaves_nothing_and_sweep_removes_crash_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::new(dir.path());
    let Ok(Begun::Started(ticket)) =
        store.begin("img", None, BTreeMap::new(), "source_url", "u".into(), 0)
    else {
        panic!("starts");
    };
    let cut = std::io::Read::chain(
        &[1u8; 1000][..],
        FailingReader, // the connection drops after 1000 bytes
    );
    let e = store
        .import(
            &ticket,
            cut,
            |e| StoreError::Fetch {
                url: "u".into(),
                reason: e.to_string(),
                retryable: true,
            },
            &open_bounds(),
            0,
        )
        .unwrap_err();
    assert_eq!(e.to_string(), "source_url: u: connection reset");
    assert_eq!(
        std::fs::read_dir(dir.path().join("images"))
            .unwrap()
            .count(),
        0
    );
    // What a killed agent leaves: a partial file and a directory without a record.
    let images = dir.path().join("images");
    std::fs::write(images.join(".import-a-42"), b"partial").unwrap();
    std::fs::create_dir(images.join("b")).unwrap();
    std::fs::write(images.join("b/image"), b"x").unwrap();
    // Not an import's: a directory holding something an import never writes stays.
    std::fs::create_dir(images.join("backup")).unwrap();
    std::fs::write(images.join("backup/notes.txt"), b"operator's").unwrap();
    store
        .import_local("c", &images.join("b/image"), None, BTreeMap::new(), 0)
        .unwrap();
    let mut swept = store.sweep();
    swept.sort();
    assert_eq!(swept, [images.join(".import-a-42"), images.join("b")]);
    assert_eq!(store.list().len(), 1, "complete images stay");
    assert!(images.join("backup/notes.txt").is_file());
}

struct FailingReader;

impl Read for FailingReader {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("connection reset"))
    }
}

#[test]
fn qcow2_feature_bits_decide_what_is_refused() {
    let mut h = qcow2_header(1 << 30, false);
    h[72..80].copy_from_slice(&((1u64 << 2) | 1).to_be_bytes());
    let Format::Qcow2 { incompatible, .. } = detect(&h) else {
        panic!("qcow2")
    };
    assert_eq!(incompatible, 0b101);
    for (backing, bits, refused) in [
        (false, 0, None),
        // Dirty (lazy refcounts), compression type, extended L2: the data stays in the file.
        (false, 0b1_1001, None),
        (true, 0, Some("backing file")),
        (false, 0b100, Some("external data file")),
        (false, 0b10, Some("marked corrupt")),
        (false, 1 << 5, Some("bits 0x20")),
        (false, 1 << 63, Some("bits 0x8000000000000000")),
    ] {
        let got = qcow2_refusal(backing, bits);
        match refused {
            None => assert_eq!(got, None, "{bits:#x}"),
            Some(why) => assert!(got.as_deref().is_some_and(|g| g.contains(why)), "{got:?}"),
        }
    }
    // A version 2 header has no feature fields: what lies at offset 72 is not read as bits.
    let mut v2 = qcow2_header(1 << 30, false);
    v2[4..8].copy_from_slice(&2u32.to_be_bytes());
    v2[72..80].copy_from_slice(&u64::MAX.to_be_bytes());
    assert!(matches!(
        detect(&v2),
        Format::Qcow2 {
            incompatible: 0,
            ..
        }
    ));
}

/// A real qcow2 whose data lives in a host file (qemu-img's data_file option) is refused at
/// import, and the store keeps nothing of it.
#[test]
fn an_image_with_an_external_data_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let host_file = dir.path().join("host-secret");
    std::fs::write(&host_file, vec![7u8; 1 << 20]).unwrap();
    let image = dir.path().join("tenant.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-f", "qcow2", "-o"])
        .arg(format!(
            "data_file={},data_file_raw=on",
            host_file.display()
        ))
        .arg(&image)
        .arg("1M")
        .output()
        .expect("qemu-img (make test installs qemu-utils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = ImageStore::new(&dir.path().join("store"));
    let e = store
        .import_local("tenant", &image, None, BTreeMap::new(), 0)
        .unwrap_err();
    assert!(e.to_string().contains("external data file"), "{e}");
    assert!(store.get("tenant").is_err());
    assert!(store.list().is_empty());
}

/// Headers of formats and qcow2 variants QEMU would read in ways the agent cannot vouch for:
/// each is refused with its reason; plain raw content that merely looks like text is not.
#[test]
fn hostile_headers_are_refused_with_their_reason() {
    let at = |offset: usize, bytes: &[u8]| {
        let mut h = vec![0u8; 512];
        h[offset..offset + bytes.len()].copy_from_slice(bytes);
        h
    };
    let qcow2 = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut h = qcow2_header(1 << 30, false);
        edit(&mut h);
        h
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "luks",
            at(0, b"LUKS\xba\xbe\x00\x02"),
            "LUKS-encrypted images are refused",
        ),
        (
            "qcow2 aes",
            qcow2(&|h| h[32..36].copy_from_slice(&1u32.to_be_bytes())),
            "encrypted qcow2 images are refused",
        ),
        (
            "qcow2 luks",
            qcow2(&|h| h[32..36].copy_from_slice(&2u32.to_be_bytes())),
            "encrypted qcow2 images are refused",
        ),
        (
            "qcow v1",
            qcow2(&|h| h[4..8].copy_from_slice(&1u32.to_be_bytes())),
            "qcow2 version 1 is not supported",
        ),
        (
            "qcow2 v4",
            qcow2(&|h| h[4..8].copy_from_slice(&4u32.to_be_bytes())),
            "qcow2 version 4 is not supported",
        ),
        (
            "cut at 50",
            qcow2_header(1 << 30, false)[..50].to_vec(),
            "truncated",
        ),
        (
            "v3 cut at 100",
            qcow2_header(1 << 30, false)[..100].to_vec(),
            "truncated",
        ),
        (
            "v3 header says 112, 108 given",
            qcow2(&|h| {
                h[100..104].copy_from_slice(&112u32.to_be_bytes());
                h.truncate(108);
            }),
            "truncated",
        ),
        ("size 0", qcow2_header(0, false), "virtual size 0 bytes"),
        (
            "size 2^60",
            qcow2_header(1 << 60, false),
            "not between 1 byte and 1 PiB",
        ),
        (
            "cluster bits 40",
            qcow2(&|h| h[20..24].copy_from_slice(&40u32.to_be_bytes())),
            "cluster_bits 40",
        ),
        (
            "parallels",
            at(0, b"WithoutFreeSpace"),
            "parallels images are not supported",
        ),
        (
            "parallels ext",
            at(0, b"WithouFreSpacExt"),
            "parallels images are not supported",
        ),
        ("bochs", at(0, b"Bochs Virtual HD Image\0"), "bochs images"),
        (
            "cloop",
            at(0, b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop"),
            "cloop images",
        ),
        ("vmdk3", at(0, b"COWD"), "vmdk images"),
        (
            "vmdk descriptor",
            b"# Disk DescriptorFile\n\nversion=1\nRW 2048 FLAT \"/etc/shadow\" 0\n".to_vec(),
            "vmdk images",
        ),
        ("vdi", at(64, b"\x7f\x10\xda\xbe"), "vdi images"),
        ("qed", at(0, b"QED\0"), "qed images"),
        ("vpc", at(0, b"conectix"), "vpc images"),
        ("empty", Vec::new(), "the content is empty"),
    ];
    for (what, bytes, why) in cases {
        let got = accept(detect(&bytes), bytes.len() as u64);
        assert!(
            got.as_ref().is_err_and(|e| e.contains(why)),
            "{what}: {got:?}"
        );
    }
    for raw in [
        &b"# a comment\nversion=9\n"[..],
        b"#!/bin/sh\necho hi\n",
        b"QFI",
        &[0u8; 4096],
    ] {
        assert_eq!(
            accept(detect(raw), raw.len() as u64),
            Ok(("raw", raw.len() as u64))
        );
    }
}

/// Runs `f` on a thread and fails the test if it takes more than 10 s (a FIFO that blocks the
/// import would otherwise hang the test).
fn promptly<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the import came back within 10 s")
}

#[test]
fn sources_that_would_block_or_lead_elsewhere_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.img");
    std::fs::write(&real, vec![1u8; 4096]).unwrap();
    let fifo = dir.path().join("fifo.img");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let link = dir.path().join("link.img");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let cases = [
        (fifo, "is not a regular file"),
        (PathBuf::from("/dev/zero"), "is not a regular file"),
        (PathBuf::from("/dev/null"), "is not a regular file"),
        (dir.path().to_path_buf(), "is not a regular file"),
        (link, "is a symbolic link (give the file it points to)"),
    ];
    let root = dir.path().join("root");
    for (source, why) in cases {
        let root = root.clone();
        let shown = source.display().to_string();
        let e = promptly(move || {
            ImageStore::new(&root).import_local("x", &source, None, BTreeMap::new(), 0)
        })
        .unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::Invalid {
                    field: "source_path",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.to_string(), format!("source_path: {shown} {why}"));
    }
    assert!(ImageStore::new(&root).list().is_empty());
}

/// A reader that gives `len` bytes (or without end), pausing `pause` before each read.
struct Endless {
    left: Option<u64>,
    pause: Duration,
}

impl Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(self.pause);
        let n = self
            .left
            .map_or(buf.len() as u64, |l| l.min(buf.len() as u64)) as usize;
        if let Some(l) = self.left.as_mut() {
            *l -= n as u64;
        }
        buf[..n].fill(0x5a);
        Ok(n)
    }
}

fn images_left(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("images"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn imports_stop_at_their_size_cap_deadline_and_kept_free_space() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::new(dir.path());
    let limits = ImportLimits {
        max_bytes: 4 << 20,
        deadline: Duration::from_secs(3600),
        min_free_bytes: 0,
    };
    let start = |total: u64| {
        let Ok(Begun::Started(ticket)) =
            store.begin("img", None, BTreeMap::new(), "source_url", "u".into(), 0)
        else {
            panic!("starts");
        };
        ticket.progress.total.store(total, Ordering::Relaxed);
        ticket
    };
    let run = |ticket: &ImportTicket, input: Endless, limits: ImportLimits| {
        let e = store
            .import(
                ticket,
                input,
                |e| panic!("{e}"),
                &Bounds::starting_now(limits),
                0,
            )
            .unwrap_err();
        assert!(
            images_left(dir.path()).is_empty(),
            "{e}: {:?}",
            images_left(dir.path())
        );
        e
    };
    let quick = |left: Option<u64>| Endless {
        left,
        pause: Duration::ZERO,
    };
    // Announced above the cap: refused before a byte is read.
    let e = run(
        &start(5 << 20),
        Endless {
            left: Some(0),
            pause: Duration::ZERO,
        },
        limits,
    );
    assert!(
        matches!(
            e,
            StoreError::Limit {
                kind: LimitKind::TooLarge,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "source_url: the content is 5242880 bytes, more than the 4194304 an import may bring ([storage] import_max_bytes)"
    );
    // Not announced (or announced short): cut where it passes the cap.
    let ticket = start(0);
    let e = run(&ticket, quick(None), limits);
    assert!(
        matches!(
            e,
            StoreError::Limit {
                kind: LimitKind::TooLarge,
                ..
            }
        ),
        "{e}"
    );
    assert!(ticket.progress.received.load(Ordering::Relaxed) <= 4 << 20);
    drop(ticket);
    // Exactly the cap is fine.
    let ticket = start(0);
    store
        .import(
            &ticket,
            quick(Some(4 << 20)),
            |e| panic!("{e}"),
            &Bounds::starting_now(limits),
            0,
        )
        .unwrap();
    drop(ticket);
    store.begin_delete("img").unwrap().remove(&[]).unwrap();
    // A trickle ends at the deadline.
    let short = ImportLimits {
        deadline: Duration::from_millis(300),
        ..limits
    };
    let begun = Instant::now();
    let e = run(
        &start(0),
        Endless {
            left: None,
            pause: Duration::from_millis(100),
        },
        short,
    );
    assert!(
        matches!(
            e,
            StoreError::Limit {
                kind: LimitKind::Deadline,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().ends_with("([storage] import_deadline_secs)"),
        "{e}"
    );
    assert!(begun.elapsed() < Duration::from_secs(2));
    // Free space: an announced length that would eat into what is kept is refused before
    // reading; an unannounced one stops once the free space falls under it.
    let free = store.free_bytes().unwrap();
    let keep_all = ImportLimits {
        min_free_bytes: free,
        max_bytes: 1 << 40,
        ..limits
    };
    let e = run(&start(1 << 20), quick(Some(0)), keep_all);
    assert!(
        matches!(
            e,
            StoreError::Limit {
                kind: LimitKind::NoSpace,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("would leave less than"), "{e}");
    let keep_most = ImportLimits {
        min_free_bytes: free - (8 << 20),
        max_bytes: 1 << 40,
        ..limits
    };
    let ticket = start(0);
    let e = run(&ticket, quick(Some(256 << 20)), keep_most);
    assert!(
        matches!(
            e,
            StoreError::Limit {
                kind: LimitKind::NoSpace,
                ..
            }
        ),
        "{e}"
    );
    assert!(ticket.progress.received.load(Ordering::Relaxed) < 64 << 20);
}

/// An image whose record cannot be read may be the base of running guests: a re-import under
/// its name is refused, naming the record, and neither it nor the start-up sweep removes it.
#[test]
fn an_image_with_an_unreadable_record_is_never_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::new(dir.path());
    let src = dir.path().join("a.raw");
    std::fs::write(&src, vec![3u8; 8192]).unwrap();
    store
        .import_local("base", &src, None, BTreeMap::new(), 0)
        .unwrap();
    let record = dir.path().join("images/base/record.json");
    assert!(!dir.path().join("images/base/record.json.tmp").exists());
    std::fs::write(&record, b"{ not json").unwrap();
    let other = dir.path().join("b.raw");
    std::fs::write(&other, vec![4u8; 8192]).unwrap();
    let e = store
        .import_local("base", &other, None, BTreeMap::new(), 1)
        .unwrap_err();
    assert!(matches!(e, StoreError::Unreadable { .. }), "{e}");
    assert!(e.to_string().contains(&record.display().to_string()), "{e}");
    assert!(store.sweep().is_empty());
    assert_eq!(std::fs::read(store.file("base")).unwrap(), vec![3u8; 8192]);
    assert_eq!(images_left(dir.path()), ["base"]);
    // A directory whose record is missing is an interrupted import: swept, and an import
    // under its name starts afresh.
    std::fs::remove_file(&record).unwrap();
    let r = store
        .import_local("base", &other, None, BTreeMap::new(), 2)
        .unwrap();
    assert_eq!(store.get("base").unwrap(), r);
    assert_eq!(std::fs::read(store.file("base")).unwrap(), vec![4u8; 8192]);
    // A directory with other files (an operator's backup) is no interrupted import: neither
    // the sweep nor an import under its name touches it.
    let backup = dir.path().join("images/backup");
    std::fs::create_dir(&backup).unwrap();
    std::fs::write(backup.join("readme.txt"), b"kept").unwrap();
    assert!(store.sweep().is_empty());
    let e = store
        .import_local("backup", &other, None, BTreeMap::new(), 3)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("holds files that are not an image's"),
        "{e}"
    );
    assert_eq!(std::fs::read(backup.join("readme.txt")).unwrap(), b"kept");
    assert_eq!(
        images_left(dir.path()).len(),
        2,
        "base and backup, no partial file"
    );
}

#[test]
fn creates_in_flight_and_deletes_exclude_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::new(dir.path());
    let src = dir.path().join("a.raw");
    std::fs::write(&src, vec![3u8; 512]).unwrap();
    store
        .import_local("img", &src, None, BTreeMap::new(), 0)
        .unwrap();
    let first = store.hold("img", "uuid-1").unwrap();
    let second = store.hold("img", "uuid-2").unwrap();
    let e = store.begin_delete("img").unwrap_err();
    assert!(matches!(e, StoreError::InUse { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "image \"img\" is used by a create in flight for uuid-1, uuid-2"
    );
    drop(first);
    let e = store.begin_delete("img").unwrap_err();
    assert!(e.to_string().ends_with("for uuid-2"), "{e}");
    drop(second);
    let deletion = store.begin_delete("img").unwrap();
    let e = store.hold("img", "uuid-3").unwrap_err();
    assert_eq!(e.to_string(), "image \"img\" is being deleted");
    assert!(matches!(
        store.begin_delete("img"),
        Err(StoreError::Deleting(_))
    ));
    // A delete that does not go through (guests use the image) lets creates hold it again.
    assert!(deletion.remove(&["vm".into()]).is_err());
    drop(store.hold("img", "uuid-3").unwrap());
    store.begin_delete("img").unwrap().remove(&[]).unwrap();
    assert!(store.get("img").is_err());
}

#[test]
fn produced_content_is_checked_and_placed_as_an_import_and_a_failure_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::new(dir.path());
    let begin = |name: &str| {
        let Ok(Begun::Started(ticket)) = store.begin(
            name,
            None,
            BTreeMap::from([("min_disk".to_string(), "1".to_string())]),
            "image",
            "guest x".into(),
            0,
        ) else {
            panic!("starts");
        };
        ticket
    };
    let content = qcow2_header(1 << 30, false);
    let ticket = begin("snap");
    let record = store
        .produce(
            &ticket,
            content.len() as u64,
            &open_bounds(),
            |tmp| std::fs::write(tmp, &content).map_err(io(tmp, "write")),
            7,
        )
        .unwrap();
    assert_eq!(record.format, "qcow2");
    assert_eq!(record.virtual_size_bytes, 1 << 30);
    assert_eq!(record.file_bytes, content.len() as u64);
    assert_eq!(record.sha256, hex(&Sha256::digest(&content)));
    assert_eq!(record.min_disk_gb(), 1);
    assert_eq!(store.get("snap").unwrap(), record);
    assert_eq!(std::fs::read(store.file("snap")).unwrap(), content);
    drop(ticket);
    assert_eq!(images_left(dir.path()), ["snap"]);

    // A qcow2 with a backing file is refused like an imported one, and nothing stays.
    let ticket = begin("backed");
    let e = store
        .produce(
            &ticket,
            512,
            &open_bounds(),
            |tmp| std::fs::write(tmp, qcow2_header(1 << 30, true)).map_err(io(tmp, "write")),
            0,
        )
        .unwrap_err();
    assert!(e.to_string().starts_with("image: "), "{e}");
    // `make` failing after writing part of the file: nothing stays either.
    let e = store
        .produce(
            &ticket,
            512,
            &open_bounds(),
            |tmp| {
                std::fs::write(tmp, b"half").map_err(io(tmp, "write"))?;
                Err(StoreError::NotFound("injected".into()))
            },
            0,
        )
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound(_)), "{e}");
    // More than the kept free space allows: refused before `make` runs.
    let tight = Bounds::starting_now(ImportLimits {
        min_free_bytes: u64::MAX / 2,
        ..ImportLimits::default()
    });
    let e = store
        .produce(
            &ticket,
            512,
            &tight,
            |_| -> Result<(), StoreError> { panic!("make ran") },
            0,
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Limit {
                kind: LimitKind::NoSpace,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(images_left(dir.path()), ["snap"]);
}
