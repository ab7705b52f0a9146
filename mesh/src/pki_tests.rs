use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::SeedableRng;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use super::*;

/// Which end of a handshake failed.
#[derive(Debug, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

struct Cluster {
    ca: ClusterCa,
    node_1: NodeIdentity,
    node_2: NodeIdentity,
}

fn cluster(name: &str) -> Cluster {
    let ca = ClusterCa::generate(name).unwrap();
    let addr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let node_1 = ca.issue_node_certificate("alpha", 1, &[addr]).unwrap();
    let node_2 = ca.issue_node_certificate("beta", 2, &[]).unwrap();
    Cluster { ca, node_1, node_2 }
}

fn server_name(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_string()).unwrap()
}

/// Sends what `from` has queued to `to`; false when there was nothing to send.
fn transfer(from: &mut Connection, to: &mut Connection) -> Result<bool, rustls::Error> {
    let mut bytes = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut bytes).unwrap();
    }
    if bytes.is_empty() {
        return Ok(false);
    }
    let mut unread = &bytes[..];
    while !unread.is_empty() {
        to.read_tls(&mut unread).unwrap();
        to.process_new_packets()?;
    }
    Ok(true)
}

/// Drives both ends over in-memory buffers until both are done or one fails.
fn handshake(
    client: &mut Connection,
    server: &mut Connection,
) -> Result<(), (Side, rustls::Error)> {
    for _ in 0..16 {
        let to_server = transfer(client, server).map_err(|err| (Side::Server, err))?;
        let to_client = transfer(server, client).map_err(|err| (Side::Client, err))?;
        if !to_server && !to_client && !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
    }
    panic!("the handshake did not settle");
}

fn connect(
    client_config: ClientConfig,
    name: &str,
    server_config: ServerConfig,
) -> (Connection, Connection, Result<(), (Side, rustls::Error)>) {
    let mut client: Connection = ClientConnection::new(Arc::new(client_config), server_name(name))
        .unwrap()
        .into();
    let mut server: Connection = ServerConnection::new(Arc::new(server_config))
        .unwrap()
        .into();
    let outcome = handshake(&mut client, &mut server);
    (client, server, outcome)
}

#[test]
fn ca_is_p256_and_fingerprint_is_sha256_hex_of_der() {
    let ca = ClusterCa::generate("prod").unwrap();
    let fingerprint = ca.fingerprint();
    assert_eq!(fingerprint.len(), 64);
    assert!(fingerprint
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(
        fingerprint,
        hex::encode(Sha256::digest(ca.cert_der().as_ref()))
    );
    assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(ca.key_pem().contains("PRIVATE KEY"));
    let cert = ca.cert_der();
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
    assert!(parsed.is_ca());
    let validity = parsed.validity().time_to_expiration().unwrap();
    assert!(validity > Duration::days(3640) && validity <= Duration::days(3650));
}

#[test]
fn ca_from_pem_roundtrip_keeps_fingerprint_and_can_still_issue() {
    let ca = ClusterCa::generate("prod").unwrap();
    let restored = ClusterCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
    assert_eq!(restored.fingerprint(), ca.fingerprint());
    assert_eq!(restored.cert_pem(), ca.cert_pem());
    // A certificate issued by the restored CA is trusted by peers holding the original one.
    let node_1 = restored.issue_node_certificate("alpha", 1, &[]).unwrap();
    let node_2 = ca.issue_node_certificate("beta", 2, &[]).unwrap();
    let ca_der = ca.cert_der();
    let (_, _, outcome) = connect(
        client_config(&ca_der, &node_2).unwrap(),
        &node_id_dns_name(1),
        server_config(&ca_der, &node_1).unwrap(),
    );
    outcome.unwrap();
}

#[test]
fn ca_from_pem_refuses_garbage_and_a_foreign_key() {
    let ca = ClusterCa::generate("prod").unwrap();
    let other = ClusterCa::generate("other").unwrap();
    assert!(matches!(
        ClusterCa::from_pem("not a pem", &ca.key_pem()),
        Err(PkiError::InvalidCa(_))
    ));
    assert!(matches!(
        ClusterCa::from_pem(&ca.cert_pem(), "nope"),
        Err(PkiError::InvalidCa(_))
    ));
    assert!(matches!(
        ClusterCa::from_pem(&ca.cert_pem(), &other.key_pem()),
        Err(PkiError::CaKeyMismatch)
    ));
}

#[test]
fn node_certificate_carries_names_ids_and_both_usages() {
    let Cluster { node_1, .. } = cluster("prod");
    let cert = node_1.cert_der().unwrap();
    node_1.key_der().unwrap();
    assert_eq!(node_id_of(&cert), Some(1));
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
    let san = parsed.subject_alternative_name().unwrap().unwrap();
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert!(names.contains(&"DNSName(alpha)".to_string()), "{names:?}");
    assert!(
        names.contains(&"DNSName(node-1.shoal.internal)".to_string()),
        "{names:?}"
    );
    assert!(san
        .value
        .general_names
        .contains(&x509_parser::extensions::GeneralName::IPAddress(&[
            10, 0, 0, 1
        ])));
    let eku = parsed.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!parsed.is_ca());
    let validity = parsed.validity().time_to_expiration().unwrap();
    assert!(validity > Duration::days(360) && validity <= Duration::days(365));
}

