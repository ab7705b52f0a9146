//! The cluster PKI: the cluster's certificate authority, node certificates, the mutual-TLS
//! configurations every QUIC connection uses, and the join token `shoal seed` hands out.
//!
//! Everything here is pure: no sockets and no files. `shoal seed` calls [`ClusterCa::generate`]
//! and [`JoinToken::new`]; `shoal join` dials the seed with [`pinned_client_config`], so it
//! checks the seed against the CA fingerprint in its token before it sends the token's secret;
//! the seed checks the token with [`JoinToken::verify`] and answers with
//! [`ClusterCa::issue_node_certificate`]. From then on peers talk over [`client_config`] and
//! [`cluster_server_config`] and read each other's node id with [`node_id_of`].
//!
//! Two ALPN protocols share one port: [`ALPN`] (`shoal/1`) for cluster traffic, where both ends
//! present a node certificate, and [`JOIN_ALPN`] (`shoal-join/1`) for a node that has no
//! certificate yet and asks to join. The server config accepts a client without a certificate
//! so that the join protocol can work; the QUIC layer ([`crate::quic`]) closes every `shoal/1`
//! connection whose peer presented none.
//!
//! Only TLS 1.3 and only the `ring` provider: rustls's default builder panics when both `ring`
//! and `aws-lc-rs` are in the graph, so every config here names its provider.

use std::net::IpAddr;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::{Duration, OffsetDateTime};

/// The ALPN protocol of cluster traffic between two nodes that both hold a node certificate.
pub const ALPN: &[u8] = b"shoal/1";

/// The ALPN protocol of a join request from a node that has no certificate yet.
pub const JOIN_ALPN: &[u8] = b"shoal-join/1";

/// The DNS suffix of the SAN that carries a node's id: `node-<id>.shoal.internal`.
pub const NODE_ID_DNS_SUFFIX: &str = ".shoal.internal";

/// The prefix of an encoded join token; the version lets the format change later.
pub const JOIN_TOKEN_PREFIX: &str = "shoal-join-v1.";

/// How long the cluster CA certificate is valid.
const CA_VALIDITY: Duration = Duration::days(3650);

/// How long a node certificate is valid.
const NODE_VALIDITY: Duration = Duration::days(365);

/// Certificates start an hour in the past so that peers with a slow clock accept them.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::hours(1);

/// What went wrong in the cluster PKI; each message is one sentence a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen could not make a key pair or a certificate.
    #[error("could not create a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The stored CA certificate or key could not be read.
    #[error("the cluster CA certificate or key could not be read ({0}); restore them from a backup of the seed's data directory")]
    InvalidCa(String),
    /// The stored CA key is not the key of the stored CA certificate.
    #[error("the cluster CA key does not belong to the CA certificate; restore both from the same backup")]
    CaKeyMismatch,
    /// A node name cannot go into a certificate as a DNS name.
    #[error("the node name `{0}` is not a valid DNS name; use letters, digits, `-` and `.` only")]
    InvalidNodeName(String),
    /// A node's certificate or key could not be read.
    #[error("the node certificate or key could not be read ({0}); join the cluster again to get a new one")]
    InvalidIdentity(String),
    /// rustls refused to build a TLS configuration.
    #[error("could not build the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// rustls refused to build the client-certificate verifier.
    #[error("could not build the TLS client certificate verifier: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
    /// A CA fingerprint is not a SHA-256 digest in hex.
    #[error(
        "the CA fingerprint `{0}` is not 64 hexadecimal characters; copy the join token again"
    )]
    InvalidFingerprint(String),
    /// The server did not present the CA the join token pins.
    #[error("the server's certificate authority does not match the join token's fingerprint; the token is for another cluster or the address is not its seed")]
    FingerprintMismatch,
    /// A join token could not be decoded.
    #[error("the join token is malformed ({0}); copy it again from the output of `shoal seed`")]
    MalformedToken(String),
    /// A join token's secret does not match the one the seed issued.
    #[error("the join token was refused; ask the cluster's operator for a valid one")]
    WrongToken,
    /// A join token is past its expiry.
    #[error("the join token expired at unix time {expired_at_unix} (now {now_unix}); ask the cluster's operator for a fresh one")]
    Expired {
        /// When the token stopped being valid.
        expired_at_unix: u64,
        /// The time it was presented.
        now_unix: u64,
    },
}

