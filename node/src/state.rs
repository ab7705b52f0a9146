//! The app table: a deterministic state machine over [`Command`]s.
//!
//! `apply(index, command)` is the only way the table changes, and it depends on nothing but
//! the table, the index and the command (the time of a deploy travels inside the command).
//! That is the shape openraft's state machine needs: today a single node feeds it commands
//! in order; with the control plane, the raft log does.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use shoal_proxy::policy::Policy;

use crate::manifest::{AppKind, AppSpec};
use crate::runs::{Fire, JobRuns, Run, RunEnd, RunRefusal};

/// Releases kept per app (older ones are forgotten and their bundles collected).
pub const RELEASE_HISTORY: usize = 10;

/// A change to the app table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Make `spec` with the bundle `digest` the current release of `spec.name`.
    Deploy {
        /// The validated manifest.
        spec: Box<AppSpec>,
        /// sha256 of the bundle blob, lowercase hex.
        digest: String,
        /// Size of the bundle blob.
        bundle_bytes: u64,
        /// When the deploy was accepted (Unix ms), stamped by the proposer.
        at_unix_ms: u64,
    },
    /// Remove an app and its releases.
    Delete {
        /// The app.
        name: String,
    },
    /// Record that a node was removed from raft for good: the orchestrator never promotes it
    /// again, even if it comes back claiming to be a voter.
    RetireNode {
        /// The node id.
        id: u64,
    },
    /// Fire a cron job's run (or record a skipped tick): committed before the run is
    /// dispatched, so no tick fires twice.
    Fire {
        /// The job.
        job: String,
        /// The tick, attempt, fence and release.
        fire: Fire,
    },
    /// A worker starts a pending run; it starts the process only once this is committed.
    RunStarted {
        /// The job.
        job: String,
        /// The run.
        run_id: String,
        /// The worker's node id.
        worker: u64,
        /// When (Unix ms).
        at_ms: u64,
    },
    /// Replace an app's policy, if it is still at `base_version` (the version the proposer
    /// read and changed): two concurrent changes cannot silently undo each other.
    SetPolicy {
        /// The app.
        app: String,
        /// The whole new policy.
        policy: Box<Policy>,
        /// The policy version the change was made from.
        base_version: u64,
    },
    /// Add a deploy token: it grants the admin API for one app.
    AddDeployToken {
        /// The token (its hash only).
        token: DeployToken,
    },
    /// Revoke a deploy token.
    RevokeDeployToken {
        /// Its id.
        id: String,
    },
    /// A run ended (or was lost).
    RunEnded {
        /// The job.
        job: String,
        /// The run.
        run_id: String,
        /// How.
        end: RunEnd,
    },
}

/// What applying a command did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Applied {
    /// A new release became current.
    Deployed {
        /// The app.
        app: String,
        /// The new release's version.
        version: u64,
    },
    /// The bundle is already the current release: nothing changed.
    Unchanged {
        /// The app.
        app: String,
        /// The current version.
        version: u64,
    },
    /// The app is gone.
    Deleted {
        /// The app.
        app: String,
    },
    /// There was no such app.
    NotFound {
        /// The app.
        app: String,
    },
    /// A node is retired.
    NodeRetired {
        /// The node id.
        node: u64,
    },
    /// A run was fired (or its tick recorded as skipped).
    Fired {
        /// The job.
        job: String,
        /// The run as recorded.
        run: Box<Run>,
    },
    /// A run started or ended as asked.
    RunUpdated {
        /// The job.
        job: String,
        /// The run.
        run_id: String,
    },
    /// A run command changed nothing.
    RunRefused {
        /// The job.
        job: String,
        /// Why.
        reason: RunRefusal,
    },
    /// An app's policy was replaced.
    PolicySet {
        /// The app.
        app: String,
        /// Its new policy version.
        version: u64,
    },
    /// The policy changed since the proposer read it: nothing was changed; read and retry.
    PolicyConflict {
        /// The app.
        app: String,
        /// Its current policy version.
        version: u64,
    },
    /// A deploy token was added.
    TokenAdded {
        /// Its id.
        id: String,
    },
    /// A deploy token was revoked.
    TokenRevoked {
        /// Its id.
        id: String,
    },
    /// No deploy token has this id (or one already has, when adding).
    TokenRefused {
        /// The id.
        id: String,
    },
    /// A raft-internal entry (a leader's blank entry or a membership change): the table did
    /// not change.
    Internal,
}