#[test]
fn node_certificate_refuses_a_name_that_is_not_dns() {
    let ca = ClusterCa::generate("prod").unwrap();
    for bad in ["", "has space", "-lead", "a..b", "ünï"] {
        assert!(
            matches!(
                ca.issue_node_certificate(bad, 1, &[]),
                Err(PkiError::InvalidNodeName(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn node_id_of_reads_only_well_formed_ids() {
    assert_eq!(parse_node_id_dns_name("node-42.shoal.internal"), Some(42));
    assert_eq!(parse_node_id_dns_name("node-.shoal.internal"), None);
    assert_eq!(parse_node_id_dns_name("node-+4.shoal.internal"), None);
    assert_eq!(parse_node_id_dns_name("node-4.shoal.internal.evil"), None);
    assert_eq!(
        parse_node_id_dns_name("node-99999999999999999999.shoal.internal"),
        None
    );
    let ca = ClusterCa::generate("prod").unwrap();
    assert_eq!(node_id_of(&ca.cert_der()), None);
    assert_eq!(node_id_of(&CertificateDer::from(vec![1, 2, 3])), None);
    // A node name that looks like another node's id makes the certificate carry no id.
    let ambiguous = ca
        .issue_node_certificate("node-7.shoal.internal", 8, &[])
        .unwrap();
    assert_eq!(node_id_of(&ambiguous.cert_der().unwrap()), None);
}

#[test]
fn mutual_tls_13_handshake_between_two_nodes() {
    let Cluster { ca, node_1, node_2 } = cluster("prod");
    let ca_der = ca.cert_der();
    let (client, server, outcome) = connect(
        client_config(&ca_der, &node_2).unwrap(),
        &node_id_dns_name(1),
        server_config(&ca_der, &node_1).unwrap(),
    );
    outcome.unwrap();
    assert_eq!(
        server.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(client.alpn_protocol(), Some(ALPN));
    assert_eq!(server.alpn_protocol(), Some(ALPN));
    let client_chain = server.peer_certificates().unwrap();
    assert_eq!(node_id_of(&client_chain[0]), Some(2));
    let server_chain = client.peer_certificates().unwrap();
    assert_eq!(node_id_of(&server_chain[0]), Some(1));
    assert_eq!(fingerprint_of(&server_chain[1]), ca.fingerprint());
}

#[test]
fn client_dialing_a_node_id_refuses_a_server_that_is_another_node() {
    let Cluster { ca, node_1, node_2 } = cluster("prod");
    let ca_der = ca.cert_der();
    let (_, _, outcome) = connect(
        client_config(&ca_der, &node_2).unwrap(),
        &node_id_dns_name(3),
        server_config(&ca_der, &node_1).unwrap(),
    );
    let (side, err) = outcome.unwrap_err();
    assert_eq!(side, Side::Client);
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "{err:?}"
    );
}

#[test]
fn server_refuses_a_client_certificate_from_another_ca() {
    let Cluster { ca, node_1, .. } = cluster("prod");
    let foreign = cluster("foreign");
    let (_, _, outcome) = connect(
        client_config(&foreign.ca.cert_der(), &foreign.node_2).unwrap(),
        "alpha",
        server_config(&ca.cert_der(), &node_1).unwrap(),
    );
    // The client trusts only the foreign CA, so it refuses first; with the server's CA
    // trusted, the server refuses the foreign client certificate.
    assert_eq!(outcome.unwrap_err().0, Side::Client);
    let mut trusting = client_config(&foreign.ca.cert_der(), &foreign.node_2).unwrap();
    trusting
        .dangerous()
        .set_certificate_verifier(Arc::new(PinnedCaVerifier {
            fingerprint: ca.fingerprint(),
            algorithms: provider().signature_verification_algorithms,
        }));
    let (_, _, outcome) = connect(
        trusting,
        "alpha",
        server_config(&ca.cert_der(), &node_1).unwrap(),
    );
    let (side, err) = outcome.unwrap_err();
    assert_eq!(side, Side::Server);
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "{err:?}"
    );
}

/// A client that trusts the cluster CA and offers `shoal/1` but has no certificate.
fn client_without_certificate(ca: &ClusterCa) -> ClientConfig {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(root_store(&ca.cert_der()).unwrap())
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    config
}

#[test]
fn server_refuses_a_client_without_a_certificate() {
    let Cluster { ca, node_1, .. } = cluster("prod");
    let (_, _, outcome) = connect(
        client_without_certificate(&ca),
        &node_id_dns_name(1),
        server_config(&ca.cert_der(), &node_1).unwrap(),
    );
    let (side, err) = outcome.unwrap_err();
    assert_eq!(side, Side::Server);
    assert_eq!(err, rustls::Error::NoCertificatesPresented);
}

#[test]
fn cluster_server_negotiates_shoal_1_with_a_node_and_sees_its_certificate() {
    let Cluster { ca, node_1, node_2 } = cluster("prod");
    let ca_der = ca.cert_der();
    let (client, server, outcome) = connect(
        client_config(&ca_der, &node_2).unwrap(),
        &node_id_dns_name(1),
        cluster_server_config(&ca_der, &node_1).unwrap(),
    );
    outcome.unwrap();
    assert_eq!(client.alpn_protocol(), Some(ALPN));
    assert_eq!(server.alpn_protocol(), Some(ALPN));
    assert_eq!(node_id_of(&server.peer_certificates().unwrap()[0]), Some(2));
}

#[test]
fn cluster_server_accepts_a_client_without_a_certificate_but_not_a_foreign_one() {
    let Cluster { ca, node_1, .. } = cluster("prod");
    // The joining node: no certificate, and it can only speak the join protocol.
    let (client, server, outcome) = connect(
        pinned_client_config(&ca.fingerprint()).unwrap(),
        "seed.example.com",
        cluster_server_config(&ca.cert_der(), &node_1).unwrap(),
    );
    outcome.unwrap();
    assert!(server.peer_certificates().is_none());
    assert_eq!(client.alpn_protocol(), Some(JOIN_ALPN));
    assert_eq!(server.alpn_protocol(), Some(JOIN_ALPN));
    assert_eq!(
        server.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    // TLS lets a certificate-less `shoal/1` client in; the QUIC layer must close it.
    let (_, server, outcome) = connect(
        client_without_certificate(&ca),
        &node_id_dns_name(1),
        cluster_server_config(&ca.cert_der(), &node_1).unwrap(),
    );
    outcome.unwrap();
    assert!(server.peer_certificates().is_none());
    assert_eq!(server.alpn_protocol(), Some(ALPN));

    let foreign = cluster("foreign");
    let mut trusting = client_config(&foreign.ca.cert_der(), &foreign.node_2).unwrap();
    trusting
        .dangerous()
        .set_certificate_verifier(Arc::new(PinnedCaVerifier {
            fingerprint: ca.fingerprint(),
            algorithms: provider().signature_verification_algorithms,
        }));
    let (_, _, outcome) = connect(
        trusting,
        "alpha",
        cluster_server_config(&ca.cert_der(), &node_1).unwrap(),
    );
    assert_eq!(outcome.unwrap_err().0, Side::Server);
}

#[test]
fn pinned_client_cannot_reach_a_server_without_the_join_protocol() {
    let Cluster { ca, node_1, .. } = cluster("prod");
    let (_, _, outcome) = connect(
        pinned_client_config(&ca.fingerprint()).unwrap(),
        "seed.example.com",
        server_config(&ca.cert_der(), &node_1).unwrap(),
    );
    let (side, err) = outcome.unwrap_err();
    assert_eq!(side, Side::Server);
    assert_eq!(err, rustls::Error::NoApplicationProtocol);
}

#[test]
fn pinned_client_accepts_the_right_fingerprint_in_any_case() {
    let Cluster { ca, node_1, .. } = cluster("prod");
    let (client, _, outcome) = connect(
        pinned_client_config(&ca.fingerprint().to_uppercase()).unwrap(),
        "10.9.9.9",
        cluster_server_config(&ca.cert_der(), &node_1).unwrap(),
    );
    outcome.unwrap();
    assert_eq!(
        client.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[test]
fn pinned_client_refuses_a_wrong_fingerprint() {
    let Cluster { ca, node_1, .. } = cluster("prod");
    let other = ClusterCa::generate("other").unwrap();
    let (_, _, outcome) = connect(
        pinned_client_config(&other.fingerprint()).unwrap(),
        "seed.example.com",
        cluster_server_config(&ca.cert_der(), &node_1).unwrap(),
    );
    let (side, err) = outcome.unwrap_err();
    assert_eq!(side, Side::Client);
    let rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(cause))) = err else {
        panic!("not a fingerprint mismatch: {err:?}");
    };
    let cause = cause.downcast_ref::<PkiError>().unwrap();
    assert!(matches!(cause, PkiError::FingerprintMismatch));
    assert!(
        cause.to_string().contains("does not match the join token"),
        "{cause}"
    );
}

#[test]
fn pinned_client_refuses_a_leaf_not_signed_by_the_pinned_ca_it_sends() {
    // An impostor can send the real CA certificate (it is public) next to its own leaf.
    let Cluster { ca, .. } = cluster("prod");
    let impostor = cluster("impostor");
    let (_, _, outcome) = connect(
        pinned_client_config(&ca.fingerprint()).unwrap(),
        "seed.example.com",
        cluster_server_config(&ca.cert_der(), &impostor.node_1).unwrap(),
    );
    let (side, err) = outcome.unwrap_err();
    assert_eq!(side, Side::Client);
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "{err:?}"
    );
}

#[test]
fn pinned_client_config_refuses_a_malformed_fingerprint() {
    for bad in ["", "abc", &"g".repeat(64), &"a".repeat(65)] {
        assert!(
            matches!(
                pinned_client_config(bad),
                Err(PkiError::InvalidFingerprint(_))
            ),
            "{bad:?}"
        );
    }
}

fn token(now_unix: u64) -> JoinToken {
    let mut rng = StdRng::seed_from_u64(7);
    JoinToken::new("10.0.0.1:7947", &"ab".repeat(32), 3600, now_unix, &mut rng)
}

#[test]
fn token_has_a_fresh_32_byte_secret_and_an_expiry() {
    let token = token(1_000);
    assert_eq!(URL_SAFE_NO_PAD.decode(&token.secret).unwrap().len(), 32);
    assert_eq!(token.expires_at_unix, 4_600);
    let mut rng = StdRng::seed_from_u64(8);
    let other = JoinToken::new("10.0.0.1:7947", &"ab".repeat(32), 3600, 1_000, &mut rng);
    assert_ne!(token.secret, other.secret);
}

#[test]
fn token_encode_decode_roundtrip() {
    let token = token(1_000);
    let text = token.encode();
    assert!(text.starts_with("shoal-join-v1."));
    assert!(!text.contains(char::is_whitespace));
    assert_eq!(JoinToken::decode(&text).unwrap(), token);
    assert_eq!(JoinToken::decode(&format!("  {text}\n")).unwrap(), token);
}

#[test]
fn token_decode_refuses_garbage_wrong_prefix_and_tampering() {
    let text = token(1_000).encode();
    let body = text.strip_prefix(JOIN_TOKEN_PREFIX).unwrap();
    let json = |value: &str| format!("{JOIN_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(value));
    let cases = [
        String::new(),
        "garbage".to_string(),
        format!("shoal-join-v2.{body}"),
        format!("{JOIN_TOKEN_PREFIX}{}", &body[..body.len() / 2]),
        format!("{JOIN_TOKEN_PREFIX}{body}!!"),
        json("{}"),
        json(r#"{"seed":"a:1","ca_fingerprint":"zz","secret":"s","expires_at_unix":1}"#),
        json(r#"{"seed":"","ca_fingerprint":"","secret":"","expires_at_unix":1}"#),
    ];
    for case in cases {
        let err = JoinToken::decode(&case).unwrap_err();
        assert!(
            matches!(err, PkiError::MalformedToken(_)),
            "{case:?}: {err:?}"
        );
        assert!(err.to_string().contains("shoal seed"), "{err}");
    }
}

#[test]
fn token_verify_accepts_the_issued_token_until_it_expires() {
    let issued = token(1_000);
    let presented = JoinToken::decode(&issued.encode()).unwrap();
    issued.verify(&presented, 1_000).unwrap();
    issued.verify(&presented, 4_599).unwrap();
    let err = issued.verify(&presented, 4_600).unwrap_err();
    assert!(matches!(
        err,
        PkiError::Expired {
            expired_at_unix: 4_600,
            now_unix: 4_600
        }
    ));
    assert!(err.to_string().contains("expired"), "{err}");
}

#[test]
fn token_verify_refuses_a_wrong_secret_and_a_forged_expiry() {
    let issued = token(1_000);
    let mut wrong = issued.clone();
    wrong.secret = URL_SAFE_NO_PAD.encode([0u8; 32]);
    assert!(matches!(
        issued.verify(&wrong, 1_000),
        Err(PkiError::WrongToken)
    ));
    // A wrong secret says nothing about expiry.
    assert!(matches!(
        issued.verify(&wrong, 9_999),
        Err(PkiError::WrongToken)
    ));
    let mut prefix = issued.clone();
    prefix.secret.pop();
    assert!(matches!(
        issued.verify(&prefix, 1_000),
        Err(PkiError::WrongToken)
    ));
    // The seed's own expiry counts, not the one the joining node presents.
    let mut extended = issued.clone();
    extended.expires_at_unix = u64::MAX;
    assert!(matches!(
        issued.verify(&extended, 5_000),
        Err(PkiError::Expired { .. })
    ));
}

#[test]
fn identity_with_garbage_pem_is_a_clear_error() {
    let identity = NodeIdentity {
        cert_pem: "x".into(),
        key_pem: "y".into(),
    };
    assert!(matches!(
        identity.cert_der(),
        Err(PkiError::InvalidIdentity(_))
    ));
    assert!(matches!(
        identity.key_der(),
        Err(PkiError::InvalidIdentity(_))
    ));
    let ca = ClusterCa::generate("prod").unwrap();
    assert!(server_config(&ca.cert_der(), &identity).is_err());
    assert!(!format!("{identity:?}").contains("\"y\""));
    assert!(!format!("{ca:?}").contains("PRIVATE"));
}
