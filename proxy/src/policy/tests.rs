use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::*;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn private_with_token(token: &str) -> Policy {
    Policy {
        access: Access::Private,
        tokens: vec![BearerToken {
            name: "ci".into(),
            sha256: token_digest(token),
            created_at_unix_ms: 0,
        }],
        ..Policy::default()
    }
}

#[test]
fn cidrs_parse_and_match_both_families() {
    let net: Cidr = "10.1.0.0/16".parse().unwrap();
    assert!(net.contains(ip("10.1.200.3")));
    assert!(!net.contains(ip("10.2.0.1")));
    assert!(
        net.contains(ip("::ffff:10.1.0.9")),
        "a mapped v4 address is v4"
    );
    let one: Cidr = "192.0.2.7".parse().unwrap();
    assert_eq!(one.prefix(), 32);
    assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
    let v6: Cidr = "2001:db8::/32".parse().unwrap();
    assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
    let any: Cidr = "0.0.0.0/0".parse().unwrap();
    assert!(any.contains(ip("8.8.8.8")) && !any.contains(ip("::1")));
    for bad in [
        "10.0.0.1/8",
        "10.0.0.0/33",
        "example.com",
        "",
        "1.2.3.4/",
        "::/129",
    ] {
        assert!(bad.parse::<Cidr>().is_err(), "{bad} parsed");
    }
    assert_eq!(
        "10.1.0.0/16".parse::<Cidr>().unwrap().to_string(),
        "10.1.0.0/16"
    );
}

#[test]
fn rates_parse_in_the_units_people_write() {
    let rate: RateLimit = "100/min".parse().unwrap();
    assert_eq!((rate.count, rate.period.as_secs()), (100, 60));
    assert_eq!("20/10s".parse::<RateLimit>().unwrap().period.as_secs(), 10);
    assert_eq!("5/s".parse::<RateLimit>().unwrap().to_string(), "5/s");
    for bad in ["0/min", "100", "100/fortnight", "-1/s", "1/0s", "1/2d"] {
        assert!(bad.parse::<RateLimit>().is_err(), "{bad} parsed");
    }
}

#[test]
fn the_client_address_comes_from_the_socket_unless_a_trusted_proxy_forwarded() {
    let policy = Policy {
        trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
        ..Policy::default()
    };
    let forwarded = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.2")]);
    // An untrusted peer's header is ignored.
    assert_eq!(
        policy.client_ip(ip("198.51.100.1"), &forwarded),
        ip("198.51.100.1")
    );
    // A trusted peer: the nearest untrusted hop, not the spoofable leftmost one.
    assert_eq!(
        policy.client_ip(ip("10.0.0.1"), &forwarded),
        ip("203.0.113.9")
    );
    // Garbage stops the walk.
    let garbage = headers(&[("x-forwarded-for", "203.0.113.9, nonsense")]);
    assert_eq!(policy.client_ip(ip("10.0.0.1"), &garbage), ip("10.0.0.1"));
}

#[test]
fn the_allowlist_refuses_others_with_403() {
    let policy = Policy {
        allow_ips: vec!["192.0.2.0/24".parse().unwrap()],
        ..Policy::default()
    };
    assert!(policy.ip_allowed(ip("192.0.2.77")).is_ok());
    let refusal = policy.ip_allowed(ip("198.51.100.1")).unwrap_err();
    assert_eq!(refusal.status, StatusCode::FORBIDDEN);
    assert!(Policy::default().ip_allowed(ip("198.51.100.1")).is_ok());
}

#[test]
fn bearer_tokens_are_checked_by_hash_and_name_the_token() {
    let policy = private_with_token("s3cret");
    let ok = headers(&[("authorization", "Bearer s3cret")]);
    assert_eq!(
        policy.authenticate("api", &ok, None, 0),
        Auth::Granted(Identity::Token("ci".into()))
    );
    for wrong in [
        vec![],
        vec![("authorization", "Bearer s3cre")],
        vec![("authorization", "Token s3cret")],
    ] {
        match policy.authenticate("api", &headers(&wrong), None, 0) {
            Auth::Refused(refusal) => {
                assert_eq!(refusal.status, StatusCode::UNAUTHORIZED);
                assert!(refusal.challenge.unwrap().starts_with("Bearer"));
            }
            other => panic!("{wrong:?} gave {other:?}"),
        }
    }
    // A public app needs nothing.
    assert_eq!(
        Policy::default().authenticate("api", &HeaderMap::new(), None, 0),
        Auth::Granted(Identity::Anyone)
    );
}

