//! What must hold for any Host header, path and domain given to `shoal_proxy::route`
//! (`route`, `host_name`, `is_known_host`).
//!
//! Shared by fuzz/fuzz_targets/route.rs and node/tests/fuzz_regressions.rs.

use shoal_proxy::route::{
    host_name, is_known_host, is_valid_app_name, prefix_for, route, Mode, Route,
};

/// One routing question, decoded from a fuzz input.
#[derive(Debug)]
pub struct RouteInput {
    /// `None` when the request had no Host header.
    pub host: Option<String>,
    pub path: String,
    pub domain: String,
}

impl RouteInput {
    /// Decodes `host \n path \n domain` (UTF-8, lossily): an empty host line means no Host
    /// header, a missing domain line means `localhost`. Corpus files are written this way.
    pub fn from_fuzz_input(data: &[u8]) -> Self {
        let text = String::from_utf8_lossy(data);
        let mut lines = text.splitn(3, '\n');
        let host = lines.next().unwrap_or_default();
        let path = lines.next().unwrap_or_default();
        let domain = lines.next().unwrap_or("localhost");
        Self {
            host: (!host.is_empty()).then(|| host.to_owned()),
            path: path.to_owned(),
            domain: domain.to_owned(),
        }
    }
}

/// Routes `input` and checks the result against what each variant promises.
pub fn check_route(input: &RouteInput) -> Result<Route, String> {
    let RouteInput { host, path, domain } = input;
    let host = host.as_deref();
    let routed = route(host, path, domain);
    let fail = |why: &str| Err(format!("{why}: {input:?} routed to {routed:?}"));
    for text in [host.unwrap_or_default(), path, domain] {
        check_host_name(text)?;
    }
    let host_app = host_app(host, domain);
    if let (Some(host), Some(app)) = (host, &host_app) {
        // The ingress refuses requests on unknown hosts before routing them.
        if !is_known_host(host, domain) {
            return fail(&format!("`{app}`'s own host is not a known host"));
        }
    }
    match &routed {
        Route::App { app, .. } | Route::AddTrailingSlash { app } if !is_valid_app_name(app) => {
            return fail("app name is not a valid app name");
        }
        Route::App {
            app,
            mode: Mode::Host,
            path: app_path,
        } => {
            if host_app.as_deref() != Some(app.as_str()) {
                return fail("host mode for a host that is not `<app>.<domain>`");
            }
            if app_path != path {
                return fail("host mode changed the path");
            }
        }
        Route::App {
            app,
            mode: Mode::Prefix,
            path: app_path,
        } => {
            if !app_path.starts_with('/') {
                return fail("prefix mode path does not start with `/`");
            }
            if format!("{}{app_path}", prefix_for(app)) != *path {
                return fail("prefix mode path is not the request path less the prefix");
            }
        }
        Route::AddTrailingSlash { app } if *path != prefix_for(app) => {
            return fail("trailing slash redirect for another path");
        }
        // Health, Ready, NotFound, and variants added later: checked below if at all.
        _ => {}
    }
    if let Some(app) = &host_app {
        if !matches!(&routed, Route::App { mode: Mode::Host, app: routed_app, .. } if routed_app == app)
        {
            return fail(&format!(
                "`{app}.{domain}` is an app host, not routed by host"
            ));
        }
        return Ok(routed);
    }
    let expected_health = match path.as_str() {
        "/healthz" => Some(Route::Health),
        "/readyz" => Some(Route::Ready),
        _ => None,
    };
    if let Some(expected) = expected_health {
        if routed != expected {
            return fail("health endpoint not answered on a host that is not an app's");
        }
    }
    // The inverse: a valid `/apps/<app>/...` path on a non-app host reaches that app.
    if let Some(rest) = path.strip_prefix("/apps/") {
        let (app, app_path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let expected = match (is_valid_app_name(app), app_path.is_empty()) {
            (false, _) => Route::NotFound,
            (true, true) => Route::AddTrailingSlash { app: app.into() },
            (true, false) => Route::App {
                app: app.into(),
                mode: Mode::Prefix,
                path: app_path.into(),
            },
        };
        if routed != expected {
            return fail("path route differs from the `/apps/<app>/` rule");
        }
    }
    Ok(routed)
}

/// The app a Host header names, by an independent reading of DESIGN's rule: `<app>.<domain>`,
/// any case, any numeric port, trailing dots ignored, never an IPv6 literal.
fn host_app(host: Option<&str>, domain: &str) -> Option<String> {
    let host = host?;
    if host.starts_with('[') {
        return None;
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let app = name.strip_suffix(&format!(".{domain}"))?;
    is_valid_app_name(app).then(|| app.to_owned())
}

fn check_host_name(host: &str) -> Result<(), String> {
    let name = host_name(host);
    if !host.starts_with(name) {
        return Err(format!(
            "host_name({host:?}) = {name:?} is not a prefix of it"
        ));
    }
    if name.ends_with('.') {
        return Err(format!(
            "host_name({host:?}) = {name:?} keeps a trailing dot"
        ));
    }
    let rest = &host[name.len()..];
    let port = rest.trim_start_matches('.');
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|digits| digits.bytes().all(|b| b.is_ascii_digit()));
    if !port_ok {
        return Err(format!(
            "host_name({host:?}) = {name:?} dropped {rest:?}, which is not dots and a port"
        ));
    }
    Ok(())
}
