//! TLS for the TCP API, shared by the agent (server) and hvctl (client): the Mozilla
//! "intermediate" profile on rustls, certificates and keys read from PEM files with errors that
//! name the config key, the file and the problem, the identity a client certificate carries,
//! and dialing an agent (hvctl, and an agent moving a guest to another).

pub mod dial;
pub mod identity;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// gRPC runs on HTTP/2, which TLS peers agree on by ALPN.
const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TlsError {
    /// A file that cannot be used: `key` is the config key or flag that named it.
    #[error("{key}: {path}: {problem}")]
    File {
        key: &'static str,
        path: PathBuf,
        problem: String,
    },
    /// The files are each fine but do not go together (a key that is not the certificate's).
    #[error("{0}")]
    Mismatch(String),
}

fn file_error(key: &'static str, path: &Path, problem: impl Into<String>) -> TlsError {
    TlsError::File {
        key,
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// ring with the Mozilla intermediate set (2023, v5.7) as rustls can speak it: TLS 1.3 with
/// AES-GCM and ChaCha20-Poly1305; TLS 1.2 only with ECDHE and AEAD ciphers (the profile's DHE
/// suites are left out: rustls has none, and clients that need them are pre-2014). Key
/// exchange X25519, P-256, P-384 as the profile names them.
pub fn provider() -> Arc<CryptoProvider> {
    use ring::cipher_suite as cs;
    use ring::kx_group as kx;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: vec![kx::X25519, kx::SECP256R1, kx::SECP384R1],
        ..ring::default_provider()
    })
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The PEM files one side of a connection needs: its own certificate chain and key, and the
/// CA bundle the other side's certificate must chain to. Each comes with the name of the config
/// key (or flag) that named it, for errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    pub cert: (&'static str, PathBuf),
    pub key: (&'static str, PathBuf),
    pub ca: (&'static str, PathBuf),
}

/// The certificates in a PEM file.
fn read_certificates(
    (key, path): &(&'static str, PathBuf),
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| file_error(key, path, e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The certificates in a PEM file, each checked to be in its validity period at `now`.
fn certificates(
    file: &(&'static str, PathBuf),
    now: i64,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = read_certificates(file)?;
    for (i, cert) in certs.iter().enumerate() {
        identity::check_validity(cert, now).map_err(|problem| {
            file_error(file.0, &file.1, format!("certificate {}: {problem}", i + 1))
        })?;
    }
    Ok(certs)
}
fn private_key((key, path): &(&'static str, PathBuf)) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| file_error(key, path, e.to_string()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        file_error(
            key,
            path,
            format!("no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })
}

/// The CA bundle. A CA outside its validity period is left out with a warning (an old CA may
/// linger in a bundle after a rotation; it could not sign a valid chain anyway); a bundle
/// without one valid CA is an error.
fn roots(files: &Files, now: i64) -> Result<RootCertStore, TlsError> {
    let (key, path) = &files.ca;
    let mut roots = RootCertStore::empty();
    let mut skipped = Vec::new();
    for (i, cert) in read_certificates(&files.ca)?.into_iter().enumerate() {
        if let Err(problem) = identity::check_validity(&cert, now) {
            tracing::warn!(key, path = %path.display(), certificate = i + 1, %problem, "CA left out");
            skipped.push(format!("certificate {}: {problem}", i + 1));
            continue;
        }
        roots
            .add(cert)
            .map_err(|e| file_error(key, path, format!("not a usable CA: {e}")))?;
    }
    if roots.is_empty() {
        return Err(file_error(
            key,
            path,
            format!("no valid CA ({})", skipped.join("; ")),
        ));
    }
    Ok(roots)
}

/// The certificate chain and key of `files`, checked to belong together.
fn own_identity(
    files: &Files,
    provider: &CryptoProvider,
    now: i64,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = certificates(&files.cert, now)?;
    let key = private_key(&files.key)?;
    rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), provider).map_err(
        |e| {
            TlsError::Mismatch(format!(
                "{} {} does not belong to the certificate in {} {}: {e}",
                files.key.0,
                files.key.1.display(),
                files.cert.0,
                files.cert.1.display()
            ))
        },
    )?;
    Ok((chain, key))
}

/// The host part of `HOST:PORT` (brackets of an IPv6 address removed): the name the other
/// side's certificate must carry (hvctl reaching an agent, an agent reaching another).
pub fn host_of(endpoint: &str) -> Option<&str> {
    let (host, port) = endpoint.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

/// Seconds since the epoch, for validity checks.
pub fn now() -> i64 {
    i64::try_from(crate::clock::now_unix()).unwrap_or(i64::MAX)
}

/// The agent's side: its certificate, and every client must present a certificate that chains
/// to the CA bundle (no certificate, another CA's, an expired one: the handshake fails).
pub fn server_config(files: &Files, now: i64) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let (chain, key) = own_identity(files, &provider, now)?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(files, now)?), provider.clone())
            .build()
            .map_err(|e| file_error(files.ca.0, &files.ca.1, e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Mismatch(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// hvctl's side: its client certificate, and the agent's certificate must chain to the CA
/// bundle and name the host it was reached by.
pub fn client_config(files: &Files, now: i64) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let (chain, key) = own_identity(files, &provider, now)?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Mismatch(e.to_string()))?
        .with_root_certificates(roots(files, now)?)
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
pub(crate) mod testing {
    //! Certificates made on the fly for the tests of this module and its users.
    use rcgen::{CertificateParams, DnType, Issuer, KeyPair, SanType};

    pub struct Ca {
        pub pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    pub struct Leaf {
        pub cert_pem: String,
        pub key_pem: String,
    }

    pub fn ca(name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate with these SANs (`uri:`, `dns:` or `ip:` prefixes) and common name.
    pub fn leaf(ca: &Ca, cn: Option<&str>, sans: &[&str], days: (i64, i64)) -> Leaf {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        for san in sans {
            let (kind, value) = san.split_once(':').expect("kind:value");
            params.subject_alt_names.push(match kind {
                "uri" => SanType::URI(value.try_into().expect("uri")),
                "dns" => SanType::DnsName(value.try_into().expect("dns")),
                "ip" => SanType::IpAddress(value.parse().expect("ip")),
                other => panic!("unknown SAN kind {other}"),
            });
        }
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(days.0);
        params.not_after = now + time::Duration::days(days.1);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &ca.issuer).expect("signed");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoint_hosts() {
        use super::host_of;
        assert_eq!(host_of("node1.example:9464"), Some("node1.example"));
        assert_eq!(host_of("10.0.0.5:9464"), Some("10.0.0.5"));
        assert_eq!(host_of("[::1]:9464"), Some("::1"));
        assert_eq!(host_of("node1.example"), None);
        assert_eq!(host_of("node1:port"), None);
        assert_eq!(host_of(":9464"), None);
    }

    use super::testing::*;
    use super::*;

    struct Dir {
        dir: tempfile::TempDir,
    }

    impl Dir {
        fn files(&self, leaf: &Leaf, ca_pem: &str) -> Files {
            let write = |name: &str, text: &str| {
                let p = self.dir.path().join(name);
                std::fs::write(&p, text).unwrap();
                p
            };
            Files {
                cert: ("api.tls_cert", write("cert.pem", &leaf.cert_pem)),
                key: ("api.tls_key", write("key.pem", &leaf.key_pem)),
                ca: ("api.tls_client_ca", write("ca.pem", ca_pem)),
            }
        }
    }

    fn dir() -> Dir {
        Dir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    #[test]
    fn good_files_make_both_sides() {
        let ca = ca("test CA");
        let leaf = leaf(&ca, Some("agent"), &["dns:localhost"], (-1, 30));
        let d = dir();
        let files = d.files(&leaf, &ca.pem);
        let server = server_config(&files, now()).unwrap();
        assert_eq!(server.alpn_protocols, vec![b"h2".to_vec()]);
        client_config(&files, now()).unwrap();
    }

    #[test]
    fn unusable_files_name_key_file_and_problem() {
        let ca = ca("test CA");
        let good = leaf(&ca, Some("agent"), &[], (-1, 30));
        let d = dir();
        let files = d.files(&good, &ca.pem);

        let mut missing = files.clone();
        missing.key.1 = d.dir.path().join("nope.pem");
        let err = server_config(&missing, now()).unwrap_err();
        assert!(
            matches!(&err, TlsError::File { key: "api.tls_key", problem, .. } if problem.contains("No such file")),
            "{err}"
        );

        let mut not_pem = files.clone();
        not_pem.ca.1 = d.dir.path().join("key.pem");
        let err = server_config(&not_pem, now()).unwrap_err();
        assert!(
            matches!(&err, TlsError::File { key: "api.tls_client_ca", problem, .. } if problem == "holds no PEM certificate"),
            "{err}"
        );

        let expired = leaf(&ca, Some("agent"), &[], (-30, -1));
        let d2 = dir();
        let err = server_config(&d2.files(&expired, &ca.pem), now()).unwrap_err();
        assert!(
            matches!(&err, TlsError::File { key: "api.tls_cert", problem, .. } if problem.starts_with("certificate 1: expired on ")),
            "{err}"
        );

        // A bundle of one expired and one valid CA serves; of expired ones only, it does not.
        let expired_ca = leaf(&ca, Some("old CA"), &[], (-30, -1));
        let d5 = dir();
        let bundle = d5.files(&good, &format!("{}{}", expired_ca.cert_pem, ca.pem));
        server_config(&bundle, now()).unwrap();
        std::fs::write(&bundle.ca.1, &expired_ca.cert_pem).unwrap();
        let err = server_config(&bundle, now()).unwrap_err();
        assert!(
            matches!(&err, TlsError::File { key: "api.tls_client_ca", problem, .. } if problem.starts_with("no valid CA (certificate 1: expired on ")),
            "{err}"
        );

        let future = leaf(&ca, Some("agent"), &[], (2, 30));
        let d3 = dir();
        let err = server_config(&d3.files(&future, &ca.pem), now()).unwrap_err();
        assert!(err.to_string().contains("not valid before"), "{err}");

        // Another certificate's key.
        let other = leaf(&ca, Some("other"), &[], (-1, 30));
        let d4 = dir();
        let mut mixed = d4.files(&good, &ca.pem);
        std::fs::write(&mixed.key.1, &other.key_pem).unwrap();
        mixed.key.0 = "--tls-key";
        let err = client_config(&mixed, now()).unwrap_err();
        assert!(
            matches!(&err, TlsError::Mismatch(m) if m.starts_with("--tls-key ") && m.contains("does not belong to the certificate in api.tls_cert")),
            "{err}"
        );
    }

    #[test]
    fn only_intermediate_suites_and_groups() {
        let p = provider();
        assert_eq!(p.cipher_suites.len(), 9);
        for suite in &p.cipher_suites {
            let name = format!("{:?}", suite.suite());
            assert!(
                name.contains("GCM") || name.contains("CHACHA20"),
                "{name} is not AEAD"
            );
            assert!(
                name.starts_with("TLS13_") || name.starts_with("TLS_ECDHE_"),
                "{name} lacks forward secrecy"
            );
        }
        assert_eq!(p.kx_groups.len(), 3);
    }
}
