//! Real container runtime test: rootful podman 4.3 with its CNI backend runs
//! two busybox containers on the `twill` plugin; they get addresses from the
//! plugin, ping each other, and `podman rm -f` releases them (DEL).
//!
//! Everything runs inside a test-made network namespace and a private mount
//! namespace held open by a `sleep` process, so podman's container netns
//! mounts (`/run/netns`), libcni's cache (`/var/lib/cni`) and its shm lock
//! (`/dev/shm`) land on private tmpfs mounts, and storage, static and tmp
//! dirs point into a tempdir. Needs root, podman, runc, busybox (static),
//! nsenter/unshare; fails under `CI=true` without them.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::{bin, netns, veths, Netns};
use twill_harness::Prereqs;

const NETWORK: &str = "twillpod";
const BUSYBOX: &str = "/bin/busybox";

fn prerequisites() -> bool {
    // A static busybox runs in a rootfs with no libraries.
    let busybox = std::fs::read(BUSYBOX)
        .map(|b| is_static_elf64(&b))
        .unwrap_or(false);
    Prereqs::new()
        .root()
        .tools(&["ip", "podman", "runc", "nsenter", "unshare"])
        .condition(format!("a static busybox at {BUSYBOX}"), busybox)
        .hint("Debian: iproute2 podman runc util-linux busybox-static")
        .require()
}

/// A little-endian ELF64 executable without a PT_INTERP program header
/// (no dynamic loader needed).
fn is_static_elf64(b: &[u8]) -> bool {
    let u16_at = |o: usize| {
        b.get(o..o + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap()) as usize)
    };
    if b.get(..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| {
        b.get(phoff + i * phentsize..phoff + i * phentsize + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap()) != PT_INTERP)
    })
}

/// The podman world of one test run: config files, a busybox rootfs, and a
/// process holding a private mount namespace inside the test's netns.
struct Podman {
    dir: tempfile::TempDir,
    holder: Child,
    prefix: String,
}

impl Podman {
    fn new(host: &Netns, ipam_dir: &Path, subnet_file: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in [
            "plugins", "netd", "graph", "run", "tmp", "static", "vol", "rootfs",
        ] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::copy(bin(), d.join("plugins/twill")).unwrap();
        make_rootfs(&d.join("rootfs"));
        std::fs::write(
            d.join("netd").join(format!("{NETWORK}.conflist")),
            serde_json::to_vec(&serde_json::json!({
                // podman 4.3 vendors libcni 1.1, which knows results up to 1.0.0.
                "cniVersion": "1.0.0",
                "name": NETWORK,
                "plugins": [{
                    "type": "twill",
                    "subnetFile": subnet_file,
                    "dataDir": ipam_dir,
                    "bridge": "twill0",
                }],
            }))
            .unwrap(),
        )
        .unwrap();
        let p = |s: &str| d.join(s).display().to_string();
        std::fs::write(
            d.join("containers.conf"),
            format!(
                r#"[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[network]
network_backend = "cni"
network_config_dir = "{netd}"
cni_plugin_dirs = ["{plugins}"]
default_network = "{NETWORK}"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{tmp}"
static_dir = "{static_}"
volume_path = "{vol}"
"#,
                netd = p("netd"),
                plugins = p("plugins"),
                tmp = p("tmp"),
                static_ = p("static"),
                vol = p("vol"),
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                p("graph"),
                p("run")
            ),
        )
        .unwrap();

        // libcni caches results in /var/lib/cni: give it a mount point (an
        // empty directory is all that stays in the root filesystem).
        let mut holder = Command::new("nsenter")
            .arg(format!("--net={}", host.path()))
            .args([
                "unshare",
                "-m",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
            ])
            .arg(
                "mount -t tmpfs tmpfs /run/netns && mount -t tmpfs tmpfs /dev/shm \
                 && mkdir -p /var/lib/cni && mount -t tmpfs tmpfs /var/lib/cni \
                 && echo ready && exec sleep 3600",
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let podman = Podman {
            dir,
            holder,
            prefix: format!("twpod{}", std::process::id()),
        };
        assert_eq!(line.trim(), "ready", "mount namespace setup failed");
        podman
    }

    /// `podman args...` inside the test's network and mount namespaces.
    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("nsenter")
            .arg("-t")
            .arg(self.holder.id().to_string())
            .args(["-m", "-n", "podman"])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .env(
                "CONTAINERS_STORAGE_CONF",
                self.dir.path().join("storage.conf"),
            )
            .env_remove("CONTAINER_HOST")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!(
                "podman {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn name(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// Starts a detached busybox container on the twill network; returns its id.
    fn start(&self, name: &str) -> String {
        let rootfs = self.dir.path().join("rootfs").display().to_string();
        self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            NETWORK,
            "--rootfs",
            &rootfs,
            "sleep",
            "600",
        ])
    }

