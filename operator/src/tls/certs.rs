//! Issuing the webhook CA and serving certificate, and reading them back.

use std::collections::BTreeMap;

use jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::TlsError;
use super::rotation::{Lifetimes, Observed, Validity, validity_from};

/// Secret key: the CA certificate (PEM).
pub const CA_CERT_KEY: &str = "ca.crt";
/// Secret key: the CA private key (PEM).
pub const CA_KEY_KEY: &str = "ca.key";
/// Secret key: the CA replaced at the last rotation, trusted until it expires.
pub const PREVIOUS_CA_KEY: &str = "previous-ca.crt";
/// Secret key: the serving certificate (PEM).
pub const TLS_CERT_KEY: &str = "tls.crt";
/// Secret key: the serving private key (PEM).
pub const TLS_KEY_KEY: &str = "tls.key";

/// The webhook's certificates as kept in the shared Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookCerts {
    /// CA certificate, PEM.
    pub ca_cert: String,
    /// CA private key, PEM.
    pub ca_key: String,
    /// The previous CA certificate, PEM, while it may still sign certificates
    /// other replicas serve.
    pub previous_ca_cert: Option<String>,
    /// Serving certificate, PEM.
    pub cert: String,
    /// Serving private key, PEM.
    pub key: String,
}

impl std::fmt::Debug for WebhookCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookCerts")
            .field("ca_cert", &self.ca_cert)
            .field("previous_ca_cert", &self.previous_ca_cert)
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl WebhookCerts {
    /// Reads the Secret's data; `None` if a required key is missing or not
    /// UTF-8.
    pub fn from_data(data: &BTreeMap<String, Vec<u8>>) -> Option<Self> {
        let get = |k: &str| data.get(k).and_then(|v| String::from_utf8(v.clone()).ok());
        Some(Self {
            ca_cert: get(CA_CERT_KEY)?,
            ca_key: get(CA_KEY_KEY)?,
            previous_ca_cert: get(PREVIOUS_CA_KEY).filter(|s| !s.is_empty()),
            cert: get(TLS_CERT_KEY)?,
            key: get(TLS_KEY_KEY)?,
        })
    }

    /// The Secret's data.
    pub fn to_data(&self) -> BTreeMap<String, Vec<u8>> {
        let mut data = BTreeMap::from([
            (CA_CERT_KEY.to_string(), self.ca_cert.clone().into_bytes()),
            (CA_KEY_KEY.to_string(), self.ca_key.clone().into_bytes()),
            (TLS_CERT_KEY.to_string(), self.cert.clone().into_bytes()),
            (TLS_KEY_KEY.to_string(), self.key.clone().into_bytes()),
        ]);
        if let Some(prev) = &self.previous_ca_cert {
            data.insert(PREVIOUS_CA_KEY.to_string(), prev.clone().into_bytes());
        }
        data
    }

    /// The PEM bundle the API server must trust: the current CA, plus the
    /// previous one while it is still valid at `now` (replicas that have not
    /// picked up the rotation yet still serve certificates it signed).
    pub fn ca_bundle(&self, now: Timestamp) -> String {
        let mut bundle = self.ca_cert.clone();
        if let Some(prev) = &self.previous_ca_cert
            && parse_validity(prev).is_ok_and(|v| v.covers(now))
        {
            if !bundle.ends_with('\n') {
                bundle.push('\n');
            }
            bundle.push_str(prev);
        }
        bundle
    }

    /// The serving certificate and key in the form rustls serves.
    pub fn certified_key(&self) -> Result<CertifiedKey, TlsError> {
        certified_key(self.cert.as_bytes(), self.key.as_bytes())
    }
}

/// Parses a PEM certificate chain and private key into what rustls serves,
/// checking that the key belongs to the certificate.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid(format!("certificate: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid("no certificate in PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsError::Invalid(format!("private key: {e}")))?;
    CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider())
        .map_err(|e| TlsError::Invalid(format!("certificate and key: {e}")))
}

