//! The `shoal` command line (DESIGN.md §9): node commands and client commands.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::bundle::BundleLimits;
use crate::manifest::parse_size;
use crate::node::{Membership, NodeConfig, RuntimeKind};

/// Shoal runs what notebooks produce: static apps, API backends and cron jobs, on a
/// self-hosted cluster.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: CliCommand,
}

/// Every `shoal` subcommand.
#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Start the first node of a new cluster. With no flags: a complete single-node cluster,
    /// ingress on 0.0.0.0:8080, admin API on 127.0.0.1:7070, data in ./shoal-data.
    Seed(SeedArgs),
    /// Start a node and join an existing cluster with the token `shoal seed` printed. Run the
    /// same command again to restart the node: once joined, its data dir holds its identity.
    Join(JoinArgs),
    /// Pack DIR (which holds shoal.toml) and deploy it as a new release.
    Deploy(DeployArgs),
    /// List apps, or show one app with its releases.
    Apps(AppsArgs),
    /// Delete an app and its releases.
    Rm(RmArgs),
    /// List the cluster's nodes: roles, raft state, liveness, load and the leader.
    Nodes(NodesArgs),
    /// Print an app's output (its newest instance on the node), optionally following it.
    Logs(LogsArgs),
    /// List a cron job's runs, newest first: state, worker, exit code, duration.
    #[command(after_help = RUNS_COLUMNS)]
    Runs(RunsArgs),
    /// Start a run of a cron job now, outside its schedule.
    #[command(after_help = RUN_OUTPUT)]
    Run(RunArgs),
    /// Show or change who may reach an app: public or private, bearer tokens, basic-auth
    /// users, share links, IP allowlist, rate limit, CORS, security headers, body limit.
    /// Takes effect on every node within a second; no redeploy.
    #[command(after_help = POLICY_HELP)]
    Policy(PolicyArgs),
    /// Print a link that opens a private app without credentials until it expires.
    #[command(after_help = SHARE_HELP)]
    Share(ShareArgs),
    /// Manage deploy tokens: admin API tokens limited to one app, for a notebook app.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage the shared runtime image that service apps and jobs run in.
    #[command(subcommand)]
    Runtime(RuntimeCommand),
}

