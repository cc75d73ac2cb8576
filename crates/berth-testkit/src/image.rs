//! The test app as a static binary and as FROM-scratch images (`v1`, `v2`), built once per content.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use bollard::Docker;
use bollard::query_parameters::BuildImageOptionsBuilder;
use futures_util::StreamExt;

/// Connects to the engine, or returns `None` after printing why the test is skipped.
/// Under `BERTH_REQUIRE_DOCKER=1` a missing engine fails the test instead.
pub async fn docker_or_skip(test: &str) -> Option<Docker> {
    let connect = async {
        let docker = Docker::connect_with_local_defaults().map_err(|e| e.to_string())?;
        let docker = docker.negotiate_version().await.map_err(|e| e.to_string())?;
        docker.ping().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(docker)
    };
    match connect.await {
        Ok(d) => Some(d),
        Err(why) if std::env::var("BERTH_REQUIRE_DOCKER").as_deref() == Ok("1") => {
            panic!("{test}: BERTH_REQUIRE_DOCKER=1 but no Docker engine answers: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: no Docker engine answers ({why}); set BERTH_REQUIRE_DOCKER=1 to fail instead");
            None
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// Builds the statically linked test app (once per test process; cargo serialises across processes).
pub fn testapp_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let root = workspace_root();
            let target = "x86_64-unknown-linux-gnu";
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(&root)
                .args(["build", "--release", "-p", "berth-testapp", "--target", target])
                // Only the test app's own build sees this flag: a static, libc-free-at-runtime binary.
                .env("RUSTFLAGS", "-C target-feature=+crt-static")
                .status()
                .expect("run cargo to build berth-testapp");
            assert!(status.success(), "building the static berth-testapp failed");
            let target_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
            target_dir.join(target).join("release/berth-testapp")
        })
        .clone()
}

/// Instance ids of the containers (running or not) that Berth's node `node` has on the engine.
pub async fn node_containers(docker: &Docker, node: &str) -> Vec<String> {
    let filters = HashMap::from([("label", vec![format!("berth.node={node}")])]);
    let options = bollard::query_parameters::ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
    let list = docker.list_containers(Some(options)).await.expect("list containers");
    list.into_iter().filter_map(|c| c.labels?.get("berth.instance").cloned()).collect()
}

/// Image tags of the test app, one per baked-in version.
#[derive(Debug, Clone)]
pub struct TestImages {
    pub v1: String,
    pub v2: String,
}

fn content_tag(binary: &[u8]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    binary.hash(&mut h);
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// A one-directory tar archive in ustar format: enough for a build context.
fn tar(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data, mode) in files {
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |field: &mut [u8], value: u64| {
            let text = format!("{value:0width$o}\0", width = field.len() - 1);
            field.copy_from_slice(text.as_bytes());
        };
        octal(&mut header[100..108], u64::from(*mode));
        octal(&mut header[108..116], 0);
        octal(&mut header[116..124], 0);
        octal(&mut header[124..136], data.len() as u64);
        octal(&mut header[136..148], 0);
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
        let text = format!("{sum:06o}\0 ");
        header[148..156].copy_from_slice(text.as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

async fn build(docker: &Docker, tag: &str, binary: &[u8], version: &str) {
    if docker.inspect_image(tag).await.is_ok() {
        return;
    }
    let dockerfile = format!(
        "FROM scratch\nCOPY berth-testapp /berth-testapp\nENV APP_VERSION={version}\nEXPOSE 8080\nENTRYPOINT [\"/berth-testapp\"]\n"
    );
    let context = tar(&[("Dockerfile", dockerfile.as_bytes(), 0o644), ("berth-testapp", binary, 0o755)]);
    let options = BuildImageOptionsBuilder::new().t(tag).rm(true).build();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(bytes::Bytes::from(context))));
    while let Some(step) = stream.next().await {
        let info = step.unwrap_or_else(|e| panic!("building {tag}: {e}"));
        if let Some(err) = info.error_detail {
            panic!("building {tag}: {err:?}");
        }
    }
}

/// Builds (or finds) the v1 and v2 test images for the current test app binary.
pub async fn test_images(docker: &Docker) -> TestImages {
    static TAGS: OnceLock<TestImages> = OnceLock::new();
    if let Some(t) = TAGS.get() {
        return t.clone();
    }
    let binary = std::fs::read(testapp_binary()).expect("read berth-testapp");
    let hash = content_tag(&binary);
    let images = TestImages { v1: format!("berth-testapp:{hash}-v1"), v2: format!("berth-testapp:{hash}-v2") };
    let mut built = HashMap::new();
    for (tag, version) in [(&images.v1, "v1"), (&images.v2, "v2")] {
        build(docker, tag, &binary, version).await;
        built.insert(tag.clone(), version);
    }
    let _ = TAGS.set(images.clone());
    images
}
