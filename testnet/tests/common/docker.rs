//! The Docker layer's shared run (`docker.rs`, `names.rs`): a testnet of two hosts with the
//! Docker plugin enabled, one real `dockerd` per host (its own mount namespace, its
//! folder under `/tmp`), and a busybox image made with `docker import`. See `docker.rs`
//! for the picture.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use testnet::{Options, Testnet};

/// The overlay network's extra range (beside testnet's 10.42.0.0/16).
pub const EXTRA_RANGE: &str = "10.43.0.0/16";

pub const DOCKER: &str = "/usr/bin/docker";
pub const DOCKERD: &str = "/usr/sbin/dockerd";
pub const BUSYBOX: &str = "/bin/busybox";
/// A container's command that answers `pong` to every TCP connection on port 5000.
pub const PONG_SERVER: [&str; 7] = ["nc", "-ll", "-p", "5000", "-e", "/bin/echo", "pong"];
pub const IMAGE: &str = "ovdbb:1";
pub const CREATE: &[&str] = &[
    "network",
    "create",
    "-d",
    "overlayd",
    "--ipam-driver",
    "overlayd",
    "--subnet",
    "10.42.0.0/16",
];

/// One host's `dockerd`, started by this test: stopped by PID and its folder removed on
/// drop (also on panic).
pub struct Dockerd {
    child: Option<Child>,
    dir: PathBuf,
    netns: String,
    /// Extra arguments of dockerd (e.g. `--dns`).
    args: Vec<String>,
}

