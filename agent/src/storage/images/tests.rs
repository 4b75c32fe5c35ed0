use super::*;

fn qcow2_header(size: u64, backing: bool) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    if backing {
        h[8..16].copy_from_slice(&512u64.to_be_bytes());
    }
    h[24..32].copy_from_slice(&size.to_be_bytes());
    h
}

#[test]
fn formats_come_from_content() {
    assert_eq!(
        detect(&qcow2_header(1 << 30, false)),
        Format::Qcow2 {
            virtual_size: 1 << 30,
            backing_file: false,
            incompatible: 0,
        }
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
    let e = store.delete("deb", &["vm1".to_string()]).unwrap_err();
    assert_eq!(e.to_string(), "image \"deb\" is used by vm1");
    store.delete("deb", &[]).unwrap();
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
        store.deletable("img"),
        Err(StoreError::Importing { .. })
    ));
    let content = vec![7u8; 3 << 20];
    let record = store
        .import(&ticket, &content[..], |e| panic!("{e}"), 6)
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
    store
        .import_local("c", &images.join("b/image"), None, BTreeMap::new(), 0)
        .unwrap();
    let mut swept = store.sweep();
    swept.sort();
    assert_eq!(swept, [images.join(".import-a-42"), images.join("b")]);
    assert_eq!(store.list().len(), 1, "complete images stay");
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
