//! What a certificate says about its holder: the identity a client certificate maps to a role
//! by, and whether a certificate is inside its validity period.

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The identity of a client certificate: its first URI SAN (a SPIFFE ID such as
/// `spiffe://cloud.example/controlplane`), else its first DNS SAN, else, for a certificate
/// without any subject alternative name, its subject's common name. `None` when it has none of
/// these (such a client has no role). A common name cannot pose as a URI: one with `:` or `/`
/// gives no identity (a CA that lets requesters choose their CN must not mint a SPIFFE ID).
pub fn of_certificate(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()?;
    if let Some(san) = san {
        let names = &san.value.general_names;
        let uri = names.iter().find_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        });
        let dns = names.iter().find_map(|n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        });
        return uri.or(dns).filter(|id| !id.is_empty()).map(str::to_string);
    }
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty() && !cn.contains([':', '/']))
        .map(str::to_string)
}

/// Whether a certificate is valid at `now` (seconds since the epoch); the error says why not
/// ("expired on …", "not valid before …").
pub fn check_validity(der: &[u8], now: i64) -> Result<(), String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let validity = cert.validity();
    if validity.not_after.timestamp() < now {
        return Err(format!("expired on {}", validity.not_after));
    }
    if validity.not_before.timestamp() > now {
        return Err(format!("not valid before {}", validity.not_before));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ca, leaf};
    use super::*;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn uri_san_then_dns_san_then_common_name() {
        let ca = ca("CA");
        let id = |cn: Option<&str>, sans: &[&str]| {
            of_certificate(&der(&leaf(&ca, cn, sans, (-1, 1)).cert_pem))
        };
        assert_eq!(
            id(
                Some("cn"),
                &[
                    "dns:cp.example",
                    "uri:spiffe://cloud.example/controlplane",
                    "ip:10.0.0.1"
                ]
            )
            .as_deref(),
            Some("spiffe://cloud.example/controlplane")
        );
        assert_eq!(
            id(
                Some("cn"),
                &["ip:10.0.0.1", "dns:cp.example", "dns:b.example"]
            )
            .as_deref(),
            Some("cp.example")
        );
        assert_eq!(id(Some("monitor"), &[]).as_deref(), Some("monitor"));
        // With subject alternative names, the CN is not looked at.
        assert_eq!(id(Some("monitor"), &["ip:10.0.0.1"]), None);
        assert_eq!(id(None, &["ip:10.0.0.1"]), None);
        // A CN cannot pose as a URI identity.
        assert_eq!(id(Some("spiffe://cloud.example/controlplane"), &[]), None);
        assert_eq!(of_certificate(b"not a certificate"), None);
    }

    #[test]
    fn validity_window() {
        let ca = ca("CA");
        let now = crate::tls::now();
        assert_eq!(
            check_validity(&der(&leaf(&ca, Some("a"), &[], (-1, 1)).cert_pem), now),
            Ok(())
        );
        let expired = check_validity(&der(&leaf(&ca, Some("a"), &[], (-3, -2)).cert_pem), now);
        assert!(
            expired.as_ref().unwrap_err().starts_with("expired on "),
            "{expired:?}"
        );
        let early = check_validity(&der(&leaf(&ca, Some("a"), &[], (2, 3)).cert_pem), now);
        assert!(
            early.as_ref().unwrap_err().starts_with("not valid before "),
            "{early:?}"
        );
        assert!(
            check_validity(b"junk", now)
                .unwrap_err()
                .starts_with("not an X.509")
        );
    }
}
