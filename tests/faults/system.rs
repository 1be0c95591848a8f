//! The processes of a harness run, each real and started here: SecantusDB, a private RabbitMQ
//! node, anvil (test-support's), and the Coffer roles under a supervisor that restarts whatever
//! dies (at an armed fault point or by the harness's SIGKILL).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_test_support::process::{Process, Roles};

/// The repository root (where `.venv`, `.tools` and `config/` are).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every pid this run started, for the hard deadline's last resort.
static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

pub fn track(pid: u32) {
    PIDS.lock().expect("pids").push(pid);
}

/// SIGKILLs every process this run started (the hard deadline).
pub fn kill_everything() {
    for pid in PIDS.lock().expect("pids").iter() {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
}

/// The first port of `range` nobody listens on.
pub fn port_in(range: std::ops::Range<u16>, taken: &Mutex<Vec<u16>>) -> u16 {
    let mut taken = taken.lock().expect("ports");
    let port = range
        .clone()
        .find(|p| !taken.contains(p) && std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .unwrap_or_else(|| panic!("no free port in {range:?}"));
    taken.push(port);
    port
}

/// Waits (bounded) until something accepts TCP connections on `port`.
pub async fn await_port(port: u16, what: &str, wait: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + wait;
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what} did not listen on {port} within {wait:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A child process killed when dropped.
pub struct Owned(pub Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SecantusDB in memory on `port`, with the venv's python (as scripts/lib/deps.sh starts it).
pub async fn start_secantus(port: u16, dir: &Path) -> anyhow::Result<Owned> {
    let venv = std::env::var("COFFER_VENV").map_or_else(|_| root().join(".venv"), PathBuf::from);
    let config = dir.join("secantusd.toml");
    std::fs::write(&config, "# empty: settings come from the flags\n")?;
    let child = Command::new(venv.join("bin/python"))
        .args(["-m", "secantus", "--config"])
        .arg(&config)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--storage-path",
            ":memory:",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("secantus.log"))?)
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "start SecantusDB ({}): {e}; run scripts/test once",
                venv.display()
            )
        })?;
    track(child.id());
    let owned = Owned(child);
    await_port(port, "SecantusDB", Duration::from_secs(60)).await?;
    Ok(owned)
}

/// A private RabbitMQ node: its own name, ports, directories, cookie and (empty) plugins. The
/// machine's shared node on :5672 is never touched.
pub struct Rabbit {
    pub node: String,
    pub port: u16,
    home: PathBuf,
    child: Option<Owned>,
}

const RABBIT_BIN: &str = "/usr/lib/rabbitmq/bin";