#[test]
fn basic_auth_asks_for_the_password_check_and_challenges_with_basic() {
    let hash = hash_password("hunter2").unwrap();
    let policy = Policy {
        access: Access::Private,
        users: vec![BasicUser {
            name: "alice".into(),
            hash: hash.clone(),
        }],
        ..Policy::default()
    };
    let basic = format!("Basic {}", STANDARD.encode("alice:hunter2"));
    match policy.authenticate("dash", &headers(&[("authorization", &basic)]), None, 0) {
        Auth::CheckPassword {
            user,
            password,
            hash: h,
        } => {
            assert_eq!((user.as_str(), password.as_str()), ("alice", "hunter2"));
            assert!(verify_password(&password, &h));
            assert!(!verify_password("hunter3", &h));
        }
        other => panic!("{other:?}"),
    }
    let unknown = format!("Basic {}", STANDARD.encode("mallory:x"));
    match policy.authenticate("dash", &headers(&[("authorization", &unknown)]), None, 0) {
        Auth::Refused(refusal) => assert!(refusal.challenge.unwrap().starts_with("Basic")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn share_links_open_one_app_until_they_expire_or_the_key_rotates() {
    let key = ShareKey {
        version: 1,
        key: "11".repeat(32),
    };
    let policy = Policy {
        access: Access::Private,
        share: Some(key.clone()),
        ..Policy::default()
    };
    let token = key.sign("dash", 1_000);
    let query = format!("a=1&{SHARE_PARAM}={token}");
    match policy.authenticate("dash", &HeaderMap::new(), Some(&query), 999_000) {
        Auth::Granted(Identity::Share {
            expires_unix_s,
            from_link,
            ..
        }) => {
            assert_eq!(expires_unix_s, 1_000);
            assert!(from_link);
        }
        other => panic!("{other:?}"),
    }
    let refused = |auth: Auth| match auth {
        Auth::Refused(refusal) => refusal.reason,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        refused(policy.authenticate("dash", &HeaderMap::new(), Some(&query), 1_000_000)),
        "share link expired"
    );
    // Another app's link, a forged one, a rotated key.
    assert_eq!(
        refused(policy.authenticate("other", &HeaderMap::new(), Some(&query), 0)),
        "invalid share link"
    );
    let forged = format!("{SHARE_PARAM}=9999999999.1.{}", &token[7..]);
    assert_eq!(
        refused(policy.authenticate("dash", &HeaderMap::new(), Some(&forged), 0)),
        "invalid share link"
    );
    let rotated = Policy {
        share: Some(ShareKey {
            version: 2,
            key: "22".repeat(32),
        }),
        ..policy.clone()
    };
    assert_eq!(
        refused(rotated.authenticate("dash", &HeaderMap::new(), Some(&query), 0)),
        "invalid share link"
    );
    // The cookie a link set works the same way.
    let cookie = format!("theme=dark; {}={token}", share_cookie_name("dash"));
    assert!(matches!(
        policy.authenticate("dash", &headers(&[("cookie", &cookie)]), None, 0),
        Auth::Granted(Identity::Share {
            from_link: false,
            ..
        })
    ));
}

#[test]
fn cors_preflights_are_answered_only_for_allowed_origins_and_methods() {
    let settings: PolicySettings = toml::from_str(
        "[cors]\nallow_origins = [\"https://notebook.example\"]\nallow_methods = [\"GET\", \"PUT\"]\n",
    )
    .unwrap();
    settings.validate().unwrap();
    let mut policy = Policy::default();
    settings.apply_to(&mut policy);
    let preflight = |origin: &str, method: &str| {
        policy.preflight(
            &Method::OPTIONS,
            &headers(&[
                ("origin", origin),
                ("access-control-request-method", method),
                ("access-control-request-headers", "content-type"),
            ]),
        )
    };
    match preflight("https://notebook.example", "PUT") {
        Preflight::Allowed(answer) => {
            assert!(answer.contains(&(
                "access-control-allow-origin",
                "https://notebook.example".into()
            )));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        preflight("https://evil.example", "PUT"),
        Preflight::Refused(_)
    ));
    assert!(matches!(
        preflight("https://notebook.example", "DELETE"),
        Preflight::Refused(_)
    ));
    assert!(policy.cors_headers("https://evil.example").is_empty());
    assert_eq!(
        Policy::default().preflight(&Method::OPTIONS, &headers(&[("origin", "x")])),
        Preflight::NotOne
    );
}

#[test]
fn settings_name_their_bad_part() {
    let bad = |text: &str| {
        let parsed: Result<PolicySettings, _> = toml::from_str(text);
        match parsed {
            Err(error) => error.to_string(),
            Ok(settings) => settings.validate().unwrap_err().to_string(),
        }
    };
    assert!(bad("rate_limit = \"fast\"").contains("rate_limit"));
    assert!(bad("allow_ips = [\"10.0.0.1/8\"]").contains("10.0.0.1/8"));
    assert!(bad("max_body = \"ten\"").contains("ten"));
    assert!(
        bad("[cors]\nallow_origins = [\"*\"]\nallow_credentials = true").contains("credentials")
    );
    assert!(bad("[headers]\nframe_options = \"ALLOW\"").contains("frame_options"));
    assert!(bad("[users]\nalice = \"plaintext\"").contains("alice"));
    assert!(bad("acess = \"private\"").contains("acess"));
}

#[test]
fn settings_change_only_what_they_name() {
    let mut policy = private_with_token("t");
    policy.rate_limit = Some("5/s".parse().unwrap());
    let settings: PolicySettings =
        toml::from_str("max_body = \"1KiB\"\nallow_ips = [\"127.0.0.1\"]").unwrap();
    settings.validate().unwrap();
    settings.apply_to(&mut policy);
    assert_eq!(policy.max_body, 1024);
    assert_eq!(policy.allow_ips.len(), 1);
    assert_eq!(policy.access, Access::Private, "untouched");
    assert_eq!(policy.tokens.len(), 1, "untouched");
    assert_eq!(policy.rate_limit.unwrap().count, 5, "untouched");
    let off: PolicySettings = toml::from_str("rate_limit = \"off\"").unwrap();
    off.apply_to(&mut policy);
    assert_eq!(policy.rate_limit, None);
}

#[test]
fn security_headers_default_and_can_be_replaced_or_turned_off() {
    let rules = SecurityHeaders::default().rules();
    assert!(rules.contains(&("x-frame-options", HeaderRule::Default("SAMEORIGIN"))));
    let custom = SecurityHeaders {
        frame_options: Some("off".into()),
        content_security_policy: Some("default-src 'self'".into()),
        ..SecurityHeaders::default()
    };
    let rules = custom.rules();
    assert!(rules.contains(&("x-frame-options", HeaderRule::Off)));
    assert!(rules.contains(&(
        "content-security-policy",
        HeaderRule::Set("default-src 'self'".into())
    )));
}

#[test]
fn query_and_cookie_helpers_remove_only_the_named_entry() {
    assert_eq!(
        query_without("a=1&shoal_share=x&b=2", SHARE_PARAM).as_deref(),
        Some("a=1&b=2")
    );
    assert_eq!(query_without("shoal_share=x", SHARE_PARAM), None);
    let map = headers(&[("cookie", "a=1; shoal_share_dash=t"), ("cookie", "b=2")]);
    assert_eq!(
        cookies_without(&map, "shoal_share_dash").as_deref(),
        Some("a=1; b=2")
    );
    assert_eq!(cookie_value(&map, "b").as_deref(), Some("2"));
}

#[test]
fn password_hashes_with_unbounded_costs_are_refused() {
    let salt = "c29tZXNhbHRzb21lc2FsdA";
    let ok = format!(
        "$argon2id$v=19$m=19456,t=2,p=1${salt}$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    );
    assert!(check_hash(&ok).is_ok(), "{:?}", check_hash(&ok));
    for costly in [
        "m=1048576,t=2,p=1",
        "m=19456,t=4294967295,p=1",
        "m=19456,t=2,p=944492962",
        "m=19456,t=2,p=1,t=99",
    ] {
        let hash =
            format!("$argon2id$v=19${costly}${salt}$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        assert!(check_hash(&hash).is_err(), "{costly} accepted");
        assert!(!verify_password("x", &hash), "{costly} verified");
    }
}