/// One deployed version of an app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// 1, 2, 3... per app; never reused.
    pub version: u64,
    /// sha256 of the bundle.
    pub digest: String,
    /// Size of the bundle blob.
    pub bundle_bytes: u64,
    /// When it was deployed (Unix ms).
    pub deployed_at_unix_ms: u64,
    /// The manifest it was deployed with.
    pub spec: AppSpec,
}

/// An app and its recent releases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct App {
    /// The app's name.
    pub name: String,
    /// When the app was first deployed (Unix ms).
    pub created_at_unix_ms: u64,
    /// Recent releases, oldest first; the last is current.
    pub releases: Vec<Release>,
    /// A cron job's runs.
    #[serde(default)]
    pub runs: JobRuns,
    /// Who may reach the app (kept across releases; `[policy]` in a release's manifest sets
    /// the fields it names).
    #[serde(default)]
    pub policy: Policy,
    /// Bumped by every policy change.
    #[serde(default)]
    pub policy_version: u64,
}

/// A token that grants the admin API for one app only: what a notebook app holds to deploy
/// what it made. Only a hash is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployToken {
    /// Public id, the part of the token before its secret (`dt<hex>`).
    pub id: String,
    /// The app it grants.
    pub app: String,
    /// A label (`notebook`).
    pub name: String,
    /// SHA-256 of the whole token, hex.
    pub sha256: String,
    /// When it was made (Unix ms).
    pub created_at_unix_ms: u64,
}

impl App {
    /// The release requests go to.
    pub fn current(&self) -> &Release {
        self.releases
            .last()
            .expect("an app always holds at least one release")
    }

    /// What the current release is.
    pub fn kind(&self) -> AppKind {
        self.current().spec.kind
    }
}

/// Every app, and the index of the last command applied.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AppTable {
    apps: BTreeMap<String, App>,
    last_applied: u64,
    /// Nodes removed from raft for good.
    #[serde(default)]
    retired_nodes: BTreeSet<u64>,
    /// Per-app deploy tokens, by id.
    #[serde(default)]
    deploy_tokens: BTreeMap<String, DeployToken>,
}

impl AppTable {
    /// Rebuilds a table from persisted parts.
    pub fn from_parts(apps: impl IntoIterator<Item = App>, last_applied: u64) -> Self {
        Self {
            apps: apps
                .into_iter()
                .map(|app| (app.name.clone(), app))
                .collect(),
            last_applied,
            retired_nodes: BTreeSet::new(),
            deploy_tokens: BTreeMap::new(),
        }
    }

    /// The same table with `tokens` as its deploy tokens (rebuilding from storage).
    pub fn with_deploy_tokens(mut self, tokens: BTreeMap<String, DeployToken>) -> Self {
        self.deploy_tokens = tokens;
        self
    }

    /// Every deploy token, by id.
    pub fn deploy_tokens(&self) -> &BTreeMap<String, DeployToken> {
        &self.deploy_tokens
    }

    /// The same table with `retired` as its retired nodes (rebuilding from storage).
    pub fn with_retired_nodes(mut self, retired: BTreeSet<u64>) -> Self {
        self.retired_nodes = retired;
        self
    }

    /// Nodes removed from raft for good.
    pub fn retired_nodes(&self) -> &BTreeSet<u64> {
        &self.retired_nodes
    }

    /// Index of the last applied command (0 for a new table).
    pub fn last_applied(&self) -> u64 {
        self.last_applied
    }

    /// One app.
    pub fn get(&self, name: &str) -> Option<&App> {
        self.apps.get(name)
    }

    /// Every app, by name.
    pub fn apps(&self) -> impl Iterator<Item = &App> {
        self.apps.values()
    }

    /// Every bundle digest some kept release names.
    pub fn referenced_digests(&self) -> BTreeSet<String> {
        self.apps
            .values()
            .flat_map(|app| app.releases.iter().map(|r| r.digest.clone()))
            .collect()
    }

