//! Which app a request is for.
//!
//! Two routing modes reach the same app: by Host (`<app>.<domain>`), where the app owns the
//! whole path space, and by path (`/apps/<app>/...`) on any host, where the app lives under a
//! prefix and its responses are rewritten. Health endpoints answer only on hosts that are not
//! an app's, so an app keeps its own `/healthz`.

/// How the request named its app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `Host: <app>.<domain>`: the app sees the request path unchanged.
    Host,
    /// `/apps/<app>/...`: the prefix is stripped before the app sees the path.
    Prefix,
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /healthz`: the process is alive.
    Health,
    /// `GET /readyz`: the node can route.
    Ready,
    /// A request for an app.
    App {
        /// The app's name.
        app: String,
        /// How it was named.
        mode: Mode,
        /// The path as the app sees it: starts with `/`, still percent-encoded, no query.
        path: String,
    },
    /// `/apps/<app>` without its trailing slash: redirect so relative links resolve.
    AddTrailingSlash {
        /// The app's name.
        app: String,
    },
    /// Nothing here.
    NotFound,
    /// An app request on a Host that is neither the cluster's domain, one of its apps, a
    /// custom domain, an IP address nor `localhost`: answered 404, never forwarded.
    UnknownHost,
}

/// The path prefix under which `app` is served in [`Mode::Prefix`].
pub fn prefix_for(app: &str) -> String {
    format!("/apps/{app}")
}

/// Routes a request from its Host header (if any) and its path (no query).
pub fn route(host: Option<&str>, path: &str, domain: &str) -> Route {
    if let Some(app) = host.and_then(|host| app_from_host(host, domain)) {
        return Route::App {
            app,
            mode: Mode::Host,
            path: path.to_owned(),
        };
    }
    match path {
        "/healthz" => return Route::Health,
        "/readyz" => return Route::Ready,
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/apps/") else {
        return Route::NotFound;
    };
    let (app, app_path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, ""),
    };
    if !is_valid_app_name(app) {
        return Route::NotFound;
    }
    if app_path.is_empty() {
        return Route::AddTrailingSlash {
            app: app.to_owned(),
        };
    }
    Route::App {
        app: app.to_owned(),
        mode: Mode::Prefix,
        path: app_path.to_owned(),
    }
}

/// The app named by `host` when it is `<app>.<domain>` (any port, any case).
fn app_from_host(host: &str, domain: &str) -> Option<String> {
    let host = host_name(host).to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let app = host.strip_suffix(&domain)?.strip_suffix('.')?;
    is_valid_app_name(app).then(|| app.to_owned())
}

/// Whether `host` (a Host header value) may carry app requests: the domain or a name under
/// it, an IP address (clients that reach a node by address), or `localhost`. Custom domains
/// are checked by the caller, who knows them.
pub fn is_known_host(host: &str, domain: &str) -> bool {
    let name = host_name(host);
    if name.starts_with('[') || name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = name.to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name == domain
        || name
            .strip_suffix(&domain)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// The host name of a Host header value, without port or trailing dot.
pub fn host_name(host: &str) -> &str {
    strip_port(host).trim_end_matches('.')
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: never an app host.
        return host;
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// App names are single lowercase DNS labels, so they work in both routing modes.
pub fn is_valid_app_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_are_the_domain_its_names_addresses_and_localhost() {
        for host in [
            "apps.example.com",
            "API.apps.example.com:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "10.1.2.3",
            "localhost:8080",
        ] {
            assert!(is_known_host(host, "apps.example.com"), "{host}");
        }
        for host in [
            "evil.example",
            "xapps.example.com",
            "example.com",
            "apps.example.com.evil",
        ] {
            assert!(!is_known_host(host, "apps.example.com"), "{host}");
        }
    }

    fn app(name: &str, mode: Mode, path: &str) -> Route {
        Route::App {
            app: name.into(),
            mode,
            path: path.into(),
        }
    }

    #[test]
    fn host_routing_owns_the_whole_path_space() {
        let domain = "localhost";
        assert_eq!(
            route(Some("dash.localhost:8080"), "/healthz", domain),
            app("dash", Mode::Host, "/healthz")
        );
        assert_eq!(
            route(Some("dash.localhost"), "/apps/x/", domain),
            app("dash", Mode::Host, "/apps/x/")
        );
        assert_eq!(
            route(Some("dash.apps.example.com."), "/", "apps.example.com"),
            app("dash", Mode::Host, "/")
        );
        assert_eq!(
            route(Some("Dash.LocalHost:80"), "/", domain),
            app("dash", Mode::Host, "/")
        );
    }

    #[test]
    fn path_routing_works_on_any_other_host() {
        let domain = "localhost";
        assert_eq!(
            route(Some("10.0.0.1:8080"), "/apps/dash/a/b.css", domain),
            app("dash", Mode::Prefix, "/a/b.css")
        );
        assert_eq!(
            route(None, "/apps/dash/", domain),
            app("dash", Mode::Prefix, "/")
        );
        assert_eq!(
            route(Some("localhost:8080"), "/apps/dash", domain),
            Route::AddTrailingSlash { app: "dash".into() }
        );
        assert_eq!(route(Some("localhost"), "/healthz", domain), Route::Health);
        assert_eq!(route(Some("[::1]:8080"), "/readyz", domain), Route::Ready);
    }

    #[test]
    fn names_that_are_not_apps_route_nowhere() {
        let domain = "localhost";
        assert_eq!(route(Some("localhost"), "/", domain), Route::NotFound);
        assert_eq!(route(Some("localhost"), "/apps/", domain), Route::NotFound);
        assert_eq!(
            route(Some("localhost"), "/apps/Dash/", domain),
            Route::NotFound
        );
        assert_eq!(
            route(Some("localhost"), "/apps/-x/", domain),
            Route::NotFound
        );
        assert_eq!(
            route(Some("localhost"), "/apps/../etc/", domain),
            Route::NotFound
        );
        // A deeper subdomain or another domain is not an app host.
        assert_eq!(route(Some("a.b.localhost"), "/", domain), Route::NotFound);
        assert_eq!(route(Some("dash.localhostx"), "/", domain), Route::NotFound);
        assert_eq!(route(Some("dashlocalhost"), "/", domain), Route::NotFound);
    }

    #[test]
    fn app_names_are_dns_labels() {
        assert!(is_valid_app_name("dash-2"));
        assert!(!is_valid_app_name(""));
        assert!(!is_valid_app_name("a_b"));
        assert!(!is_valid_app_name(&"a".repeat(64)));
    }
}
