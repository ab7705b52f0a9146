//! What must hold for any `[policy]` table of `shoal.toml`, and for the values in it.
//!
//! Shared by fuzz/fuzz_targets/policy.rs and node/tests/fuzz_regressions.rs. A fuzz input is
//! TOML text: it is parsed as [`PolicySettings`], and each of its lines and each quoted string
//! in it is also parsed as a [`RateLimit`], a [`Cidr`], a [`Size`] and an IP address, so one
//! corpus serves the table and its values.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use shoal_proxy::policy::{Cidr, PolicySettings, RateLimit, Size};

/// Longest period a rate limit may count over.
const MAX_PERIOD_SECS: u64 = 86_400;
/// Generous bounds on what one login may cost (argon2's default is 19 MiB, 2 passes, 1 lane):
/// past them, a deploy-token holder can stall or exhaust every node's ingress.
const MAX_LOGIN_MEMORY_KIB: u64 = 256 * 1024;
const MAX_LOGIN_PASSES: u64 = 16;
const MAX_LOGIN_LANES: u64 = 16;

/// Parses and validates `text` as a policy table, then every value candidate in it.
pub fn check_policy(text: &str) -> Result<(), String> {
    check_settings(text)?;
    let candidates = value_candidates(text);
    let addresses: Vec<IpAddr> = candidates
        .iter()
        .filter_map(|candidate| candidate.trim().parse().ok())
        .collect();
    for candidate in &candidates {
        check_rate_limit(candidate)?;
        check_size(candidate)?;
        if let Ok(cidr) = candidate.parse::<Cidr>() {
            check_cidr(candidate, cidr, &addresses)?;
        }
    }
    Ok(())
}

/// A validated table survives being written back as TOML and read again.
fn check_settings(text: &str) -> Result<(), String> {
    let Ok(settings) = toml::from_str::<PolicySettings>(text) else {
        return Ok(());
    };
    if settings.validate().is_err() {
        return Ok(());
    }
    let written = toml::to_string(&settings)
        .map_err(|err| format!("valid settings {settings:?} cannot be written: {err}"))?;
    let read: PolicySettings = toml::from_str(&written)
        .map_err(|err| format!("valid settings written as {written:?} do not parse: {err}"))?;
    if read != settings {
        return Err(format!(
            "settings changed through TOML: {settings:?} became {read:?}"
        ));
    }
    read.validate().map_err(|err| {
        format!("valid settings written as {written:?} no longer validate: {err}")
    })?;
    for (name, hash) in settings.users.iter().flatten() {
        check_login_cost(name, hash)?;
    }
    Ok(())
}