impl Rabbit {
    pub async fn start(port: u16, dir: &Path) -> anyhow::Result<Rabbit> {
        let node = format!("coffer-faults-{}@localhost", std::process::id());
        let base = dir.join("rabbitmq");
        let home = base.join("home");
        for sub in ["home", "mnesia", "log"] {
            std::fs::create_dir_all(base.join(sub))?;
        }
        let plugins = base.join("enabled_plugins");
        std::fs::write(&plugins, "[].\n")?;
        let child = Command::new(format!("{RABBIT_BIN}/rabbitmq-server"))
            .env("HOME", &home)
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", (port + 20000).to_string())
            .env("RABBITMQ_MNESIA_BASE", base.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", base.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(base.join("server.log"))?)
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("start rabbitmq-server (apt-get install rabbitmq-server): {e}"))?;
        track(child.id());
        let rabbit = Rabbit {
            node,
            port,
            home,
            child: Some(Owned(child)),
        };
        await_port(port, "the private RabbitMQ node", Duration::from_secs(90)).await?;
        Ok(rabbit)
    }

    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// `rabbitmqctl -n NODE <args>` (bounded by rabbitmqctl's own timeout).
    pub fn ctl(&self, args: &[&str]) -> bool {
        Command::new(format!("{RABBIT_BIN}/rabbitmqctl"))
            .env("HOME", &self.home)
            .args(["-n", &self.node, "-q", "-t", "60"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Stops the broker app for `pause`, then starts it again and waits for AMQP.
    pub async fn restart(&self, pause: Duration) -> anyhow::Result<()> {
        let this = (self.home.clone(), self.node.clone());
        let ctl = move |verb: &'static str| {
            let (home, node) = this.clone();
            tokio::task::spawn_blocking(move || {
                Command::new(format!("{RABBIT_BIN}/rabbitmqctl"))
                    .env("HOME", home)
                    .args(["-n", &node, "-q", "-t", "60", verb])
                    .stdin(Stdio::null())
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
        };
        anyhow::ensure!(ctl("stop_app").await?, "rabbitmqctl stop_app failed");
        tokio::time::sleep(pause).await;
        anyhow::ensure!(ctl("start_app").await?, "rabbitmqctl start_app failed");
        await_port(self.port, "RabbitMQ after start_app", Duration::from_secs(60)).await
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        self.ctl(&["stop"]);
        self.child.take();
    }
}

/// One supervised role: how to start it, and the fault points armed in each generation.
pub struct Slot {
    pub name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// `COFFER_FAULTS` of generation 0, 1, …; later generations run unarmed.
    faults: Vec<String>,
    generation: usize,
    process: Option<Process>,
}

/// What happened to the processes, for the report.
#[derive(Default, Clone, Debug)]
pub struct Happenings {
    /// Deaths at an armed fault point, by point.
    pub at_fault_points: Vec<(String, String)>,
    /// SIGKILLs sent by the harness, by process.
    pub killed: Vec<String>,
    /// Exits nobody caused (violations).
    pub unexpected: Vec<String>,
}

/// The roles of the run, restarted when they die.
pub struct Supervisor {
    roles: Roles,
    slots: Mutex<Vec<Slot>>,
    pub happenings: Mutex<Happenings>,
}

impl Supervisor {
    pub fn new(roles: Roles) -> Arc<Supervisor> {
        Arc::new(Supervisor {
            roles,
            slots: Mutex::new(Vec::new()),
            happenings: Mutex::default(),
        })
    }

    pub fn roles(&self) -> &Roles {
        &self.roles
    }

    /// Starts role `name` (`coffer <args>` with `env`), arming `faults[g]` in generation g.
    pub fn add(&self, name: &str, args: &[&str], env: Vec<(String, String)>, faults: Vec<String>) {
        let mut slot = Slot {
            name: name.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env,
            faults,
            generation: 0,
            process: None,
        };
        self.spawn(&mut slot);
        self.slots.lock().expect("slots").push(slot);
    }

    fn spawn(&self, slot: &mut Slot) {
        let mut extra: Vec<(&str, String)> = slot.env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        if let Some(spec) = slot.faults.get(slot.generation).filter(|s| !s.is_empty()) {
            extra.push((coffer_telemetry::faults::ENV, spec.clone()));
        }
        let args: Vec<&str> = slot.args.iter().map(String::as_str).collect();
        let label = format!("{}-{}", slot.name, slot.generation);
        let process = self.roles.spawn(&label, &args, &extra);
        track(process.child.id());
        slot.process = Some(process);
    }

    /// Restarts every role that exited, recording why it did.
    pub fn check(&self) {
        let mut slots = self.slots.lock().expect("slots");
        for slot in slots.iter_mut() {
            let Some(process) = slot.process.as_mut() else {
                continue;
            };
            let Ok(Some(status)) = process.child.try_wait() else {
                continue;
            };
            let log = process.log_text();
            let mut happenings = self.happenings.lock().expect("happenings");
            match log.lines().find_map(|l| l.split("fault point ").nth(1)) {
                Some(point) => {
                    let point = point.split(':').next().unwrap_or(point).to_string();
                    eprintln!("faults: {} died at fault point {point}; restarting", slot.name);
                    happenings.at_fault_points.push((slot.name.clone(), point));
                }
                None => {
                    let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                    eprintln!("faults: {} exited ({status}) unexpectedly: {tail}", slot.name);
                    happenings
                        .unexpected
                        .push(format!("{} exited ({status}): {tail}", slot.name));
                }
            }
            drop(happenings);
            slot.generation += 1;
            self.spawn(slot);
        }
    }

    /// SIGKILLs role `name` and starts it again.
    pub fn kill(&self, name: &str) {
        let mut slots = self.slots.lock().expect("slots");
        let Some(slot) = slots.iter_mut().find(|s| s.name == name) else {
            return;
        };
        if let Some(mut process) = slot.process.take() {
            process.kill();
        }
        eprintln!("faults: SIGKILL {name}; restarting");
        self.happenings
            .lock()
            .expect("happenings")
            .killed
            .push(name.to_string());
        slot.generation += 1;
        self.spawn(slot);
    }

    /// Generation counts, for the report.
    pub fn generations(&self) -> Vec<(String, usize)> {
        let slots = self.slots.lock().expect("slots");
        slots.iter().map(|s| (s.name.clone(), s.generation)).collect()
    }

    /// Kills every role (the end of the run).
    pub fn stop_all(&self) {
        let mut slots = self.slots.lock().expect("slots");
        for slot in slots.iter_mut() {
            slot.process.take();
        }
    }
}

/// Restarts dead roles every 100 ms until the task is aborted.
pub fn spawn_watch(supervisor: Arc<Supervisor>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let s = supervisor.clone();
            let _ = tokio::task::spawn_blocking(move || s.check()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}