/// The cluster's certificate authority.
pub struct ClusterCa {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    /// Shows the fingerprint only: the key must never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA for `cluster_name`: ECDSA P-256, valid for ten years, allowed to sign only
    /// end-entity certificates.
    pub fn generate(cluster_name: &str) -> Result<Self, PkiError> {
        let key_pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("Shoal cluster CA {cluster_name}"),
        );
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Shoal");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW_ALLOWANCE;
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key_pair)?;
        Ok(Self {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key_pair),
        })
    }

    /// The CA as stored by [`ClusterCa::cert_pem`] and [`ClusterCa::key_pem`]; refuses a key
    /// that does not belong to the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|err| PkiError::InvalidCa(format!("certificate: {err}")))?;
        let key_pair =
            KeyPair::from_pem(key_pem).map_err(|err| PkiError::InvalidCa(format!("key: {err}")))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|err| PkiError::InvalidCa(format!("certificate: {err}")))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key_pair.public_key_raw() {
            return Err(PkiError::CaKeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key_pair)
            .map_err(|err| PkiError::InvalidCa(format!("certificate: {err}")))?;
        Ok(Self {
            cert_pem: pem_of_certificate(&cert_der),
            cert_der,
            issuer,
        })
    }

    /// The CA certificate in PEM, as `shoal seed` stores it and every node keeps it.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA private key in PKCS#8 PEM; only the seed's data directory should hold it.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The CA certificate in DER, the form rustls wants.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// sha256 of the CA certificate's DER, lowercase hex: what join tokens pin.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.cert_der)
    }

    /// A node certificate: EKU server+client auth, SAN DNS = `<node_name>` and
    /// `node-<node_id>.shoal.internal`, plus IP SANs for `addrs`; 1-year validity; its own
    /// fresh key pair.
    pub fn issue_node_certificate(
        &self,
        node_name: &str,
        node_id: u64,
        addrs: &[IpAddr],
    ) -> Result<NodeIdentity, PkiError> {
        if !is_dns_name(node_name) {
            return Err(PkiError::InvalidNodeName(node_name.to_string()));
        }
        let key_pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params =
            CertificateParams::new(vec![node_name.to_string(), node_id_dns_name(node_id)])?;
        params
            .subject_alt_names
            .extend(addrs.iter().map(|addr| SanType::IpAddress(*addr)));
        params.distinguished_name.remove(DnType::CommonName);
        params
            .distinguished_name
            .push(DnType::CommonName, node_name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW_ALLOWANCE;
        params.not_after = now + NODE_VALIDITY;
        let cert = params.signed_by(&key_pair, &self.issuer)?;
        Ok(NodeIdentity {
            cert_pem: cert.pem(),
            key_pem: key_pair.serialize_pem(),
        })
    }
}

/// A node's certificate and key, signed by the cluster CA.
#[derive(Clone)]
pub struct NodeIdentity {
    /// The node certificate in PEM.
    pub cert_pem: String,
    /// The node's private key in PKCS#8 PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for NodeIdentity {
    /// Leaves the key out: it must never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity").finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// The node certificate in DER.
    pub fn cert_der(&self) -> Result<CertificateDer<'static>, PkiError> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|err| PkiError::InvalidIdentity(format!("certificate: {err}")))
    }

    /// The node's private key in DER.
    pub fn key_der(&self) -> Result<PrivateKeyDer<'static>, PkiError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|err| PkiError::InvalidIdentity(format!("key: {err}")))
    }

    /// The chain a node presents: its certificate, then the CA's, so that a joining node can
    /// check the CA against its pinned fingerprint.
    fn chain(
        &self,
        ca: &CertificateDer<'static>,
    ) -> Result<Vec<CertificateDer<'static>>, PkiError> {
        Ok(vec![self.cert_der()?, ca.clone()])
    }
}

