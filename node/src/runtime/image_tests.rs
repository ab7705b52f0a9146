//! Tests of the runtime image: context planning and hashing without Docker, then the built
//! image against a real engine (skipped with a notice when there is none, fatal in CI).

use std::io::{Cursor, Write};
use std::time::Instant;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};

use super::*;

/// A Docker client if the engine answers; in CI its absence is a failure.
async fn docker_or_skip() -> Option<Docker> {
    let reason = match connect_docker().await {
        Ok(docker) => match docker.ping().await {
            Ok(_) => return Some(docker),
            Err(err) => err.to_string(),
        },
        Err(err) => err.to_string(),
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("Docker is required in CI ({reason})");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: docker not available ({reason})"
    );
    None
}

/// Whether the host can build the image at all (it needs Node.js); in CI it must.
fn host_has_node() -> bool {
    if NODE_CANDIDATES.iter().any(|path| Path::new(path).is_file()) {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("Node.js is required in CI to build the runtime image");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: node not installed on this host"
    );
    false
}

fn synthetic_plan(dir: &Path) -> ContextPlan {
    fs::write(dir.join("tool"), b"#!binary").unwrap();
    fs::set_permissions(dir.join("tool"), fs::Permissions::from_mode(0o755)).unwrap();
    let mut plan = ContextPlan::default();
    plan.add_bytes(
        "/etc/passwd",
        0o644,
        "nobody:x:65534:65534::/:/sbin/nologin\n",
    );
    plan.add_dir("/tmp", 0o1777);
    plan.add_host_file("/usr/bin/tool", &dir.join("tool"))
        .unwrap();
    plan
}

fn hash_of(plan: &ContextPlan) -> String {
    render_context(plan, false).unwrap().0
}

#[test]
fn content_hash_is_stable_and_covers_paths_modes_and_contents() {
    let dir = tempfile::tempdir().unwrap();
    let plan = synthetic_plan(dir.path());
    let base = hash_of(&plan);
    assert_eq!(base, hash_of(&plan));
    assert_eq!(
        base,
        render_context(&plan, true).unwrap().0,
        "tar and hash-only passes agree"
    );
    assert_eq!(base.len(), 64);

    let mut extra = plan.clone();
    extra.add_bytes("/etc/extra", 0o644, "x");
    assert_ne!(base, hash_of(&extra), "an added file changes the hash");

    let mut moved = ContextPlan::default();
    for (path, entry) in &plan.entries {
        moved
            .entries
            .insert(path.replace("passwd", "passwe"), entry.clone());
    }
    assert_ne!(base, hash_of(&moved), "a renamed file changes the hash");

    let mut chmod = plan.clone();
    chmod.add_dir("/tmp", 0o755);
    assert_ne!(base, hash_of(&chmod), "a mode changes the hash");

    fs::write(dir.path().join("tool"), b"#!binarz").unwrap();
    assert_ne!(base, hash_of(&plan), "a changed host file changes the hash");
}

#[test]
fn entry_boundaries_are_part_of_the_hash() {
    let mut one = ContextPlan::default();
    one.add_bytes("/a", 0o644, "bc");
    let mut two = ContextPlan::default();
    two.add_bytes("/ab", 0o644, "c");
    assert_ne!(hash_of(&one), hash_of(&two));
}

#[test]
fn tar_holds_sorted_entries_with_parents_modes_and_contents() {
    let dir = tempfile::tempdir().unwrap();
    let plan = synthetic_plan(dir.path());
    let tar = render_context(&plan, true).unwrap().1.unwrap();
    let mut archive = tar::Archive::new(Cursor::new(tar));
    let mut seen = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let header = entry.header();
        let (mode, kind, uid) = (
            header.mode().unwrap(),
            header.entry_type(),
            header.uid().unwrap(),
        );
        let mut content = String::new();
        entry.read_to_string(&mut content).unwrap();
        seen.push((path, mode, kind.is_dir(), uid, content));
    }
    let expect = |path: &str, mode: u32, dir: bool, content: &str| {
        (path.to_string(), mode, dir, 0, content.to_string())
    };
    assert_eq!(
        seen,
        vec![
            expect("rootfs", 0o755, true, ""),
            expect("rootfs/etc", 0o755, true, ""),
            expect(
                "rootfs/etc/passwd",
                0o644,
                false,
                "nobody:x:65534:65534::/:/sbin/nologin\n"
            ),
            expect("rootfs/tmp", 0o1777, true, ""),
            expect("rootfs/usr", 0o755, true, ""),
            expect("rootfs/usr/bin", 0o755, true, ""),
            expect("rootfs/usr/bin/tool", 0o755, false, "#!binary"),
        ]
    );
}

