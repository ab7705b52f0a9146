//! `shoal policy`, `shoal share` and `shoal token`: the client side of the policy API.

use std::io::BufRead;

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

use super::{plain, print_stdout, ApiClient};
use crate::api::{DeployTokenView, PolicyView};
use crate::cli::{PolicyArgs, ShareArgs, TokenCommand};

/// `shoal policy NAME [flags]`.
pub async fn policy(args: PolicyArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.client)?;
    let path = format!("/v1/apps/{}/policy", args.name);
    let current = client
        .send(client.request(reqwest::Method::GET, &path))
        .await?;
    let change = change_of(&args, &current)?;
    if change.is_empty() {
        if args.client.json {
            return print_stdout(&format!("{}\n", serde_json::to_string_pretty(&current)?));
        }
        let view: PolicyView = serde_json::from_value(current)
            .context("the admin API's policy is not in a form this shoal reads")?;
        return print_stdout(&render(&view));
    }
    let answer = client
        .send(
            client
                .request(reqwest::Method::PATCH, &path)
                .json(&Value::Object(change)),
        )
        .await?;
    if args.client.json {
        return print_stdout(&format!("{}\n", serde_json::to_string_pretty(&answer)?));
    }
    let view: PolicyView = serde_json::from_value(answer["policy"].clone())
        .context("the admin API's policy is not in a form this shoal reads")?;
    let mut text = render(&view);
    if let Some(tokens) = answer["new_tokens"].as_object() {
        for (name, token) in tokens {
            text.push_str(&format!(
                "\nnew token `{name}` (shown once, store it now):\n{}\n",
                plain(token)
            ));
        }
    }
    print_stdout(&text)
}

/// The PATCH body the flags ask for (empty: just show the policy).
fn change_of(args: &PolicyArgs, current: &Value) -> anyhow::Result<Map<String, Value>> {
    let mut change = Map::new();
    if args.public {
        change.insert("access".into(), json!("public"));
    }
    if args.private {
        change.insert("access".into(), json!("private"));
    }
    if !args.add_token.is_empty() {
        change.insert("add_tokens".into(), json!(args.add_token));
    }
    if !args.revoke_token.is_empty() {
        change.insert("revoke_tokens".into(), json!(args.revoke_token));
    }
    if let Some(user) = &args.add_user {
        let password = match &args.password {
            Some(password) => password.clone(),
            None => read_password(user)?,
        };
        change.insert(
            "add_users".into(),
            json!([{ "name": user, "password": password }]),
        );
    }
    if !args.remove_user.is_empty() {
        change.insert("remove_users".into(), json!(args.remove_user));
    }
    let listed = |key: &str| -> Vec<String> {
        current[key]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    if args.any_ip || !args.allow_ip.is_empty() || !args.remove_ip.is_empty() {
        let mut ips = if args.any_ip {
            Vec::new()
        } else {
            listed("allow_ips")
        };
        for ip in &args.allow_ip {
            let cidr = normalise_cidr(ip)?;
            if !ips.contains(&cidr) {
                ips.push(cidr);
            }
        }
        for ip in &args.remove_ip {
            let cidr = normalise_cidr(ip)?;
            if !ips.contains(&cidr) {
                bail!("{ip} is not in the allowlist");
            }
            ips.retain(|kept| *kept != cidr);
        }
        change.insert("allow_ips".into(), json!(ips));
    }
    if args.no_trusted_proxies || !args.trusted_proxy.is_empty() {
        let mut proxies = if args.no_trusted_proxies {
            Vec::new()
        } else {
            listed("trusted_proxies")
        };
        for ip in &args.trusted_proxy {
            let cidr = normalise_cidr(ip)?;
            if !proxies.contains(&cidr) {
                proxies.push(cidr);
            }
        }
        change.insert("trusted_proxies".into(), json!(proxies));
    }
    if let Some(rate) = &args.rate_limit {
        change.insert("rate_limit".into(), json!(rate));
    }
    if let Some(size) = &args.max_body {
        change.insert("max_body".into(), json!(size));
    }
    if args.no_cors {
        change.insert("cors".into(), json!({ "allow_origins": [] }));
    } else if !args.cors_origin.is_empty() {
        change.insert("cors".into(), json!({ "allow_origins": args.cors_origin }));
    }
    if args.csp.is_some() || args.frame_options.is_some() || args.referrer_policy.is_some() {
        // Header settings are replaced as a whole: start from what is set now.
        let mut headers = current["headers"].as_object().cloned().unwrap_or_default();
        for (key, value) in [
            ("content_security_policy", &args.csp),
            ("frame_options", &args.frame_options),
            ("referrer_policy", &args.referrer_policy),
        ] {
            match value.as_deref() {
                None => {}
                Some("default") => {
                    headers.insert(key.into(), Value::Null);
                }
                Some(value) => {
                    headers.insert(key.into(), json!(value));
                }
            }
        }
        headers.retain(|_, value| !value.is_null());
        change.insert("headers".into(), Value::Object(headers));
    }
    if args.rotate_share_key {
        change.insert("rotate_share_key".into(), json!(true));
    }
    Ok(change)
}

/// `10.0.0.0/8` as the API writes it (a bare address gets its full prefix).
fn normalise_cidr(text: &str) -> anyhow::Result<String> {
    let cidr: shoal_proxy::policy::Cidr = text.parse().map_err(anyhow::Error::msg)?;
    Ok(cidr.to_string())
}

/// One line of standard input, the password for `user`.
fn read_password(user: &str) -> anyhow::Result<String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        eprint!("password for {user} (input is shown; pipe it in to hide it): ");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        bail!("no password: pass --password or one line on standard input");
    }
    Ok(password)
}