/// sha256 of a certificate's DER, lowercase hex.
pub fn fingerprint_of(cert: &CertificateDer<'_>) -> String {
    hex::encode(Sha256::digest(cert.as_ref()))
}

/// The DNS SAN that carries `node_id`; also the server name to dial a peer by, so that the
/// TLS handshake itself checks that the peer is the node it was meant to be.
pub fn node_id_dns_name(node_id: u64) -> String {
    format!("node-{node_id}{NODE_ID_DNS_SUFFIX}")
}

/// The node id a certificate carries (from its `node-<id>.shoal.internal` SAN), if any.
///
/// A certificate that names two different ids carries none.
pub fn node_id_of(cert: &CertificateDer<'_>) -> Option<u64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut ids = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => parse_node_id_dns_name(dns),
            _ => None,
        });
    let first = ids.next()?;
    ids.all(|other| other == first).then_some(first)
}

fn parse_node_id_dns_name(dns: &str) -> Option<u64> {
    let digits = dns
        .strip_prefix("node-")?
        .strip_suffix(NODE_ID_DNS_SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The one crypto provider Shoal uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(ca: &CertificateDer<'static>) -> Result<RootCertStore, PkiError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(roots)
}

/// A server that serves only cluster traffic (ALPN `shoal/1`, TLS 1.3 only): presents the
/// node's certificate and demands a client certificate signed by the cluster CA.
pub fn server_config(
    ca: &CertificateDer<'static>,
    identity: &NodeIdentity,
) -> Result<ServerConfig, PkiError> {
    build_server_config(ca, identity, ClientCertificate::Required, &[ALPN])
}

/// The server side of every node's QUIC endpoint (TLS 1.3 only): presents the node's
/// certificate and offers both [`ALPN`] and [`JOIN_ALPN`]; a client may come without a
/// certificate, so that a joining node (dialing with [`pinned_client_config`]) can connect.
///
/// A certificate that is presented must still be signed by the cluster CA. The caller must
/// close an [`ALPN`] connection whose peer presented no certificate, and serve nothing but the
/// join exchange on a [`JOIN_ALPN`] connection.
pub fn cluster_server_config(
    ca: &CertificateDer<'static>,
    identity: &NodeIdentity,
) -> Result<ServerConfig, PkiError> {
    build_server_config(
        ca,
        identity,
        ClientCertificate::Optional,
        &[ALPN, JOIN_ALPN],
    )
}

/// Whether a server demands a client certificate.
enum ClientCertificate {
    Required,
    Optional,
}

fn build_server_config(
    ca: &CertificateDer<'static>,
    identity: &NodeIdentity,
    client_certificate: ClientCertificate,
    alpn_protocols: &[&[u8]],
) -> Result<ServerConfig, PkiError> {
    let provider = provider();
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(ca)?), provider.clone());
    if let ClientCertificate::Optional = client_certificate {
        verifier = verifier.allow_unauthenticated();
    }
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier.build()?)
        .with_single_cert(identity.chain(ca)?, identity.key_der()?)?;
    config.alpn_protocols = alpn_protocols.iter().map(|alpn| alpn.to_vec()).collect();
    Ok(config)
}

/// The client side of a peer connection (ALPN `shoal/1`, TLS 1.3 only): verifies the server
/// against the cluster CA and presents the node's certificate.
///
/// Dial a peer with the server name [`node_id_dns_name`] of the node it should be.
pub fn client_config(
    ca: &CertificateDer<'static>,
    identity: &NodeIdentity,
) -> Result<ClientConfig, PkiError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(root_store(ca)?)
        .with_client_auth_cert(identity.chain(ca)?, identity.key_der()?)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// A client config that trusts exactly one CA fingerprint (for `shoal join` before it has the