/// `shoal token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a deploy token for APP (the app need not exist yet). It may deploy, show, delete
    /// and read the logs, runs and policy of APP, and nothing else. Printed once.
    Create {
        /// The app it grants.
        app: String,
        /// A label to tell tokens apart.
        #[arg(long, default_value = "deploy")]
        name: String,
        /// Client flags.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List deploy tokens (ids, apps, labels; never the secrets).
    List {
        /// Client flags.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a deploy token by its id; it stops working at once.
    Revoke {
        /// The token's id (`shoal token list` shows it; it is also the part after `shoal_dt_`).
        id: String,
        /// Client flags.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// More on `shoal policy`, for its `--help`.
const POLICY_HELP: &str = "\
With only NAME, prints the policy. Each flag changes one thing; the rest stays.

Order at the ingress: IP allowlist (403), rate limit (429), CORS preflight, credentials (401),
body limit (413). A private app lets in a request with any one of: a bearer token
(`Authorization: Bearer ...`), a basic-auth user, or a share link (`shoal share`).
The app receives `x-shoal-auth: token:NAME`, `user:NAME` or `share`; the credential itself is
removed.

Adding a token or a user makes a public app private. `[policy]` in shoal.toml sets the same
settings at deploy (each field it names).

Examples:
  shoal policy api --add-token ci          # prints the token once
  shoal policy dash --add-user alice       # asks for the password on stdin
  shoal policy api --rate-limit 100/min --allow-ip 10.0.0.0/8
  shoal policy api --cors-origin https://notebook.example.com
  shoal policy dash --public";

/// More on `shoal share`, for its `--help`.
const SHARE_HELP: &str = "\
The link carries a signature over the app's name and the expiry. Opening it sets a cookie, so
the page's own requests work too. `shoal policy NAME --rotate-share-key` revokes every link
made before.";

/// `shoal policy`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// The app.
    pub name: String,
    /// Let anyone in (credentials are kept, unused).
    #[arg(long, conflicts_with = "private")]
    pub public: bool,
    /// Let in only requests with a token, a user's password or a share link.
    #[arg(long)]
    pub private: bool,
    /// Make a bearer token with this name; it is printed once.
    #[arg(long, value_name = "NAME")]
    pub add_token: Vec<String>,
    /// Revoke the bearer token with this name.
    #[arg(long, value_name = "NAME")]
    pub revoke_token: Vec<String>,
    /// Add a basic-auth user (or change its password); the password comes from --password
    /// or one line of standard input. Only an Argon2 hash is stored.
    #[arg(long, value_name = "USER")]
    pub add_user: Option<String>,
    /// The password for --add-user (visible to other local users in `ps`; prefer stdin).
    #[arg(
        long,
        requires = "add_user",
        env = "SHOAL_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Remove a basic-auth user.
    #[arg(long, value_name = "USER")]
    pub remove_user: Vec<String>,
    /// Let in clients from this network (CIDR or address); once any is set, only those.
    #[arg(long, value_name = "CIDR")]
    pub allow_ip: Vec<String>,
    /// Remove a network from the allowlist.
    #[arg(long, value_name = "CIDR")]
    pub remove_ip: Vec<String>,
    /// Empty the allowlist: any client address.
    #[arg(long)]
    pub any_ip: bool,
    /// Believe X-Forwarded-For from this proxy (CIDR or address).
    #[arg(long, value_name = "CIDR")]
    pub trusted_proxy: Vec<String>,
    /// Believe no proxy's X-Forwarded-For.
    #[arg(long)]
    pub no_trusted_proxies: bool,
    /// Requests per client address for the whole cluster: `100/min`, `10/s`, or `off`.
    #[arg(long, value_name = "RATE")]
    pub rate_limit: Option<String>,
    /// Largest request body: `10MiB`, `512KiB`.
    #[arg(long, value_name = "SIZE")]
    pub max_body: Option<String>,
    /// Allow browser calls from this origin (`https://host[:port]` or `*`); replaces the list.
    #[arg(long, value_name = "ORIGIN")]
    pub cors_origin: Vec<String>,
    /// Turn CORS off.
    #[arg(long, conflicts_with = "cors_origin")]
    pub no_cors: bool,
    /// Content-Security-Policy value, `default` or `off`.
    #[arg(long, value_name = "VALUE")]
    pub csp: Option<String>,
    /// X-Frame-Options: `DENY`, `SAMEORIGIN`, `default` or `off`.
    #[arg(long, value_name = "VALUE")]
    pub frame_options: Option<String>,
    /// Referrer-Policy value, `default` or `off`.
    #[arg(long, value_name = "VALUE")]
    pub referrer_policy: Option<String>,
    /// Make a new share key: every share link made before stops working.
    #[arg(long)]
    pub rotate_share_key: bool,
    /// Client flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `shoal share`.
#[derive(Debug, Args)]
pub struct ShareArgs {
    /// The app.
    pub name: String,
    /// How long the link works: `30m`, `1h`, `7d` (1 second to 366 days).
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// Client flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `shoal runtime ...`.
#[derive(Debug, Subcommand)]
pub enum RuntimeCommand {
    /// Build the `shoal-runtime` image from this host's Node.js (and Python) through the local
    /// Docker engine, even if an image for the same files exists. Needs no registry.
    Build {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// What `shoal runs` prints, for its `--help`.
const RUNS_COLUMNS: &str = "\
Columns:
  RUN       the run's id: its tick, <tick>.<attempt> for a retry, m<unix ms> for a manual run
  TICK      the schedule tick it ran for (a manual run: when it was asked for), UTC
  STATE     pending, running, succeeded, failed, timed_out, lost, skipped or replaced
  ATTEMPT   0 for the first try of a tick, 1, 2... for retries
  WORKER    the id of the node that ran it (`shoal nodes` lists them); - until one starts it
  EXIT      the process's exit code; - if it did not exit
  DURATION  from start to finish; - until it finishes
  REASON    why it was skipped, lost, or failed to start";

/// What `shoal run` prints, for its `--help`.
const RUN_OUTPUT: &str = "\
Prints `started run <id> of <name>`: the run is committed and pending, and the cluster hands it
to a worker as it does a scheduled run. Follow it with `shoal runs NAME`.";

/// `shoal runs`.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// The cron job.
    pub name: String,
    /// Client flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `shoal run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The cron job.
    pub name: String,
    /// Client flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `shoal logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The app.
    pub name: String,
    /// Keep printing new output until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// Lines of past output to print first.
    #[arg(long, default_value_t = 100)]
    pub tail: usize,
    /// Client flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Flags every node command takes.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Where the node keeps its state (app table, bundles, tokens).
    #[arg(long, env = "SHOAL_DATA_DIR", default_value = "./shoal-data")]
    pub data_dir: PathBuf,
    /// Ingress listen address (HTTP traffic for apps, /healthz, /readyz).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http: SocketAddr,
    /// Admin API listen address (deploys, /metrics). Keep it private.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub api: SocketAddr,
    /// Gossip listen address (UDP), used once nodes form a cluster.
    #[arg(long, default_value = "0.0.0.0:7946")]
    pub gossip: SocketAddr,
    /// QUIC listen address (UDP), used once nodes form a cluster.
    #[arg(long, default_value = "0.0.0.0:7947")]
    pub quic: SocketAddr,
    /// The address other nodes and printed URLs use for this node.
    #[arg(long, value_name = "IP")]
    pub advertise: Option<IpAddr>,
    /// Apps answer at http://<app>.<domain>/.
    #[arg(long, default_value = "localhost")]
    pub domain: String,
    /// Container runtime for service apps and jobs (default: docker if it answers).
    #[arg(long, value_enum)]
    pub runtime: Option<RuntimeKind>,
    /// This node's name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Largest bundle upload accepted (compressed), e.g. 256MiB.
    #[arg(long, default_value = "256MiB", value_parser = size_arg)]
    pub bundle_max_bytes: u64,
    /// Largest unpacked size of a bundle, e.g. 1GiB (guards against decompression bombs).
    #[arg(long, default_value = "1GiB", value_parser = size_arg)]
    pub bundle_max_unpacked_bytes: u64,
    /// Most files, directories and links one bundle may hold.
    #[arg(long, default_value_t = 20_000)]
    pub bundle_max_files: u64,
    /// Time in-flight requests get to finish at shutdown, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// A node that stops answering gossip is marked dead within this bound, e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub dead_after: Duration,
    /// Run no app instances here: the node still serves static apps, routes (forwarding
    /// service-app requests to worker nodes) and, if a voter, votes.
    #[arg(long)]
    pub no_worker: bool,
}

/// `shoal seed`.
#[derive(Debug, Args)]
pub struct SeedArgs {
    /// How long the join token created with a new cluster is accepted, e.g. 30d.
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    pub join_token_ttl: Duration,
    /// Node flags.
    #[command(flatten)]
    pub node: NodeArgs,
}

impl SeedArgs {
    /// The node configuration these flags describe.
    pub fn into_config(self) -> NodeConfig {
        self.node.into_config(Membership::Seed {
            join_token_ttl: self.join_token_ttl,
        })
    }
}

impl JoinArgs {
    /// The node configuration these flags describe.
    pub fn into_config(self) -> NodeConfig {
        self.node.into_config(Membership::Join {
            seed: self.seed,
            token: self.token,
            voter: self.voter,
        })
    }
}

impl NodeArgs {
    /// The node configuration these flags describe.
    pub fn into_config(self, membership: Membership) -> NodeConfig {
        let node_name = self.name.unwrap_or_else(default_node_name);
        NodeConfig {
            data_dir: self.data_dir,
            http: self.http,
            api: self.api,
            gossip: self.gossip,
            quic: self.quic,
            advertise: self.advertise,
            domain: self.domain.trim_end_matches('.').to_ascii_lowercase(),
            node_name,
            runtime: self.runtime,
            bundle_limits: BundleLimits {
                max_compressed_bytes: self.bundle_max_bytes,
                max_unpacked_bytes: self.bundle_max_unpacked_bytes,
                max_files: self.bundle_max_files,
            },
            drain_timeout: self.drain_timeout,
            dead_after: self.dead_after,
            worker: !self.no_worker,
            membership,
        }
    }
}

fn size_arg(text: &str) -> Result<u64, String> {
    parse_size(text).ok_or_else(|| format!("`{text}` is not a size like 256MiB"))
}

fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "shoal".to_owned())
}

/// `shoal join`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// A voter of the cluster to join: HOST:PORT of its QUIC listener (`shoal seed` prints it).
    #[arg(long)]
    pub seed: String,
    /// The join token printed by `shoal seed` (also in the seed's <data-dir>/tokens/join).
    #[arg(long, env = "SHOAL_JOIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Join as a raft voter (a standby orchestrator).
    #[arg(long)]
    pub voter: bool,
    /// Node flags.
    #[command(flatten)]
    pub node: NodeArgs,
}

/// How client commands reach the admin API.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// The admin API, HOST:PORT or a URL.
    #[arg(long = "api", env = "SHOAL_API", default_value = "127.0.0.1:7070")]
    pub api: String,
    /// The admin token (default: read from <data-dir>/tokens/admin).
    #[arg(long, env = "SHOAL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The data dir whose token file is used when no token is given.
    #[arg(long, env = "SHOAL_DATA_DIR", default_value = "./shoal-data")]
    pub data_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `shoal deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The app's directory; it must hold shoal.toml.
    pub dir: PathBuf,
    /// Deploy under this name instead of shoal.toml's `name`.
    #[arg(long)]
    pub name: Option<String>,
    /// Client flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `shoal apps`.
#[derive(Debug, Args)]
pub struct AppsArgs {
    /// Show this app and its releases instead of the list.
    pub name: Option<String>,
    /// Client flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `shoal nodes`.
#[derive(Debug, Args)]
pub struct NodesArgs {
    /// Remove the node with this id from raft (a voter stops voting; use it for a voter that
    /// is gone for good).
    #[arg(long, value_name = "ID")]
    pub remove: Option<String>,
    /// Client flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `shoal rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// The app to delete.
    pub name: String,
    /// Client flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn runs_and_run_take_a_job_and_the_client_flags() {
        let cli = Cli::try_parse_from(["shoal", "runs", "report", "--json"]).unwrap();
        let CliCommand::Runs(args) = cli.command else {
            panic!("not runs")
        };
        assert_eq!((args.name.as_str(), args.client.json), ("report", true));
        let cli =
            Cli::try_parse_from(["shoal", "run", "report", "--api", "10.0.0.1:7070"]).unwrap();
        let CliCommand::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(
            (
                args.name.as_str(),
                args.client.api.as_str(),
                args.client.json
            ),
            ("report", "10.0.0.1:7070", false)
        );
        assert!(
            Cli::try_parse_from(["shoal", "run"]).is_err(),
            "the job is required"
        );
    }

    #[test]
    fn runs_help_explains_every_column() {
        let help = Cli::command()
            .find_subcommand_mut("runs")
            .unwrap()
            .render_long_help()
            .to_string();
        for column in [
            "RUN", "TICK", "STATE", "ATTEMPT", "WORKER", "EXIT", "DURATION", "REASON",
        ] {
            assert!(
                help.contains(&format!("\n  {column} ")),
                "{column} missing from:\n{help}"
            );
        }
    }

    #[test]
    fn seed_defaults_match_the_design() {
        let cli = Cli::try_parse_from(["shoal", "seed"]).unwrap();
        let CliCommand::Seed(args) = cli.command else {
            panic!("not seed")
        };
        let config = args.into_config();
        assert_eq!(config.http, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.api, "127.0.0.1:7070".parse().unwrap());
        assert_eq!(config.gossip, "0.0.0.0:7946".parse().unwrap());
        assert_eq!(config.quic, "0.0.0.0:7947".parse().unwrap());
        assert_eq!(config.domain, "localhost");
        assert_eq!(config.bundle_limits.max_compressed_bytes, 256 << 20);
    }
}