#[test]
fn ldd_output_is_parsed() {
    let sample = "\tlinux-vdso.so.1 (0x00007ffd1a9f2000)\n\
        \tlibdl.so.2 => /lib/x86_64-linux-gnu/libdl.so.2 (0x00007fb46ee47000)\n\
        \tlibstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 (0x00007fb46ec00000)\n\
        \tlibmissing.so.1 => not found\n\
        \tlinux-gate.so.1 =>  (0x00007fb46ee00000)\n\
        \t/lib64/ld-linux-x86-64.so.2 (0x00007fb46ee5f000)\n";
    let found = |name: &str, path: &str| LinkedLibrary::Found {
        name: name.to_string(),
        path: PathBuf::from(path),
    };
    assert_eq!(
        parse_ldd_output(sample),
        vec![
            found("libdl.so.2", "/lib/x86_64-linux-gnu/libdl.so.2"),
            found("libstdc++.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6"),
            LinkedLibrary::Missing {
                name: "libmissing.so.1".to_string()
            },
            found("/lib64/ld-linux-x86-64.so.2", "/lib64/ld-linux-x86-64.so.2"),
        ]
    );
    assert_eq!(parse_ldd_output("\tstatically linked\n"), vec![]);
    assert_eq!(parse_ldd_output("\tnot a dynamic executable\n"), vec![]);
    // musl's ldd names the loader as libc.
    assert_eq!(
        parse_ldd_output("\tlibc.musl-x86_64.so.1 => /lib/ld-musl-x86_64.so.1 (0x7f0000000000)\n"),
        vec![found("libc.musl-x86_64.so.1", "/lib/ld-musl-x86_64.so.1")]
    );
}

#[test]
fn elf_interpreter_is_read_from_the_program_headers() {
    let exe = std::env::current_exe().unwrap();
    let interpreter = read_elf_interpreter(&mut File::open(&exe).unwrap()).unwrap();
    let interpreter = interpreter.expect("a test binary is dynamically linked");
    assert!(
        interpreter.is_absolute() && interpreter.exists(),
        "{}",
        interpreter.display()
    );
    let listed = parse_ldd_output(
        &String::from_utf8(Command::new("ldd").arg(&exe).output().unwrap().stdout).unwrap(),
    );
    assert!(
        listed
            .iter()
            .any(|lib| matches!(lib, LinkedLibrary::Found { path, .. } if *path == interpreter)),
        "ldd names the same loader: {listed:?}"
    );
}

#[test]
fn non_elf_files_are_rejected_and_libraries_have_no_interpreter() {
    let script = read_elf_interpreter(&mut Cursor::new(b"#!/bin/sh\necho hi\n".to_vec()));
    assert_eq!(script.unwrap_err().kind(), io::ErrorKind::InvalidData);
    assert!(read_elf_interpreter(&mut Cursor::new(Vec::new())).is_err());
    let exe = std::env::current_exe().unwrap();
    let ldd = Command::new("ldd").arg(&exe).output().unwrap().stdout;
    let libraries: Vec<PathBuf> = parse_ldd_output(&String::from_utf8_lossy(&ldd))
        .into_iter()
        .filter_map(|lib| match lib {
            // glibc's libc.so.6 and the loader are executables too; plain libraries are not.
            LinkedLibrary::Found { name, path }
                if name.starts_with("libgcc_s") || name.starts_with("libm.") =>
            {
                Some(path)
            }
            _ => None,
        })
        .collect();
    assert!(
        !libraries.is_empty(),
        "a Rust test binary links libgcc_s or libm"
    );
    for library in libraries {
        let interpreter = read_elf_interpreter(&mut File::open(&library).unwrap()).unwrap();
        assert_eq!(interpreter, None, "{}", library.display());
    }
}