    /// Applies the command at log position `index`. The caller applies each index once, in
    /// increasing order (the log, or raft, guarantees it).
    pub fn apply(&mut self, index: u64, command: &Command) -> Applied {
        let applied = match command {
            Command::Deploy {
                spec,
                digest,
                bundle_bytes,
                at_unix_ms,
            } => self.deploy(spec, digest, *bundle_bytes, *at_unix_ms),
            Command::Delete { name } => match self.apps.remove(name) {
                Some(_) => Applied::Deleted { app: name.clone() },
                None => Applied::NotFound { app: name.clone() },
            },
            Command::RetireNode { id } => {
                self.retired_nodes.insert(*id);
                Applied::NodeRetired { node: *id }
            }
            Command::Fire { job, fire } => self.with_job(job, |runs| {
                runs.fire(fire).map(|run| Applied::Fired {
                    job: job.clone(),
                    run: Box::new(run),
                })
            }),
            Command::RunStarted {
                job,
                run_id,
                worker,
                at_ms,
            } => self.with_job(job, |runs| {
                runs.start(run_id, *worker, *at_ms)
                    .map(|()| Applied::RunUpdated {
                        job: job.clone(),
                        run_id: run_id.clone(),
                    })
            }),
            Command::SetPolicy {
                app,
                policy,
                base_version,
            } => match self.apps.get_mut(app) {
                None => Applied::NotFound { app: app.clone() },
                Some(found) if found.policy_version != *base_version => Applied::PolicyConflict {
                    app: app.clone(),
                    version: found.policy_version,
                },
                Some(found) => {
                    found.policy = (**policy).clone();
                    found.policy_version += 1;
                    Applied::PolicySet {
                        app: app.clone(),
                        version: found.policy_version,
                    }
                }
            },
            Command::AddDeployToken { token } => {
                if self.deploy_tokens.contains_key(&token.id) {
                    Applied::TokenRefused {
                        id: token.id.clone(),
                    }
                } else {
                    self.deploy_tokens.insert(token.id.clone(), token.clone());
                    Applied::TokenAdded {
                        id: token.id.clone(),
                    }
                }
            }
            Command::RevokeDeployToken { id } => match self.deploy_tokens.remove(id) {
                Some(_) => Applied::TokenRevoked { id: id.clone() },
                None => Applied::TokenRefused { id: id.clone() },
            },
            Command::RunEnded { job, run_id, end } => self.with_job(job, |runs| {
                runs.end(run_id, end).map(|()| Applied::RunUpdated {
                    job: job.clone(),
                    run_id: run_id.clone(),
                })
            }),
        };
        self.last_applied = self.last_applied.max(index);
        applied
    }

    /// Applies a run command to a cron job's records.
    fn with_job(
        &mut self,
        job: &str,
        change: impl FnOnce(&mut JobRuns) -> Result<Applied, RunRefusal>,
    ) -> Applied {
        let Some(app) = self.apps.get_mut(job) else {
            return Applied::NotFound {
                app: job.to_owned(),
            };
        };
        let outcome = if app.kind() == AppKind::Cron {
            change(&mut app.runs)
        } else {
            Err(RunRefusal::NotAJob(job.to_owned()))
        };
        outcome.unwrap_or_else(|reason| Applied::RunRefused {
            job: job.to_owned(),
            reason,
        })
    }

    fn deploy(&mut self, spec: &AppSpec, digest: &str, bundle_bytes: u64, at: u64) -> Applied {
        let app = self.apps.entry(spec.name.clone()).or_insert_with(|| App {
            name: spec.name.clone(),
            created_at_unix_ms: at,
            releases: Vec::new(),
            runs: JobRuns::default(),
            policy: Policy::default(),
            policy_version: 0,
        });
        if let Some(current) = app.releases.last() {
            if current.digest == digest && current.spec == *spec {
                return Applied::Unchanged {
                    app: app.name.clone(),
                    version: current.version,
                };
            }
        }
        let version = app.releases.last().map_or(1, |r| r.version + 1);
        // The release's `[policy]` sets the fields it names; the rest stays as it was.
        if let Some(settings) = &spec.policy {
            let mut policy = app.policy.clone();
            settings.apply_to(&mut policy);
            if policy != app.policy {
                app.policy = policy;
                app.policy_version += 1;
            }
        }
        app.releases.push(Release {
            version,
            digest: digest.to_owned(),
            bundle_bytes,
            deployed_at_unix_ms: at,
            spec: spec.clone(),
        });
        if app.releases.len() > RELEASE_HISTORY {
            let excess = app.releases.len() - RELEASE_HISTORY;
            app.releases.drain(..excess);
        }
        Applied::Deployed {
            app: app.name.clone(),
            version,
        }
    }
}