/// CA): it accepts the server's chain only if the CA certificate the server sends hashes to
/// `fingerprint`, and verifies the leaf against that CA. Used without a client certificate,
/// and offers only [`JOIN_ALPN`]: a connection made with it can do nothing but ask to join.
///
/// The server name is not checked: any node holding a certificate from the pinned CA is a
/// member of the cluster, and a seed may be reached by an address its certificate does not
/// name (NAT, DNS alias).
pub fn pinned_client_config(fingerprint: &str) -> Result<ClientConfig, PkiError> {
    let provider = provider();
    let verifier = PinnedCaVerifier {
        fingerprint: parse_fingerprint(fingerprint)?,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![JOIN_ALPN.to_vec()];
    Ok(config)
}

/// Lowercases a fingerprint after checking it is a SHA-256 digest in hex.
fn parse_fingerprint(fingerprint: &str) -> Result<String, PkiError> {
    let fingerprint = fingerprint.trim();
    if fingerprint.len() != 64 || !fingerprint.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(PkiError::InvalidFingerprint(fingerprint.to_string()));
    }
    Ok(fingerprint.to_ascii_lowercase())
}

/// Trusts the one CA, among the certificates the server sends, whose hash is pinned.
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned_ca = intermediates
            .iter()
            .find(|cert| fingerprint_of(cert) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                    PkiError::FingerprintMismatch,
                ))))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(pinned_ca.clone().into_owned())?;
        let leaf = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &roots,
            &[],
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What `shoal seed` prints for others to join: the seed's address, the CA fingerprint, a
/// secret, and an expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinToken {
    /// The seed's QUIC address, `HOST:PORT`.
    pub seed: String,
    /// [`ClusterCa::fingerprint`] of the cluster's CA.
    pub ca_fingerprint: String,
    /// 32 random bytes, base64url without padding.
    pub secret: String,
    /// The token is refused from this unix time on.
    pub expires_at_unix: u64,
}

impl JoinToken {
    /// A new token with a 32-byte random secret; `now_unix` and the RNG come from the caller
    /// (determinism rule).
    pub fn new<R: rand::RngCore>(
        seed: &str,
        ca_fingerprint: &str,
        ttl_secs: u64,
        now_unix: u64,
        rng: &mut R,
    ) -> Self {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        Self {
            seed: seed.to_string(),
            ca_fingerprint: ca_fingerprint.to_string(),
            secret: URL_SAFE_NO_PAD.encode(secret),
            expires_at_unix: now_unix.saturating_add(ttl_secs),
        }
    }

    /// `shoal-join-v1.<base64url(json)>`.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("a join token always serializes");
        format!("{JOIN_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    /// Reads a token made by [`JoinToken::encode`], refusing anything else with a clear error.
    pub fn decode(text: &str) -> Result<Self, PkiError> {
        let malformed = |reason: &str| PkiError::MalformedToken(reason.to_string());
        let body = text
            .trim()
            .strip_prefix(JOIN_TOKEN_PREFIX)
            .ok_or_else(|| malformed("it does not start with `shoal-join-v1.`"))?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| malformed("it is not base64url"))?;
        let token: Self =
            serde_json::from_slice(&json).map_err(|_| malformed("its content is not a token"))?;
        if token.seed.is_empty() || token.secret.is_empty() {
            return Err(malformed("its seed address or secret is empty"));
        }
        parse_fingerprint(&token.ca_fingerprint)
            .map_err(|_| malformed("its CA fingerprint is not a SHA-256 digest"))?;
        Ok(token)
    }

    /// Checks a presented token against the one the seed issued: same secret (constant-time
    /// compare) and not expired at `now_unix`.
    ///
    /// The expiry is the issued token's, never the presented one's, and a wrong secret is
    /// refused before the expiry is looked at, so a refused node learns nothing.
    pub fn verify(&self, presented: &JoinToken, now_unix: u64) -> Result<(), PkiError> {
        let same_secret: bool = self
            .secret
            .as_bytes()
            .ct_eq(presented.secret.as_bytes())
            .into();
        if !same_secret {
            return Err(PkiError::WrongToken);
        }
        if now_unix >= self.expires_at_unix {
            return Err(PkiError::Expired {
                expired_at_unix: self.expires_at_unix,
                now_unix,
            });
        }
        Ok(())
    }
}

/// Whether `name` can go into a certificate as a DNS SAN that webpki will match.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        })
}

fn pem_of_certificate(cert: &CertificateDer<'_>) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ascii"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

#[cfg(test)]
#[path = "pki_tests.rs"]
mod tests;