fn render(view: &PolicyView) -> String {
    let list = |items: Vec<String>, empty: &str| {
        if items.is_empty() {
            empty.to_owned()
        } else {
            items.join(", ")
        }
    };
    let header = |key: &str| {
        view.headers[key]
            .as_str()
            .map_or_else(|| "default".to_owned(), str::to_owned)
    };
    let cors = match &view.cors {
        Some(cors) => format!(
            "{} ({})",
            plain_list(&cors["allow_origins"]),
            plain_list(&cors["allow_methods"])
        ),
        None => "off".to_owned(),
    };
    let access = match view.access {
        shoal_proxy::policy::Access::Public => "public",
        shoal_proxy::policy::Access::Private => "private",
    };
    format!(
        "app:             {} (policy v{})\n\
         access:          {access}\n\
         tokens:          {}\n\
         users:           {}\n\
         share links:     {}\n\
         allow ips:       {}\n\
         trusted proxies: {}\n\
         rate limit:      {}\n\
         max body:        {}\n\
         cors:            {cors}\n\
         headers:         csp={}, frame-options={}, referrer-policy={}\n",
        view.app,
        view.version,
        list(
            view.tokens
                .iter()
                .map(|t| format!("{} ({})", t.name, t.created_at))
                .collect(),
            "none"
        ),
        list(view.users.clone(), "none"),
        view.share_key_version
            .map_or_else(|| "none made yet".to_owned(), |v| format!("key v{v}")),
        list(
            view.allow_ips.iter().map(|c| c.to_string()).collect(),
            "any"
        ),
        list(
            view.trusted_proxies.iter().map(|c| c.to_string()).collect(),
            "none"
        ),
        view.rate_limit.as_deref().map_or_else(
            || "none".to_owned(),
            |r| format!("{r} per client, cluster-wide")
        ),
        shoal_proxy::policy::Size(view.max_body),
        header("content_security_policy"),
        header("frame_options"),
        header("referrer_policy"),
    )
}

fn plain_list(value: &Value) -> String {
    value
        .as_array()
        .map(|items| items.iter().map(plain).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

/// `shoal share NAME --ttl 1h`.
pub async fn share(args: ShareArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.client)?;
    let path = format!("/v1/apps/{}/share", args.name);
    let answer = client
        .send(
            client
                .request(reqwest::Method::POST, &path)
                .json(&json!({ "ttl": args.ttl })),
        )
        .await?;
    if args.client.json {
        return print_stdout(&format!("{}\n", serde_json::to_string_pretty(&answer)?));
    }
    let mut text = String::new();
    for url in answer["urls"].as_array().into_iter().flatten() {
        text.push_str(&format!("{}\n", plain(url)));
    }
    text.push_str(&format!("expires {}\n", plain(&answer["expires_at"])));
    if answer["public"].as_bool() == Some(true) {
        text.push_str(&format!(
            "note: `{}` is public, so anyone can open it without the link (shoal policy {} --private)\n",
            args.name, args.name
        ));
    }
    print_stdout(&text)
}

/// `shoal token create|list|revoke`.
pub async fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { app, name, client } => {
            let api = ApiClient::new(&client)?;
            let answer = api
                .send(
                    api.request(reqwest::Method::POST, "/v1/tokens")
                        .json(&json!({ "app": app, "name": name })),
                )
                .await?;
            if client.json {
                return print_stdout(&format!("{}\n", serde_json::to_string_pretty(&answer)?));
            }
            print_stdout(&format!(
                "deploy token for app `{app}` (id {}), shown once, store it now:\n{}\n",
                plain(&answer["deploy_token"]["id"]),
                plain(&answer["token"])
            ))
        }
        TokenCommand::List { client } => {
            let api = ApiClient::new(&client)?;
            let answer = api
                .send(api.request(reqwest::Method::GET, "/v1/tokens"))
                .await?;
            if client.json {
                return print_stdout(&format!("{}\n", serde_json::to_string_pretty(&answer)?));
            }
            let tokens: Vec<DeployTokenView> =
                serde_json::from_value(answer["tokens"].clone()).unwrap_or_default();
            if tokens.is_empty() {
                return print_stdout("no deploy tokens\n");
            }
            let mut table = comfy_table::Table::new();
            table.load_preset(comfy_table::presets::NOTHING);
            table.set_header(["ID", "APP", "NAME", "CREATED"]);
            for token in tokens {
                table.add_row([token.id, token.app, token.name, token.created_at]);
            }
            print_stdout(&format!("{table}\n"))
        }
        TokenCommand::Revoke { id, client } => {
            let api = ApiClient::new(&client)?;
            let answer = api
                .send(api.request(reqwest::Method::DELETE, &format!("/v1/tokens/{id}")))
                .await?;
            if client.json {
                return print_stdout(&format!("{}\n", serde_json::to_string_pretty(&answer)?));
            }
            print_stdout(&format!("revoked deploy token {id}\n"))
        }
    }
}