/// Creates a new CA and a serving certificate for `dns_names` from it.
pub fn issue_all(
    now: Timestamp,
    dns_names: &[String],
    lifetimes: Lifetimes,
    previous_ca_cert: Option<String>,
) -> Result<WebhookCerts, TlsError> {
    let ca_key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "cardgate");
    dn.push(DnType::CommonName, format!("cardgate webhook CA {}", now));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, validity_from(now, lifetimes.ca, None))?;
    let ca_cert = params.self_signed(&ca_key)?.pem();
    let ca_key = ca_key.serialize_pem();
    let (cert, key) = issue_serving_pem(now, dns_names, lifetimes, &ca_cert, &ca_key)?;
    Ok(WebhookCerts {
        ca_cert,
        ca_key,
        previous_ca_cert,
        cert,
        key,
    })
}

/// A new serving certificate from the CA in `certs`.
pub fn reissue_serving(
    now: Timestamp,
    dns_names: &[String],
    lifetimes: Lifetimes,
    certs: &WebhookCerts,
) -> Result<WebhookCerts, TlsError> {
    let (cert, key) = issue_serving_pem(now, dns_names, lifetimes, &certs.ca_cert, &certs.ca_key)?;
    Ok(WebhookCerts {
        cert,
        key,
        ..certs.clone()
    })
}

fn issue_serving_pem(
    now: Timestamp,
    dns_names: &[String],
    lifetimes: Lifetimes,
    ca_cert: &str,
    ca_key: &str,
) -> Result<(String, String), TlsError> {
    let ca_validity = parse_validity(ca_cert)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert, KeyPair::from_pem(ca_key)?)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(dns_names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        dns_names.first().cloned().unwrap_or_default(),
    );
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(
        &mut params,
        validity_from(now, lifetimes.serving, Some(ca_validity.not_after)),
    )?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn set_validity(params: &mut CertificateParams, v: Validity) -> Result<(), TlsError> {
    let conv = |t: Timestamp| {
        time::OffsetDateTime::from_unix_timestamp(t.as_second())
            .map_err(|e| TlsError::Invalid(format!("validity out of range: {e}")))
    };
    params.not_before = conv(v.not_before)?;
    params.not_after = conv(v.not_after)?;
    Ok(())
}

fn parse_der(pem: &str) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| TlsError::Invalid(format!("certificate: {e}")))
}

fn with_cert<T>(
    der: &CertificateDer<'_>,
    f: impl FnOnce(&X509Certificate<'_>) -> T,
) -> Result<T, TlsError> {
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| TlsError::Invalid(format!("certificate: {e}")))?;
    Ok(f(&cert))
}

fn validity_of(cert: &X509Certificate<'_>) -> Result<Validity, TlsError> {
    let ts = |t: i64| {
        Timestamp::from_second(t).map_err(|e| TlsError::Invalid(format!("certificate time: {e}")))
    };
    Ok(Validity {
        not_before: ts(cert.validity().not_before.timestamp())?,
        not_after: ts(cert.validity().not_after.timestamp())?,
    })
}

/// Validity period of a PEM certificate.
pub fn parse_validity(pem: &str) -> Result<Validity, TlsError> {
    with_cert(&parse_der(pem)?, validity_of)?
}

/// Reads what renewal needs to know from stored certificates; an error means
/// they are unusable (wrong key, unparsable) and must be replaced.
pub fn observe(certs: &WebhookCerts, dns_names: &[String]) -> Result<Observed, TlsError> {
    certified_key(certs.ca_cert.as_bytes(), certs.ca_key.as_bytes())?;
    certs.certified_key()?;
    let ca_der = parse_der(&certs.ca_cert)?;
    let serving_der = parse_der(&certs.cert)?;
    with_cert(&ca_der, |ca| {
        with_cert(&serving_der, |serving| {
            let mut names: Vec<String> = serving
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|ext| {
                    ext.value
                        .general_names
                        .iter()
                        .filter_map(|n| match n {
                            GeneralName::DNSName(d) => Some(d.to_string()),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            let mut want = dns_names.to_vec();
            want.sort();
            Ok(Observed {
                ca: validity_of(ca)?,
                serving: validity_of(serving)?,
                names_match: names == want,
                signed_by_ca: serving.verify_signature(Some(ca.public_key())).is_ok(),
            })
        })?
    })?
}

impl From<rcgen::Error> for TlsError {
    fn from(e: rcgen::Error) -> Self {
        TlsError::Invalid(format!("certificate generation: {e}"))
    }
}
