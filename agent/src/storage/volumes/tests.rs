use super::*;

fn spec(name: &str, size_gb: u64) -> VolumeSpec {
    VolumeSpec {
        name: name.into(),
        size_gb,
        ..VolumeSpec::default()
    }
}

fn field(e: VolumeError) -> &'static str {
    match e {
        VolumeError::Invalid { field, .. } => field,
        other => panic!("not an invalid field: {other}"),
    }
}

fn info(path: &Path) -> serde_json::Value {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn bad_requests_name_their_field_and_leave_nothing() {
    let root = tempfile::tempdir().unwrap();
    let store = VolumeStore::new(root.path());
    let mut raw_shared_qcow2 = spec("v", 1);
    raw_shared_qcow2.shareable = true;
    let mut odd_format = spec("v", 1);
    odd_format.format = "vmdk".into();
    let mut source_and_size = spec("v", 1);
    source_and_size.source = "/dev/null".into();
    let mut qcow2_external = spec("v", 0);
    qcow2_external.source = "nbd://h/e".into();
    qcow2_external.format = "qcow2".into();
    let cases = [
        (spec("../x", 1), "name"),
        (spec("Upper", 1), "name"),
        (spec("", 1), "name"),
        (spec("v", 0), "size_gb"),
        (spec("v", MAX_SIZE_GB + 1), "size_gb"),
        (odd_format, "format"),
        (raw_shared_qcow2, "shareable"),
        (source_and_size, "source"),
        (qcow2_external, "format"),
    ];
    for (s, want) in cases {
        assert_eq!(field(store.create(&s, 1).unwrap_err()), want, "{s:?}");
    }
    assert!(!root.path().join("volumes").exists() || store.list().0.is_empty());
}

#[test]
fn nbd_uris() {
    let nbd = |h: &str, p: u16, e: &str| VolumeSource::Nbd {
        host: h.into(),
        port: p,
        export: e.into(),
    };
    assert_eq!(
        parse_nbd("nbd://host/exp").unwrap(),
        nbd("host", 10809, "exp")
    );
    assert_eq!(
        parse_nbd("nbd://10.0.0.1:10900/a/b").unwrap(),
        nbd("10.0.0.1", 10900, "a/b")
    );
    assert_eq!(parse_nbd("nbd://[::1]:99/x").unwrap(), nbd("::1", 99, "x"));
    for bad in [
        "nbd://host",
        "nbd://host/",
        "nbd:///exp",
        "nbd://host:0/e",
        "nbd://host:99999/e",
        "nbd://ho st/e",
        "nbd://h/e x",
        "http://h/e",
        "nbd://[::1/x",
    ] {
        assert_eq!(field(parse_nbd(bad).unwrap_err()), "source", "{bad}");
    }
}

#[test]
fn blank_volumes_in_both_formats_with_records() {
    let root = tempfile::tempdir().unwrap();
    let store = VolumeStore::new(root.path());
    let q = store.create(&spec("data-1", 2), 100).unwrap();
    assert_eq!(q.format, "qcow2");
    assert_eq!(q.size_bytes, 2 << 30);
    assert_eq!(q.source, VolumeSource::Store);
    let file = root.path().join("volumes/data-1.qcow2");
    assert_eq!(info(&file)["format"], "qcow2");
    assert_eq!(info(&file)["virtual-size"], 2u64 << 30);
    assert_eq!(store.disk_source(&q), DiskSource::File(file.clone()));
    let mut r = spec("shared", 1);
    r.format = "raw".into();
    r.shareable = true;
    let raw = store.create(&r, 101).unwrap();
    assert!(raw.shareable);
    assert_eq!(
        std::fs::metadata(root.path().join("volumes/shared.raw"))
            .unwrap()
            .len(),
        1 << 30
    );
    // Records read back; no staging files left.
    assert_eq!(store.get("data-1").unwrap(), q);
    assert_eq!(store.list().0, vec![q.clone(), raw]);
    let leftovers: Vec<_> = std::fs::read_dir(root.path().join("volumes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The same request again is the volume; another one under its name is refused.
    assert_eq!(store.create(&spec("data-1", 2), 200).unwrap(), q);
    assert!(matches!(
        store.create(&spec("data-1", 3), 200),
        Err(VolumeError::Exists { .. })
    ));
    assert!(matches!(store.get("nope"), Err(VolumeError::NotFound(_))));
}

#[test]
fn a_copy_of_an_image_is_standalone_and_at_least_as_large() {
    let root = tempfile::tempdir().unwrap();
    let store = VolumeStore::new(root.path());
    let image = root.path().join("base.qcow2");
    crate::storage::disks::blank(&image, 3 << 30).unwrap();
    let mut s = spec("from-img", 0);
    s.image = Some(("base".into(), image.clone(), "qcow2".into()));
    let v = store.create(&s, 1).unwrap();
    assert_eq!((v.size_bytes, v.image.as_str()), (3 << 30, "base"));
    let i = info(&root.path().join("volumes/from-img.qcow2"));
    assert!(i.get("backing-filename").is_none(), "{i}");
    let mut s = spec("grown", 5);
    s.format = "raw".into();
    s.image = Some(("base".into(), image, "qcow2".into()));
    let v = store.create(&s, 1).unwrap();
    assert_eq!(v.size_bytes, 5 << 30);
    assert_eq!(
        info(&root.path().join("volumes/grown.raw"))["virtual-size"],
        5u64 << 30
    );
}

#[test]
fn an_unreadable_record_is_reported_and_kept() {
    let root = tempfile::tempdir().unwrap();
    let store = VolumeStore::new(root.path());
    store.create(&spec("good", 1), 1).unwrap();
    let bad = root.path().join("volumes/bad.json");
    std::fs::write(&bad, b"{not json").unwrap();
    let (records, unreadable) = store.list();
    assert_eq!(records.len(), 1);
    assert_eq!(unreadable.len(), 1);
    assert!(unreadable[0].contains("\"bad\""), "{unreadable:?}");
    assert!(matches!(
        store.create(&spec("bad", 1), 1),
        Err(VolumeError::Unreadable { .. })
    ));
    assert!(matches!(
        store.delete("bad"),
        Err(VolumeError::Unreadable { .. })
    ));
    assert_eq!(std::fs::read(&bad).unwrap(), b"{not json");
}

#[test]
fn delete_removes_a_store_volume_and_only_forgets_an_external_one() {
    let root = tempfile::tempdir().unwrap();
    let store = VolumeStore::new(root.path());
    store.create(&spec("gone", 1), 1).unwrap();
    store.delete("gone").unwrap();
    assert!(!root.path().join("volumes/gone.qcow2").exists());
    assert!(matches!(store.get("gone"), Err(VolumeError::NotFound(_))));
    assert!(matches!(
        store.delete("gone"),
        Err(VolumeError::NotFound(_))
    ));
    // An external record written as Create would (no device needed to forget one).
    let external = VolumeRecord {
        name: "ext".into(),
        format: "raw".into(),
        size_bytes: 1 << 20,
        shareable: false,
        source: VolumeSource::Block {
            path: root.path().join("device"),
        },
        image: String::new(),
        created_unix: 1,
        made_for: String::new(),
        arriving_for: String::new(),
    };
    std::fs::write(root.path().join("device"), b"data").unwrap();
    store.write_record(&external).unwrap();
    assert_eq!(store.delete("ext").unwrap(), external);
    assert_eq!(std::fs::read(root.path().join("device")).unwrap(), b"data");
}

#[test]
fn external_sources_must_be_block_devices_not_links() {
    let root = tempfile::tempdir().unwrap();
    let store = VolumeStore::new(root.path());
    let file = root.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let link = root.path().join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    for (source, why) in [
        (file.display().to_string(), "not a block device"),
        (link.display().to_string(), "symbolic link"),
        ("relative/dev".to_string(), "absolute"),
        (
            root.path().join("missing").display().to_string(),
            "cannot open",
        ),
    ] {
        let mut s = spec("ext", 0);
        s.source = source.clone();
        let e = store.create(&s, 1).unwrap_err().to_string();
        assert!(
            e.starts_with("source: ") && e.contains(why),
            "{source}: {e}"
        );
    }
    assert!(store.list().0.is_empty());
}