    fn ip_of(&self, name: &str) -> String {
        self.ok(&[
            "inspect",
            "--format",
            &format!("{{{{.NetworkSettings.Networks.{NETWORK}.IPAddress}}}}"),
            name,
        ])
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-f", "-t", "0", "--all"]);
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        // cgroupfs leaves empty parent cgroups; rmdir fails on busy ones, so
        // this cannot disturb anybody else's containers.
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in controllers.flatten() {
                let parent = c.path().join("libpod_parent");
                let _ = std::fs::remove_dir(parent.join("conmon"));
                let _ = std::fs::remove_dir(&parent);
            }
        }
    }
}

fn make_rootfs(root: &Path) {
    for sub in ["bin", "proc", "sys", "dev", "etc", "tmp", "run"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "ping", "ip", "sleep", "ls", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
}

/// Reservation files (`<ip>` -> owner container id).
fn reservations(store: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(store)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    name.parse::<std::net::Ipv4Addr>().ok()?;
                    let body = std::fs::read_to_string(e.path()).ok()?;
                    Some((name, body.lines().next()?.to_string()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn podman_containers_get_twill_addresses_and_ping() {
    if !prerequisites() {
        return;
    }
    let host = netns("podhost");
    let state = tempfile::tempdir().unwrap();
    let subnet_file: PathBuf = state.path().join("subnet.env");
    std::fs::write(
        &subnet_file,
        "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.7.1/24\nTWILL_MTU=1450\nTWILL_IPMASQ=false\n",
    )
    .unwrap();
    let ipam = state.path().join("ipam");
    let store = ipam.join(NETWORK);
    let podman = Podman::new(&host, &ipam, &subnet_file);
    let info = podman.ok(&["info", "--format", "{{.Host.NetworkBackend}}"]);
    assert_eq!(info, "cni", "podman did not pick the CNI backend");

    let (n1, n2) = (podman.name("c1"), podman.name("c2"));
    let id1 = podman.start(&n1);
    let id2 = podman.start(&n2);
    let (ip1, ip2) = (podman.ip_of(&n1), podman.ip_of(&n2));
    assert_ne!(ip1, ip2);
    for ip in [&ip1, &ip2] {
        assert!(
            ip.starts_with("10.244.7.") && ip != "10.244.7.1" && ip != "10.244.7.255",
            "{ip}"
        );
    }
    // The plugin's store agrees with podman: one reservation per container.
    assert_eq!(
        reservations(&store),
        {
            let mut want = vec![(ip1.clone(), id1.clone()), (ip2.clone(), id2.clone())];
            want.sort();
            want
        },
        "reservations vs podman"
    );
    // And so does the kernel inside the container.
    let addr = podman.ok(&["exec", &n1, "ip", "-o", "-4", "addr", "show", "eth0"]);
    assert!(addr.contains(&format!("{ip1}/24")), "{addr}");
    let link = podman.ok(&["exec", &n1, "ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1450"), "{link}");
    assert_eq!(veths(&host).len(), 2, "{:?}", veths(&host));

    for (from, to) in [(&n1, &ip2), (&n2, &ip1)] {
        let out = podman.run(&["exec", from, "ping", "-c", "1", "-W", "2", to]);
        assert!(
            out.status.success(),
            "{from} -> {to}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // rm -f runs DEL: the address and the veth of c1 go, c2 is untouched.
    podman.ok(&["rm", "-f", "-t", "0", &n1]);
    assert_eq!(reservations(&store), vec![(ip2.clone(), id2.clone())]);
    assert_eq!(veths(&host).len(), 1, "{:?}", veths(&host));
    podman.ok(&["rm", "-f", "-t", "0", &n2]);
    assert!(
        reservations(&store).is_empty(),
        "{:?}",
        reservations(&store)
    );
    assert!(veths(&host).is_empty(), "{:?}", veths(&host));
}
