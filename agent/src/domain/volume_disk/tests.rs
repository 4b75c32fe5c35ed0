use super::*;

const DOMAIN: &str = r#"<domain type='qemu'><name>g</name><devices>
  <disk type='file' device='disk'>
    <driver name='qemu' type='qcow2'/>
    <source file='/var/lib/hvagent/vms/u/root.qcow2' index='2'/>
    <backingStore type='file' index='3'>
      <format type='qcow2'/>
      <source file='/var/lib/hvagent/images/base/image'/>
      <backingStore/>
    </backingStore>
    <target dev='vda' bus='virtio'/>
  </disk>
  <disk type='file' device='disk'>
    <source file='/var/lib/hvagent/vms/u/seed.img'/>
    <target dev='vdb' bus='virtio'/>
    <readonly/>
  </disk>
  <disk type='network' device='disk'>
    <driver name='qemu' type='raw'/>
    <source protocol='nbd' name='exp &amp; more'>
      <host name='10.0.0.2' port='10900'/>
    </source>
    <target dev='vdc' bus='virtio'/>
  </disk>
  <disk type='block' device='disk'>
    <source dev='/dev/loop7'/>
    <target dev='vde' bus='virtio'/>
  </disk>
  <disk type='file' device='cdrom'>
    <target dev='sda' bus='sata'/>
  </disk>
  <interface type='ethernet'><source dev='not-a-disk'/></interface>
</devices></domain>"#;

fn found(target: &str, key: Option<&str>) -> FoundDisk {
    FoundDisk {
        target: target.into(),
        key: key.map(str::to_string),
    }
}

#[test]
fn disks_of_a_domain_with_their_top_sources() {
    assert_eq!(
        disks(DOMAIN).unwrap(),
        vec![
            found("vda", Some("/var/lib/hvagent/vms/u/root.qcow2")),
            found("vdb", Some("/var/lib/hvagent/vms/u/seed.img")),
            found("vdc", Some("nbd://10.0.0.2:10900/exp & more")),
            found("vde", Some("/dev/loop7")),
            found("sda", None),
        ]
    );
    assert!(disks("<domain><devices><disk>").unwrap().is_empty());
    assert!(disks("<domain><a></b></domain>").is_err());
}

#[test]
fn a_built_disk_reads_back_as_its_source() {
    for (source, kind) in [
        (DiskSource::File("/v/a 'b'.qcow2".into()), "type=\"file\""),
        (DiskSource::Block("/dev/sdz".into()), "type=\"block\""),
        (
            DiskSource::Nbd {
                host: "nbd.example".into(),
                port: NBD_PORT,
                export: "x<y".into(),
            },
            "protocol=\"nbd\"",
        ),
    ] {
        let disk = VolumeDisk {
            source: source.clone(),
            format: "raw".into(),
            target: "vdd".into(),
            serial: serial("a-very-long-volume-name-indeed"),
            shareable: true,
        };
        let xml = disk_xml(&disk).unwrap();
        assert!(xml.contains(kind), "{xml}");
        assert!(
            xml.contains("<serial>a-very-long-volume-n</serial>"),
            "{xml}"
        );
        assert!(xml.contains("<shareable/>"), "{xml}");
        assert!(xml.contains("bus=\"virtio\""), "{xml}");
        // An NBD export is read past the host's cache (libvirt migrates it uncopied only so).
        let uncached = matches!(source, DiskSource::Nbd { .. });
        assert_eq!(xml.contains("cache=\"none\""), uncached, "{xml}");
        let wrapped = format!("<domain><devices>{xml}</devices></domain>");
        assert_eq!(
            disks(&wrapped).unwrap(),
            vec![found("vdd", Some(&source.key()))]
        );
    }
    assert_eq!(serial("short").len(), 5);
}

#[test]
fn the_first_letter_free_in_live_and_persistent_disks() {
    let live = [found("vda", None), found("vdb", None), found("vdd", None)];
    let persistent = [found("vda", None), found("vdc", None)];
    assert_eq!(free_target(&[&live, &persistent]), "vde");
    assert_eq!(free_target(&[&live]), "vdc");
    assert_eq!(free_target(&[&[found("sda", None)]]), "vda");
    let full: Vec<FoundDisk> = (0..26)
        .map(|i| found(&format!("vd{}", crate::domain::xml::disk_letter(i)), None))
        .collect();
    assert_eq!(free_target(&[&full]), "vdaa");
}