impl Dockerd {
    pub fn socket(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.display())
    }

    /// Starts dockerd in `netns`, in its own mount namespace where `dir/plugins` is
    /// `/run/docker/plugins` (so it sees only its own host's plugin), and waits until it answers.
    pub fn start(netns: &str, dir: &Path, args: &[&str]) -> Dockerd {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut me = Dockerd {
            child: Some(Dockerd::spawn(netns, dir, &args)),
            dir: dir.to_owned(),
            netns: netns.to_owned(),
            args,
        };
        me.wait_ready();
        me
    }

    fn spawn(netns: &str, dir: &Path, args: &[String]) -> Child {
        std::fs::create_dir_all(dir.join("plugins")).expect("dockerd dir");
        let d = dir.display();
        let script = format!(
            "mount --bind {d}/plugins /run/docker/plugins && exec {DOCKERD} --data-root {d}/data \
             --exec-root {d}/ex -H unix://{d}/docker.sock --pidfile {d}/docker.pid \
             --iptables=false --ip6tables=false --bridge=none --storage-driver vfs -D {}",
            args.join(" ")
        );
        let log = std::fs::File::create(dir.join("dockerd.log")).expect("dockerd log");
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .args([
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start dockerd")
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if docker_raw(
                &self.socket(),
                &["version", "--format", "{{.Server.Version}}"],
            )
            .status
            .success()
            {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "dockerd in {} exited ({status}): {}",
                    self.netns,
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGTERM, up to 30 s, then SIGKILL; reaps it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on the PID of our own child (nsenter/unshare/sh exec into dockerd).
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn restart(&mut self) {
        self.stop();
        self.child = Some(Dockerd::spawn(&self.netns, &self.dir, &self.args));
        self.wait_ready();
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            // Containers first: their endpoints are the plugin's to remove.
            let ids = docker_raw(&self.socket(), &["ps", "-aq"]);
            for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
                let _ = docker_raw(&self.socket(), &["rm", "-f", id]);
            }
        }
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn docker_raw(socket: &str, args: &[&str]) -> Output {
    Command::new(DOCKER)
        .arg("-H")
        .arg(socket)
        .args(args)
        .env("DOCKER_CONFIG", "/tmp/ovd-docker-cli")
        .stdin(Stdio::null())
        .output()
        .expect("run docker")
}

/// The run: testnet, one dockerd per host, the image.
pub struct Run {
    // Field order is drop order: dockerds (and their containers) before the testnet.
    pub dockerds: Vec<Dockerd>,
    pub net: Testnet,
    pub root: PathBuf,
    made_plugins_dir: bool,
    /// A namespace on the underlay that is no member (`Run::outsider`), removed on drop.
    outsider: Option<String>,
}

impl Drop for Run {
    fn drop(&mut self) {
        self.dockerds.clear();
        if let Some(ns) = self.outsider.take() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.root);
        if self.made_plugins_dir {
            let _ = std::fs::remove_dir("/run/docker/plugins");
            let _ = std::fs::remove_dir("/run/docker");
        }
    }
}

impl Run {
    /// Adds a namespace on the underlay switch that is no member of the overlay (a machine
    /// of the hosts' LAN), with address `addr` in the underlay's /15 and no route to the
    /// overlay; returns its name.
    pub fn outsider(&mut self, addr: &str) -> String {
        let ns = format!("odkout{:x}", std::process::id());
        let switch = self.net.underlay_ns();
        super::ip(&["netns", "add", &ns]);
        self.outsider = Some(ns.clone());
        super::ip(&[
            "link", "add", "odkout", "netns", &switch, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ]);
        super::ip(&[
            "-n", &switch, "link", "set", "odkout", "master", "br0", "up",
        ]);
        super::ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/15"),
            "dev",
            "eth0",
        ]);
        super::ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        super::ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    pub fn docker(&self, i: usize, args: &[&str]) -> Output {
        docker_raw(&self.dockerds[i - 1].socket(), args)
    }

    /// `docker ARGS` on host `i`, which must succeed; its stdout, trimmed.
    pub fn ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.docker(i, args);
        assert!(
            out.status.success(),
            "h{i}: docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `docker ARGS` on host `i`, which must fail; its stderr.
    pub fn fails(&self, i: usize, args: &[&str]) -> String {
        let out = self.docker(i, args);
        assert!(
            !out.status.success(),
            "h{i}: docker {} succeeded but should not: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).trim().to_owned()
    }

    pub fn ip_of(&self, i: usize, container: &str) -> String {
        self.ok(
            i,
            &[
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                container,
            ],
        )
    }

    /// Polls `docker exec c ping -c1 -W1 to` until it answers or `within` passes.
    pub fn pings(&self, i: usize, container: &str, to: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self
                .docker(i, &["exec", container, "ping", "-c1", "-W1", to])
                .status
                .success()
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// `nft ARGS` in host `i`'s namespace: (success, stdout).
    pub fn nft(&self, i: usize, args: &[&str]) -> (bool, String) {
        let ns = self.net.host_ns(i);
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "nft"])
            .args(args)
            .output()
            .expect("nft");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Whether `c` on host `i` gets `pong` from `to`:5000 over TCP (busybox nc, 2 s
    /// connect timeout).
    pub fn tcp(&self, i: usize, c: &str, to: &str) -> bool {
        let out = self.docker(i, &["exec", c, "nc", "-w", "2", to, "5000"]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("pong")
    }

    /// `ip -n hI ARGS` output.
    pub fn ip(&self, i: usize, args: &[&str]) -> String {
        let ns = self.net.host_ns(i);
        let out = Command::new("ip")
            .arg("-n")
            .arg(&ns)
            .args(args)
            .output()
            .expect("ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Links and addresses of host `i`: (link count, address count, plugin link names).
    pub fn footprint(&self, i: usize) -> (usize, usize, Vec<String>) {
        let links = self.ip(i, &["-o", "link"]);
        let ours = links
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .filter(|n| n.starts_with("ovd"))
            .collect();
        (
            links.lines().count(),
            self.ip(i, &["-o", "addr"]).lines().count(),
            ours,
        )
    }
}

pub fn tools_present() -> bool {
    for tool in [DOCKER, DOCKERD, BUSYBOX] {
        if !Path::new(tool).exists() {
            eprintln!(
                "skipped: {tool} is missing (scripts/setup installs docker.io and busybox-static)"
            );
            return false;
        }
    }
    true
}

/// The run of `docker.rs`: testnet's default prefix, dockerd with no extra argument.
pub fn up() -> Run {
    up_with("odk", None, &[])
}

/// A run under `/tmp/ROOT<pid>`, its namespaces named with `prefix` (testnet's default
/// when `None`), each dockerd started with `dockerd_args` too.
pub fn up_with(root: &str, prefix: Option<String>, dockerd_args: &[&str]) -> Run {
    let root = PathBuf::from(format!("/tmp/{root}{:x}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let socket_of = {
        let root = root.clone();
        move |i: usize| root.join(format!("h{i}/plugins/overlayd.sock"))
    };
    let mut opts = Options::new(2, 0);
    opts.prefix = prefix;
    opts.ranges = vec![EXTRA_RANGE.to_owned()];
    let hook_socket = socket_of.clone();
    let hook_root = root.clone();
    opts.configure = Some(Box::new(move |i, c| {
        c.extra.push(format!(
            "[docker]\nenabled = true\nsocket = \"{}\"\ndockerd_socket = \"{}\"",
            hook_socket(i).display(),
            hook_root.join(format!("h{i}/docker.sock")).display()
        ));
    }));
    for i in 1..=2 {
        std::fs::create_dir_all(root.join(format!("h{i}/plugins"))).expect("plugin dir");
    }
    let made_plugins_dir = !Path::new("/run/docker/plugins").exists();
    std::fs::create_dir_all("/run/docker/plugins").expect("/run/docker/plugins");
    let net = Testnet::up(opts).expect("testnet up (gossip mode, docker enabled)");
    let mut run = Run {
        dockerds: Vec::new(),
        net,
        root: root.clone(),
        made_plugins_dir,
        outsider: None,
    };
    for i in 1..=2 {
        // The plugin's bridge replaces testnet's container bridge (same gateway address).
        let ns = run.net.host_ns(i);
        super::ip(&["-n", &ns, "link", "del", "br0"]);
        let t = Instant::now();
        run.dockerds.push(Dockerd::start(
            &ns,
            &root.join(format!("h{i}")),
            dockerd_args,
        ));
        eprintln!("h{i}: dockerd up in {:?}", t.elapsed());
        assert!(
            socket_of(i).exists(),
            "overlayd did not create its plugin socket"
        );
    }
    // The image: static busybox and a few applet links, imported on each host.
    let rootfs = root.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
    std::fs::create_dir_all(rootfs.join("tmp")).expect("rootfs");
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
    for applet in [
        "sh", "ping", "nc", "sleep", "cat", "ip", "true", "echo", "wc", "head", "nslookup",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("symlink");
    }
    let tar = root.join("rootfs.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .expect("tar");
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 1..=2 {
        run.ok(i, &["import", &tar.display().to_string(), IMAGE]);
    }
    run
}