#[test]
fn dockerfile_is_scratch_non_root_and_shell_free() {
    let mut plan = ContextPlan::default();
    plan.library_dirs.insert("/lib/x86_64-linux-gnu".into());
    plan.has_ca_bundle = true;
    let dockerfile = render_dockerfile(&plan);
    let lines: Vec<&str> = dockerfile.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines[0], "FROM scratch");
    assert!(lines.contains(&"COPY rootfs/ /"));
    assert!(lines.contains(&"USER 65534:65534"));
    assert!(lines.contains(&"WORKDIR /app"));
    assert!(lines.contains(&"ENV PATH=/usr/local/bin:/usr/bin:/bin NODE_ENV=production"));
    assert!(lines.contains(&"ENV LD_LIBRARY_PATH=/lib/x86_64-linux-gnu"));
    assert!(lines.contains(&"ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"));
    assert!(
        !dockerfile.contains("PYTHON"),
        "no python settings without python"
    );
    assert!(
        !dockerfile.contains("RUN"),
        "nothing can run at build time: there is no shell"
    );
    for line in lines
        .iter()
        .filter(|l| l.starts_with("CMD") || l.starts_with("ENTRYPOINT"))
    {
        assert!(line.contains(" [\""), "exec form only: {line}");
    }
}

#[tokio::test]
async fn host_context_is_stable_and_holds_real_files_only() {
    if !host_has_node() {
        return;
    }
    let first = build_context().await.unwrap();
    let second = build_context().await.unwrap();
    assert_eq!(first.content_hash, second.content_hash);
    assert_eq!(first.tar, second.tar, "the tar itself is reproducible");
    let mut archive = tar::Archive::new(Cursor::new(first.tar));
    let mut files = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let path = entry
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let kind = entry.header().entry_type();
        assert!(
            kind.is_file() || kind.is_dir(),
            "{path} is neither file nor directory"
        );
        assert_eq!(
            entry.header().mode().unwrap() & 0o6000,
            0,
            "{path} is setuid/setgid"
        );
        files.insert(path, entry.header().size().unwrap());
    }
    let node_interpreter = read_elf_interpreter(&mut File::open(find_node().unwrap()).unwrap())
        .unwrap()
        .unwrap();
    for required in [
        "Dockerfile",
        "rootfs/usr/bin/node",
        "rootfs/etc/passwd",
        "rootfs/app",
    ] {
        assert!(files.contains_key(required), "{required} missing");
    }
    let loader = rootfs_path(&node_interpreter.to_string_lossy());
    assert!(
        files[&loader] > 0,
        "{loader} holds the real loader, not a link"
    );
    assert!(files.keys().all(|path| !path.contains("__pycache__")));
    assert!(files
        .keys()
        .all(|path| !path.ends_with("/sh") && !path.contains("/apt")));
    assert_eq!(
        first.has_python,
        files.contains_key("rootfs/usr/bin/python3")
    );
}

/// What a container printed, and how it ended.
struct RunOutcome {
    exit_code: i64,
    output: String,
}