/// A `Deploy` of a cron job named `name` on `schedule` (tests), `settings` added to its
/// manifest.
#[cfg(test)]
pub(crate) fn deploy_cron_for_test(name: &str, schedule: &str, settings: &str, at: u64) -> Command {
    let manifest = format!(
        "name = \"{name}\"\nkind = \"cron\"\ncommand = [\"x\"]\nschedule = \"{schedule}\"\n{settings}"
    );
    let spec = crate::manifest::Manifest::parse(&manifest, "t", None).expect("valid manifest");
    Command::Deploy {
        spec: Box::new(spec),
        digest: "d".into(),
        bundle_bytes: 1,
        at_unix_ms: at,
    }
}

/// A `Deploy` of a static app named `name` with bundle `digest` at time `at` (tests).
#[cfg(test)]
pub(crate) fn deploy_for_test(name: &str, digest: &str, at: u64) -> Command {
    let manifest = format!("name = \"{name}\"\nkind = \"static\"\n");
    let spec = crate::manifest::Manifest::parse(&manifest, "t", None).expect("valid manifest");
    Command::Deploy {
        spec: Box::new(spec),
        digest: digest.into(),
        bundle_bytes: 10,
        at_unix_ms: at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(name: &str, digest: &str, at: u64) -> Command {
        deploy_for_test(name, digest, at)
    }

    #[test]
    fn deploys_create_versions_and_same_content_is_unchanged() {
        let mut table = AppTable::default();
        assert_eq!(
            table.apply(1, &deploy("a", "d1", 100)),
            Applied::Deployed {
                app: "a".into(),
                version: 1
            }
        );
        assert_eq!(
            table.apply(2, &deploy("a", "d1", 200)),
            Applied::Unchanged {
                app: "a".into(),
                version: 1
            }
        );
        assert_eq!(
            table.apply(3, &deploy("a", "d2", 300)),
            Applied::Deployed {
                app: "a".into(),
                version: 2
            }
        );
        // Going back to old content is a new release, not a rewind.
        assert_eq!(
            table.apply(4, &deploy("a", "d1", 400)),
            Applied::Deployed {
                app: "a".into(),
                version: 3
            }
        );
        let app = table.get("a").unwrap();
        assert_eq!(app.created_at_unix_ms, 100);
        assert_eq!(app.current().deployed_at_unix_ms, 400);
        assert_eq!(table.last_applied(), 4);
    }

    #[test]
    fn a_policy_change_applies_only_at_the_version_it_was_made_from() {
        use shoal_proxy::policy::{Access, Policy};
        let mut table = AppTable::default();
        table.apply(1, &deploy("a", "d1", 1));
        let private = Policy {
            access: Access::Private,
            ..Policy::default()
        };
        let set = |base_version| Command::SetPolicy {
            app: "a".into(),
            policy: Box::new(private.clone()),
            base_version,
        };
        assert_eq!(
            table.apply(2, &set(0)),
            Applied::PolicySet {
                app: "a".into(),
                version: 1
            }
        );
        // A second change made from the same read lost the race: nothing changes.
        assert_eq!(
            table.apply(3, &set(0)),
            Applied::PolicyConflict {
                app: "a".into(),
                version: 1
            }
        );
        assert_eq!(table.get("a").unwrap().policy, private);
        // A redeploy keeps the policy; a release's `[policy]` sets only what it names.
        table.apply(4, &deploy("a", "d2", 4));
        assert_eq!(table.get("a").unwrap().policy.access, Access::Private);
        let mut with_policy = deploy("a", "d3", 5);
        if let Command::Deploy { spec, .. } = &mut with_policy {
            spec.policy = Some(toml::from_str("max_body = \"1KiB\"").unwrap());
        }
        table.apply(5, &with_policy);
        let app = table.get("a").unwrap();
        assert_eq!(
            (app.policy.access, app.policy.max_body),
            (Access::Private, 1024)
        );
        assert_eq!(app.policy_version, 2);
        assert_eq!(
            table.apply(6, &set(0)),
            Applied::PolicyConflict {
                app: "a".into(),
                version: 2
            }
        );
    }

    #[test]
    fn deploy_tokens_are_added_once_and_revoked() {
        let mut table = AppTable::default();
        let token = DeployToken {
            id: "t1".into(),
            app: "a".into(),
            name: "n".into(),
            sha256: "h".into(),
            created_at_unix_ms: 0,
        };
        let add = Command::AddDeployToken {
            token: token.clone(),
        };
        assert_eq!(
            table.apply(1, &add),
            Applied::TokenAdded { id: "t1".into() }
        );
        assert_eq!(
            table.apply(2, &add),
            Applied::TokenRefused { id: "t1".into() }
        );
        let revoke = Command::RevokeDeployToken { id: "t1".into() };
        assert_eq!(
            table.apply(3, &revoke),
            Applied::TokenRevoked { id: "t1".into() }
        );
        assert_eq!(
            table.apply(4, &revoke),
            Applied::TokenRefused { id: "t1".into() }
        );
        assert!(table.deploy_tokens().is_empty());
    }

    #[test]
    fn delete_removes_and_reports_missing_apps() {
        let mut table = AppTable::default();
        table.apply(1, &deploy("a", "d1", 1));
        table.apply(2, &deploy("b", "d2", 1));
        assert_eq!(
            table.apply(3, &Command::Delete { name: "a".into() }),
            Applied::Deleted { app: "a".into() }
        );
        assert_eq!(
            table.apply(4, &Command::Delete { name: "a".into() }),
            Applied::NotFound { app: "a".into() }
        );
        assert_eq!(
            table.referenced_digests().into_iter().collect::<Vec<_>>(),
            ["d2"]
        );
        // Versions restart after a delete: the app is new.
        assert_eq!(
            table.apply(5, &deploy("a", "d3", 1)),
            Applied::Deployed {
                app: "a".into(),
                version: 1
            }
        );
    }

    #[test]
    fn run_commands_change_cron_jobs_only_and_a_tick_fires_once() {
        let mut table = AppTable::default();
        table.apply(1, &deploy_cron_for_test("job", "@hourly", "", 0));
        table.apply(2, &deploy("site", "d2", 0));
        let fire = |job: &str| Command::Fire {
            job: job.into(),
            fire: Fire {
                tick: 3600,
                attempt: 0,
                manual: false,
                fence: crate::runs::Fence { term: 1, index: 1 },
                release: 1,
                at_ms: 5,
                skip: None,
            },
        };
        assert!(matches!(
            table.apply(3, &fire("job")),
            Applied::Fired { .. }
        ));
        assert!(matches!(
            table.apply(4, &fire("job")),
            Applied::RunRefused {
                reason: RunRefusal::AlreadyFired { .. },
                ..
            }
        ));
        assert!(matches!(
            table.apply(5, &fire("site")),
            Applied::RunRefused {
                reason: RunRefusal::NotAJob(_),
                ..
            }
        ));
        assert_eq!(
            table.apply(6, &fire("nope")),
            Applied::NotFound { app: "nope".into() }
        );
        let started = Command::RunStarted {
            job: "job".into(),
            run_id: "3600".into(),
            worker: 9,
            at_ms: 6,
        };
        assert!(matches!(
            table.apply(7, &started),
            Applied::RunUpdated { .. }
        ));
        assert!(matches!(
            table.apply(8, &started),
            Applied::RunRefused { .. }
        ));
        assert_eq!(
            table.get("job").unwrap().runs.get("3600").unwrap().worker,
            Some(9)
        );
    }

    #[test]
    fn history_is_bounded_and_versions_keep_counting() {
        let mut table = AppTable::default();
        for i in 0..25u64 {
            table.apply(i + 1, &deploy("a", &format!("d{i}"), i));
        }
        let app = table.get("a").unwrap();
        assert_eq!(app.releases.len(), RELEASE_HISTORY);
        assert_eq!(app.current().version, 25);
        assert_eq!(app.releases[0].version, 16);
        assert!(!table.referenced_digests().contains("d0"));
    }

    #[test]
    fn replaying_the_same_commands_gives_the_same_table() {
        let commands = [
            deploy("a", "d1", 1),
            deploy("b", "d2", 2),
            Command::Delete { name: "a".into() },
        ];
        let mut first = AppTable::default();
        let mut second = AppTable::default();
        for (i, command) in commands.iter().enumerate() {
            first.apply(i as u64 + 1, command);
            second.apply(i as u64 + 1, command);
        }
        assert_eq!(first, second);
    }
}