/// Every basic-auth login verifies the user's hash with the parameters written in it, on the
/// ingress of every node: a valid policy must not let one login take gigabytes or minutes.
fn check_login_cost(name: &str, hash: &str) -> Result<(), String> {
    // `$argon2id$v=19$m=19456,t=2,p=1$salt$hash`; argon2's defaults for what is left out.
    let params = hash
        .split('$')
        .skip(2)
        .find(|field| field.contains('=') && !field.starts_with("v="))
        .unwrap_or_default();
    let param = |key: &str, default: u64| {
        params
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            // argon2 reads a repeated parameter's last value.
            .rfind(|(k, _)| *k == key)
            .and_then(|(_, value)| value.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let (memory_kib, passes, lanes) = (param("m", 19_456), param("t", 2), param("p", 1));
    if memory_kib > MAX_LOGIN_MEMORY_KIB || passes > MAX_LOGIN_PASSES || lanes > MAX_LOGIN_LANES {
        return Err(format!(
            "a valid policy lets a login for user `{name}` cost m={memory_kib} KiB, t={passes} \
             passes, p={lanes} lanes: {hash:?}"
        ));
    }
    Ok(())
}

/// Every line, and every `"..."` string, of `text`.
fn value_candidates(text: &str) -> Vec<&str> {
    let mut candidates: Vec<&str> = text.lines().collect();
    candidates.extend(text.split('"').skip(1).step_by(2));
    candidates
}

fn check_rate_limit(text: &str) -> Result<(), String> {
    let Ok(limit) = text.parse::<RateLimit>() else {
        return Ok(());
    };
    let secs = limit.period.as_secs();
    if limit.count == 0
        || limit.period.subsec_nanos() != 0
        || !(1..=MAX_PERIOD_SECS).contains(&secs)
    {
        return Err(format!("{text:?} parsed as the unusable rate {limit:?}"));
    }
    let shown = limit.to_string();
    if shown.parse::<RateLimit>() != Ok(limit) {
        return Err(format!(
            "rate {text:?} shows as {shown:?}, which does not parse back"
        ));
    }
    Ok(())
}

fn check_size(text: &str) -> Result<(), String> {
    let Ok(size) = text.parse::<Size>() else {
        return Ok(());
    };
    let shown = size.to_string();
    if shown.parse::<Size>() != Ok(size) {
        return Err(format!(
            "size {text:?} shows as {shown:?}, which does not parse back"
        ));
    }
    Ok(())
}

/// A block contains its own first and last address, not the ones just outside it, and
/// agrees with a bit-by-bit reading for every address in the input and at its edges.
fn check_cidr(text: &str, cidr: Cidr, addresses: &[IpAddr]) -> Result<(), String> {
    let shown = cidr.to_string();
    if shown.parse::<Cidr>() != Ok(cidr) {
        return Err(format!(
            "block {text:?} shows as {shown:?}, which does not parse back"
        ));
    }
    let Some((network, _)) = shown.split_once('/') else {
        return Err(format!(
            "block {text:?} shows as {shown:?}, without a prefix"
        ));
    };
    let network: IpAddr = network
        .parse()
        .map_err(|_| format!("block {text:?} shows as {shown:?}"))?;
    let (bits, width) = address_bits(network);
    let prefix = u32::from(cidr.prefix());
    if prefix > width {
        return Err(format!(
            "block {text:?} has prefix {prefix} past {width} bits"
        ));
    }
    let host_bits = width - prefix;
    let span = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    let mut expected = vec![(bits, true), (bits | span, true)];
    if let Some(below) = bits.checked_sub(1) {
        expected.push((below, false));
    }
    if (bits | span) < max_address(width) {
        expected.push(((bits | span) + 1, false));
    }
    for (address, inside) in expected {
        let ip = ip_from_bits(address, width);
        // `::ffff:a.b.c.d` is matched as IPv4 (by design), so an IPv6 block's edge there is
        // outside it; the bit-by-bit model below covers it.
        let inside = inside && address_bits(ip).1 == width;
        if cidr.contains(ip) != inside || inside != model_contains(network, prefix, ip) {
            return Err(format!("{cidr}.contains({ip}) is {}", cidr.contains(ip)));
        }
    }
    for &ip in addresses {
        let model = model_contains(network, prefix, ip);
        if cidr.contains(ip) != model {
            return Err(format!("{cidr}.contains({ip}) is {}", !model));
        }
    }
    Ok(())
}

/// The address as an integer, and its width in bits; `::ffff:a.b.c.d` counts as IPv4.
fn address_bits(ip: IpAddr) -> (u128, u32) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (u128::from(u32::from(v4)), 32),
            None => (u128::from(v6), 128),
        },
    }
}

fn max_address(width: u32) -> u128 {
    if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    }
}

fn ip_from_bits(bits: u128, width: u32) -> IpAddr {
    if width == 32 {
        let bits = u32::try_from(bits).expect("an IPv4 address fits 32 bits");
        IpAddr::from(Ipv4Addr::from(bits))
    } else {
        IpAddr::from(Ipv6Addr::from(bits))
    }
}

fn model_contains(network: IpAddr, prefix: u32, ip: IpAddr) -> bool {
    let (network, width) = address_bits(network);
    let (ip, ip_width) = address_bits(ip);
    if width != ip_width {
        return false;
    }
    (0..prefix).all(|bit| {
        let at = width - 1 - bit;
        (network >> at) & 1 == (ip >> at) & 1
    })
}