/// Runs `cmd` in `image` hardened as production runs apps, and always removes the container.
/// `Err` when the engine refused to create or start it.
async fn run_in_image(docker: &Docker, image: &str, cmd: &[&str]) -> Result<RunOutcome, String> {
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(cmd.iter().map(|arg| arg.to_string()).collect()),
        labels: Some(HashMap::from([(
            "io.shoal.test".to_string(),
            "image".to_string(),
        )])),
        network_disabled: Some(true),
        host_config: Some(HostConfig {
            readonly_rootfs: Some(true),
            cap_drop: Some(vec!["ALL".to_string()]),
            security_opt: Some(vec!["no-new-privileges:true".to_string()]),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_string(),
                "size=16m".to_string(),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = docker
        .create_container(None::<CreateContainerOptions>, body)
        .await
        .map_err(|err| err.to_string())?;
    let outcome = start_wait_and_read(docker, &created.id).await;
    let remove = RemoveContainerOptionsBuilder::new().force(true).build();
    docker
        .remove_container(&created.id, Some(remove))
        .await
        .unwrap();
    outcome
}

async fn start_wait_and_read(docker: &Docker, id: &str) -> Result<RunOutcome, String> {
    docker
        .start_container(id, None)
        .await
        .map_err(|err| err.to_string())?;
    let exit_code = match docker.wait_container(id, None).next().await {
        Some(Ok(response)) => response.status_code,
        Some(Err(DockerError::DockerContainerWaitError { code, .. })) => code,
        other => panic!("waiting for {id}: {other:?}"),
    };
    let options = LogsOptionsBuilder::new().stdout(true).stderr(true).build();
    let mut logs = docker.logs(id, Some(options));
    let mut output = String::new();
    while let Some(chunk) = logs.next().await {
        output.push_str(&String::from_utf8_lossy(&chunk.unwrap().into_bytes()));
    }
    Ok(RunOutcome { exit_code, output })
}

/// Runs a node one-liner in the image and returns its trimmed output, asserting success.
async fn node_eval(docker: &Docker, image: &str, script: &str) -> String {
    let outcome = run_in_image(docker, image, &["node", "-e", script])
        .await
        .unwrap();
    assert_eq!(
        outcome.exit_code, 0,
        "node -e {script:?}: {}",
        outcome.output
    );
    outcome.output.trim().to_string()
}

#[tokio::test]
async fn ensure_builds_once_then_reuses_the_image() {
    let Some(docker) = docker_or_skip().await else {
        return;
    };
    let started = Instant::now();
    let (first, built) = ensure_with_outcome(&docker).await.unwrap();
    let first_took = started.elapsed();
    let first_id = docker.inspect_image(&first.reference).await.unwrap().id;

    let started = Instant::now();
    let (second, rebuilt) = ensure_with_outcome(&docker).await.unwrap();
    let reuse_took = started.elapsed();
    assert_eq!(first, second);
    assert!(!rebuilt, "the second call reuses the image");
    let inspect = docker.inspect_image(&second.reference).await.unwrap();
    assert_eq!(
        inspect.id, first_id,
        "no rebuild: the image id is unchanged"
    );
    let latest = docker.inspect_image("shoal-runtime:latest").await.unwrap();
    assert_eq!(latest.id, first_id, "latest points at the newest");

    assert_eq!(
        first.reference,
        format!("shoal-runtime:{}", &first.content_hash[..12])
    );
    let config = inspect.config.unwrap();
    assert_eq!(config.labels.unwrap()[HASH_LABEL], first.content_hash);
    assert_eq!(config.user.as_deref(), Some("65534:65534"));
    assert_eq!(config.working_dir.as_deref(), Some("/app"));
    assert_eq!(config.entrypoint, None);
    let size_mb = inspect.size.unwrap_or_default() as f64 / 1e6;
    let _ = writeln!(
        std::io::stderr(),
        "runtime image {}: {} in {first_took:.2?} (built: {built}), reused in {reuse_took:.2?}, \
         {size_mb:.1} MB, python: {}",
        first.reference,
        if built { "built" } else { "found" },
        first.has_python
    );
}

#[tokio::test]
async fn node_runs_as_nobody() {
    let Some(docker) = docker_or_skip().await else {
        return;
    };
    let image = ensure_runtime_image(&docker).await.unwrap().reference;
    assert_eq!(node_eval(&docker, &image, "console.log(6*7)").await, "42");
    assert_eq!(
        node_eval(&docker, &image, "console.log(process.getuid())").await,
        "65534"
    );
    let identity = "const os = require('os'); \
        console.log(process.getgid(), os.userInfo().username, process.cwd())";
    assert_eq!(
        node_eval(&docker, &image, identity).await,
        "65534 nobody /app"
    );
    let tmp = "const fs = require('fs'); fs.writeFileSync('/tmp/x', 'ok'); \
        console.log(fs.readFileSync('/tmp/x', 'utf8'))";
    assert_eq!(node_eval(&docker, &image, tmp).await, "ok");
    let certs = "console.log(require('fs').existsSync('/etc/ssl/certs/ca-certificates.crt'))";
    let host_has_certs = Path::new(CA_BUNDLE).is_file();
    assert_eq!(
        node_eval(&docker, &image, certs).await,
        host_has_certs.to_string()
    );
}

#[tokio::test]
async fn there_is_no_shell_and_no_package_manager() {
    let Some(docker) = docker_or_skip().await else {
        return;
    };
    let image = ensure_runtime_image(&docker).await.unwrap().reference;
    for cmd in [
        &["/bin/sh", "-c", "true"][..],
        &["sh", "-c", "true"],
        &["id", "-u"],
    ] {
        match run_in_image(&docker, &image, cmd).await {
            Err(err) => assert!(
                err.contains("no such file") || err.contains("not found"),
                "{err}"
            ),
            Ok(outcome) => {
                assert_ne!(outcome.exit_code, 0, "{cmd:?} ran: {}", outcome.output);
                assert!(
                    outcome.output.contains("no such file"),
                    "{}",
                    outcome.output
                );
            }
        }
    }
    let probe = "const fs = require('fs'); \
        const bad = ['/bin/sh', '/bin/bash', '/usr/bin/apt', '/usr/bin/apt-get', '/usr/bin/dpkg', \
          '/sbin/apk', '/usr/bin/env', '/usr/bin/id'].filter(p => fs.existsSync(p)); \
        const dirs = ['/bin', '/sbin', '/usr/bin', '/usr/sbin', '/usr/local/bin']; \
        const tools = dirs.filter(d => fs.existsSync(d)).flatMap(d => fs.readdirSync(d)); \
        console.log(JSON.stringify({ bad, tools: tools.sort() }))";
    let found = node_eval(&docker, &image, probe).await;
    assert!(
        found == r#"{"bad":[],"tools":["node"]}"#
            || found == r#"{"bad":[],"tools":["node","python3"]}"#,
        "{found}"
    );
}

#[tokio::test]
async fn python_runs_when_the_host_has_it() {
    let Some(docker) = docker_or_skip().await else {
        return;
    };
    let runtime = ensure_runtime_image(&docker).await.unwrap();
    let script = "import hashlib, json, ssl, sqlite3, os; \
        print(6*7, os.getuid(), hashlib.sha256(b'').hexdigest()[:8])";
    let outcome = run_in_image(&docker, &runtime.reference, &["python3", "-c", script]).await;
    if runtime.has_python {
        let outcome = outcome.unwrap();
        assert_eq!(outcome.exit_code, 0, "{}", outcome.output);
        assert_eq!(outcome.output.trim(), "42 65534 e3b0c442");
    } else {
        let _ = writeln!(std::io::stderr(), "note: the host has no usable python3");
        assert!(outcome.is_err() || outcome.unwrap().exit_code != 0);
    }
}

#[test]
fn build_error_messages_become_image_errors() {
    let progress = BuildInfo {
        stream: Some("Step 1/8 : FROM scratch\n".into()),
        ..Default::default()
    };
    assert!(check_build_message(Ok(progress)).is_ok());
    let failed = BuildInfo {
        error_detail: Some(bollard::models::ErrorDetail {
            code: None,
            message: Some("COPY failed: no source files".into()),
        }),
        ..Default::default()
    };
    let err = check_build_message(Ok(failed)).unwrap_err();
    assert!(
        matches!(&err, RuntimeError::Image(m) if m.contains("COPY failed")),
        "{err}"
    );
    let stream = DockerError::DockerStreamError {
        error: "boom".into(),
    };
    assert!(
        matches!(check_build_message(Err(stream)), Err(RuntimeError::Image(m)) if m.contains("boom"))
    );
}
